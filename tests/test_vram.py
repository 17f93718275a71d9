import subprocess
import sys
from pathlib import Path

import pytest

from engine.models.flux import FLUX1_DEV
from engine.preset import default_values, load_preset
from engine.vram import GIB, block_parameters, estimate_vram, lora_parameter_count
from tests.fixtures.models import write_tiny_flux

ROOT = Path(__file__).resolve().parents[1]
TWELVE = load_preset(ROOT / "presets/flux1-dev-12gb.json").values


def test_flux_dev_parameter_counts():
    double, single, rest = block_parameters(FLUX1_DEV)
    total = 19 * sum(double.values()) + 38 * sum(single.values()) + rest
    assert total == 11_901_408_320  # FLUX.1-dev's 11.9 B parameters
    assert lora_parameter_count(FLUX1_DEV, 64)[0] == 1558 * 64 * 3072  # 23 + 23 per double, 18 per single block


def test_counts_match_a_loaded_model(tmp_path):
    import torch

    from engine.models.flux import infer_flux_architecture, load_flux_transformer
    from engine.models.lora import add_lora, lora_parameters
    from engine.models.safetensors_header import read_header

    write_tiny_flux(tmp_path / "f.safetensors", width=48, num_double=2, num_single=3)
    arch = infer_flux_architecture(read_header(tmp_path / "f.safetensors").shapes())
    model = load_flux_transformer(tmp_path / "f.safetensors", compute_dtype=torch.float32)
    double, single, rest = block_parameters(arch)
    assert sum(p.numel() for p in model.parameters()) == 2 * sum(double.values()) + 3 * sum(single.values()) + rest
    add_lora(model, 4, 4.0)
    assert sum(p.numel() for p in lora_parameters(model)) == lora_parameter_count(arch, 4)[0]


def test_breakdown_sums_to_the_total():
    estimate = estimate_vram(TWELVE)
    assert estimate.total == sum(estimate.parts.values())
    assert list(estimate.parts) == ["base weights resident", "streamed blocks", "LoRA weights + gradients",
                                    "optimizer state", "activations", "text encoders + VAE", "CUDA context + workspace"]
    assert estimate.parts["text encoders + VAE"] == 0  # cached and highvram off


@pytest.mark.parametrize("key, low, high", [
    ("max_resolution", "512,512", "1024,1024"), ("network_dim", 16, 128), ("train_batch_size", 1, 4),
])
def test_estimate_grows_with_resolution_rank_and_batch(key, low, high):
    assert estimate_vram(dict(TWELVE, **{key: low})).total < estimate_vram(dict(TWELVE, **{key: high})).total


def test_swapping_more_blocks_needs_less_memory():
    totals = [estimate_vram(dict(TWELVE, blocks_to_swap=n)).total for n in (0, 8, 16, 28)]
    assert totals == sorted(totals, reverse=True) and len(set(totals)) == 4


def test_uncached_encoders_and_fp8_matter():
    cached = estimate_vram(TWELVE)
    uncached = estimate_vram(dict(TWELVE, flux1_cache_text_encoder_outputs=False))
    assert uncached.total - cached.total > 9 * GIB  # T5-XXL in bf16
    assert estimate_vram(dict(TWELVE, fp8_base=False, fp8_base_unet=False)).total > cached.total + 8 * GIB


def test_reads_only_the_header(tmp_path):
    path = tmp_path / "flux.safetensors"
    write_tiny_flux(path, width=64)
    from engine.models.safetensors_header import read_header

    header_end = 8 + int.from_bytes(path.read_bytes()[:8], "little")
    data = bytearray(path.read_bytes())
    data[header_end:] = b"\xff" * (len(data) - header_end)  # weights destroyed, header intact
    path.write_bytes(bytes(data))
    estimate = estimate_vram(dict(default_values(), pretrained_model_name_or_path=str(path)))
    assert estimate.architecture == "flux.safetensors" and estimate.total > 0
    assert read_header(path).tensors["img_in.weight"].shape == (64, 64)


def test_cli_prints_table(tmp_path):
    result = subprocess.run([sys.executable, "-m", "engine", "estimate", str(ROOT / "presets/flux1-dev-12gb.json")],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "model: flux1-dev"
    assert lines[-1].startswith("predicted peak") and lines[-1].endswith("GiB")
