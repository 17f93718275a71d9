from pathlib import Path

import pytest

from engine.models.flux import FLUX1_DEV
from engine.preset import default_values, load_preset
from engine.vram import (GIB, block_activation_bytes, block_parameters, estimate_vram, lora_parameter_count,
                         optimizer_state_bytes, stored_weight_bytes)
from tests.fixtures.cli import run_engine
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
    assert list(estimate.parts) == ["base weights resident", "streamed blocks", "compute copies of fp8 weights",
                                    "LoRA weights + gradients", "optimizer state", "activations",
                                    "CLIP-L with its LoRA (trained)", "text encoders + VAE", "sample images",
                                    "workspace + allocator slack", "CUDA context"]
    assert estimate.parts["text encoders + VAE"] == 0  # cached and highvram off
    # The peak is in the backward pass, by the timeline (engine.memory_phases): LoRA gradients of
    # the blocks already done, not all of them; at the optimizer step every gradient exists.
    assert list(estimate.phases) == ["model placed", "forward", "backward", "optimizer step", "LoRA save"]
    assert max(estimate.phases, key=estimate.phases.get) == "backward"
    lora = 4 * 1558 * 64 * 3072  # fp32
    assert estimate.phases["optimizer step"] - estimate.phases["model placed"] == lora
    assert lora < estimate.parts["LoRA weights + gradients"] < 2 * lora
    assert estimate.phases["LoRA save"] == estimate.phases["model placed"]
    assert estimate.parts["sample images"] == 0  # no sample prompts


def test_sample_images_count_what_training_does_not_already_hold():
    small = dict(TWELVE, sample_prompts="ohwx --w 512 --h 512", sample_every_n_epochs=1)
    assert estimate_vram(small).parts["sample images"] == 0  # decoding 512x512 fits in training's activations
    large = dict(small, sample_prompts="ohwx --w 512 --h 512\nohwx --w 1536 --h 1536")
    estimate = estimate_vram(large)
    # the VAE (bf16) plus 768 values per pixel at 1536x1536, less the activations and the LoRA
    # gradients the training peak holds (in the backward pass: those of the blocks already done)
    decoder = 167_666_902 + 1536 * 1536 * 768 * 2
    freed = estimate.parts["activations"] + estimate.parts["LoRA weights + gradients"] - 4 * 1558 * 64 * 3072
    assert estimate.parts["sample images"] == decoder - freed > 0


def test_stored_bytes_match_a_loaded_fp8_model(tmp_path):
    import torch

    from engine.models.flux import infer_flux_architecture, load_flux_transformer
    from engine.models.safetensors_header import read_header

    path = tmp_path / "f.safetensors"
    write_tiny_flux(path, width=48, num_double=2, num_single=3)
    model = load_flux_transformer(path, fp8=True, compute_dtype=torch.bfloat16)
    stored = stored_weight_bytes(infer_flux_architecture(read_header(path).shapes()), True, 2)
    # The AdaLN modulation Linears are fp8 like sd-scripts' (diffusers' skip list would keep them
    # 16-bit); norms and the output layer stay wide.
    fp8 = torch.float8_e4m3fn
    assert model.transformer_blocks[0].norm1.linear.weight.dtype == fp8
    assert model.transformer_blocks[0].norm1_context.linear.weight.dtype == fp8
    assert model.single_transformer_blocks[0].norm.linear.weight.dtype == fp8
    assert model.norm_out.linear.weight.dtype == model.proj_out.weight.dtype == torch.bfloat16

    def size(module):
        return sum(p.numel() * p.element_size() for p in module.parameters())

    assert stored.double == [size(block) for block in model.transformer_blocks]
    assert stored.single == [size(block) for block in model.single_transformer_blocks]
    assert stored.rest + sum(stored.double + stored.single) == size(model)
    assert stored.fp8_params[0] == sum(p.numel() for p in model.transformer_blocks[0].parameters()
                                       if p.dtype == torch.float8_e4m3fn)


def saved_bytes(block, inputs):
    """Bytes of the distinct tensors autograd saves for the backward pass of one block call."""
    import torch

    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), \
            torch.autocast("cpu", dtype=torch.bfloat16):
        block(**inputs)
    return sum(saved.values())


def test_activation_formula_matches_what_autograd_saves(tmp_path):
    # Per-token cost = the difference between two token counts (the saved weights cancel out).
    import torch

    from engine.models.flux import infer_flux_architecture, load_flux_transformer
    from engine.models.lora import add_lora
    from engine.models.safetensors_header import read_header

    path = tmp_path / "f.safetensors"
    write_tiny_flux(path, width=128, dtype=torch.float32)
    arch = infer_flux_architecture(read_header(path).shapes())
    model = load_flux_transformer(path, fp8=True, compute_dtype=torch.bfloat16)
    add_lora(model, 8, 8.0)

    def per_block(image, text):
        def inputs():
            return dict(hidden_states=torch.randn(1, image, 128, dtype=torch.bfloat16, requires_grad=True),
                        encoder_hidden_states=torch.randn(1, text, 128, dtype=torch.bfloat16, requires_grad=True),
                        temb=torch.randn(1, 128, dtype=torch.bfloat16, requires_grad=True),
                        image_rotary_emb=(torch.ones(image + text, 16), torch.zeros(image + text, 16)))
        return saved_bytes(model.transformer_blocks[0], inputs()), saved_bytes(model.single_transformer_blocks[0], inputs())

    small, large = per_block(64, 16), per_block(128, 32)
    measured = [(b - a) / 80 for a, b in zip(small, large)]
    predicted = block_activation_bytes(arch, 8, 2)
    for got, want in zip(measured, predicted):
        assert abs(got - want) / got < 0.03, (measured, predicted)


def test_optimizer_state_formula_matches_the_optimizers():
    import bitsandbytes
    import torch
    from prodigyopt import Prodigy
    from transformers.optimization import Adafactor

    shapes = [(8, 1024), (3072, 8), (4, 100)]  # two LoRA matrices and one under bitsandbytes' 4096 minimum
    cases = [("AdamW", "", lambda ps: torch.optim.AdamW(ps, lr=1e-3)),
             ("AdamW8bit", "", lambda ps: bitsandbytes.optim.AdamW8bit(ps, lr=1e-3)),
             ("Adafactor", "relative_step=False", lambda ps: Adafactor(ps, lr=1e-3, relative_step=False)),
             ("Adafactor", "beta1=0.9", lambda ps: Adafactor(ps, lr=1e-3, relative_step=False, beta1=0.9)),
             ("Prodigy", "", lambda ps: Prodigy(ps, lr=1.0))]
    for name, args, make in cases:
        params = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
        optimizer = make(params)
        sum(p.square().sum() for p in params).backward()
        optimizer.step()
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                    for state in optimizer.state.values() for t in state.values()
                    if isinstance(t, torch.Tensor) and t.numel() > 1}
        assert sum(storages.values()) == optimizer_state_bytes(name, args, shapes, 4), name


@pytest.mark.parametrize("key, low, high", [
    ("max_resolution", "512,512", "1024,1024"), ("network_dim", 16, 128), ("train_batch_size", 1, 4),
])
def test_estimate_grows_with_resolution_rank_and_batch(key, low, high):
    assert estimate_vram(dict(TWELVE, **{key: low})).total < estimate_vram(dict(TWELVE, **{key: high})).total


def test_swapping_more_blocks_needs_less_memory():
    totals = [estimate_vram(dict(TWELVE, blocks_to_swap=n)).total for n in (0, 2, 8, 16, 22, 28, 36)]
    assert totals == sorted(totals, reverse=True) and len(set(totals)) == 7
    # 1 swaps the last two single blocks: they stream only while they run, which is not the peak.
    assert totals[1] < estimate_vram(dict(TWELVE, blocks_to_swap=1)).total < totals[0]
    assert estimate_vram(dict(TWELVE, blocks_to_swap=120)).notes == [
        "blocks_to_swap 120 swaps 18 double and 38 single blocks, all this model allows"]


def test_checkpointing_and_optimizer_choice_matter():
    base = estimate_vram(TWELVE)
    unchecked = estimate_vram(dict(TWELVE, gradient_checkpointing=False))
    assert unchecked.parts["activations"] > 5 * base.parts["activations"]
    assert unchecked.parts["compute copies of fp8 weights"] > 30 * base.parts["compute copies of fp8 weights"]
    states = {name: estimate_vram(dict(TWELVE, optimizer=name, optimizer_args="")).parts["optimizer state"]
              for name in ("Adafactor", "AdamW8bit", "AdamW")}
    assert states["Adafactor"] < states["AdamW8bit"] < states["AdamW"] == 2 * 4 * 1558 * 64 * 3072


def test_uncached_encoders_and_fp8_matter():
    cached = estimate_vram(TWELVE)
    uncached = estimate_vram(dict(TWELVE, flux1_cache_text_encoder_outputs=False))
    assert uncached.total - cached.total > 9 * GIB  # T5-XXL in bf16
    bf16 = estimate_vram(dict(TWELVE, fp8_base=False, fp8_base_unet=False))
    assert bf16.parts["compute copies of fp8 weights"] == 0 and bf16.total > cached.total + 4 * GIB


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
    result = run_engine("estimate", ROOT / "presets/flux1-dev-12gb.json")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "model: flux1-dev"
    peak = next(line for line in lines if line.startswith("predicted peak"))
    assert peak.endswith("GiB") and lines[lines.index(peak) + 1].startswith("RAM loading encoders")
    assert lines[-1].startswith("RAM peak (system RAM needed)") and lines[-1].endswith("GiB")
    missing = run_engine("estimate", ROOT / "presets/flux1-dev-12gb.json", "--arch", "flux1-schnell",
                         "--set", f"pretrained_model_name_or_path={tmp_path / 'no.safetensors'}")
    assert missing.returncode == 0, missing.stderr
    assert missing.stdout.splitlines()[0] == "model: flux1-schnell"
    assert "not found: assuming the flux1-schnell architecture" in missing.stdout


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="counts bytes read through Linux's /proc/self/io")
def test_estimate_reads_a_few_kilobytes_of_a_large_file(tmp_path):
    path = tmp_path / "flux.safetensors"
    write_tiny_flux(path, width=256, num_double=2, num_single=2)
    values = dict(default_values(), pretrained_model_name_or_path=str(path))
    estimate_vram(values)  # imports and the cached meta model out of the way

    def bytes_read():
        return int(next(line for line in Path("/proc/self/io").read_text().splitlines()
                        if line.startswith("rchar:")).split()[1])

    before = bytes_read()
    estimate_vram(values)
    read = bytes_read() - before
    assert path.stat().st_size > 10_000_000 and read < 100_000, read
