"""blocks_to_swap "auto": the fewest swapped blocks whose estimate fits the free GPU memory,
chosen before anything loads; refused, naming what to lower, when even the most swap does not fit."""

import json
from pathlib import Path

import pytest

from engine.preset import PresetError, default_values, load_preset, save_preset, validate_values
from engine.preset_overrides import parse_option_text
from engine.trainer import train
from engine.vram import (GIB, SwapChoiceError, choose_blocks_to_swap, estimate_vram, max_useful_swap,
                         resolve_architecture, resolve_auto_swap)
from tests.fixtures.cli import run_engine
from tests.fixtures.datasets import tiny_training_values
from tests.fixtures.models import write_tiny_flux

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_values(tmp_path_factory):
    path = tmp_path_factory.mktemp("auto") / "flux.safetensors"
    write_tiny_flux(path, width=64, num_double=3, num_single=4)
    return dict(default_values(), pretrained_model_name_or_path=str(path), blocks_to_swap="auto")


def totals(values):
    arch, _ = resolve_architecture(values)
    return [estimate_vram(dict(values, blocks_to_swap=n)).total for n in range(max_useful_swap(arch) + 1)]


def test_auto_takes_the_least_swap_that_fits_a_free_memory_figure(tiny_values):
    arch, _ = resolve_architecture(tiny_values)
    assert max_useful_swap(arch) == 4  # 2 double (of 3: the first stays) and 4 single blocks
    need = totals(tiny_values)
    assert need == sorted(need, reverse=True) and need[0] > need[2] > need[4]
    for free in (need[0], need[2], need[2] + 1, need[1] - 1, need[4]):
        count, estimate = choose_blocks_to_swap(tiny_values, free)
        expected = next(n for n, total in enumerate(need) if total <= free)
        assert count == expected and estimate.total == need[expected] <= free
    assert choose_blocks_to_swap(tiny_values, need[0] + GIB)[0] == 0  # room to spare: nothing swapped
    # Free memory read after this process made its CUDA context: the context is already used.
    assert choose_blocks_to_swap(tiny_values, need[2] - int(0.45 * GIB), context_counted=False)[0] == 2


def test_auto_refuses_when_even_the_most_swap_does_not_fit(tiny_values):
    need = totals(tiny_values)
    with pytest.raises(SwapChoiceError) as error:
        resolve_auto_swap(dict(tiny_values, optimizer="AdamW"), need[-1] - 1, context_counted=True)
    message = str(error.value)
    assert message.startswith("blocks_to_swap auto: even swapping 4 blocks needs")
    assert "lower max_resolution (now 768,768), network_dim (now 64), train_batch_size (now 1)" in message
    assert "optimizer (now AdamW" in message


def test_auto_says_what_it_chose(tiny_values):
    need = totals(tiny_values)
    values, sentence = resolve_auto_swap(tiny_values, need[3], context_counted=True)
    assert values["blocks_to_swap"] == 3 and tiny_values["blocks_to_swap"] == "auto"
    assert sentence == (f"blocks_to_swap auto: swapping 3 blocks to fit {need[3] / GIB:.1f} GiB free "
                        f"(estimated peak {need[3] / GIB:.2f} GiB)")
    assert resolve_auto_swap(tiny_values, None) == (dict(tiny_values, blocks_to_swap=0),
                                                    "blocks_to_swap auto: no CUDA GPU, so no blocks are swapped")
    assert resolve_auto_swap(dict(tiny_values, blocks_to_swap=5), 1) == (dict(tiny_values, blocks_to_swap=5), "")


def test_auto_in_presets_cli_and_validation(tmp_path):
    assert parse_option_text("blocks_to_swap", "Auto") == "auto"
    assert validate_values(dict(default_values(), blocks_to_swap="auto")) == []
    assert validate_values(dict(default_values(), blocks_to_swap="most")) == [
        "blocks_to_swap: 'most' is not allowed, expected a whole number from 0 to 120, or 'auto'"]
    path = tmp_path / "p.json"
    save_preset(dict(default_values(), blocks_to_swap="auto"), path)
    assert json.loads(path.read_text())["blocks_to_swap"] == "auto"
    assert load_preset(path).values["blocks_to_swap"] == "auto"
    path.write_text(json.dumps({"preset_version": 1, "blocks_to_swap": "lots"}))
    with pytest.raises(PresetError):
        load_preset(path)


def test_estimate_chooses_for_the_vram_asked_for():
    preset = str(ROOT / "presets/flux1-dev-12gb.json")
    command = ["estimate", preset, "--set", "blocks_to_swap=auto"]
    fits = run_engine(*command, "--vram-gib", "11.6")
    assert fits.returncode == 0, fits.stderr
    assert fits.stdout.splitlines()[0].startswith("blocks_to_swap auto: swapping 16 blocks to fit 11.6 GiB free")
    assert "RAM peak (system RAM needed)" in fits.stdout and fits.stdout.splitlines()[-1] == "11.6 GiB asked for; the run fits"
    refused = run_engine(*command, "--vram-gib", "5")
    assert refused.returncode == 1 and "even swapping 37 blocks needs" in refused.stderr


def test_training_run_with_auto_on_the_cpu(tiny_model_files, tmp_path):
    values = tiny_training_values(tiny_model_files, tmp_path, epoch=1, blocks_to_swap="auto")
    result = train(values)
    assert result.status == "completed", result.message
    assert "blocks_to_swap auto: no CUDA GPU, so no blocks are swapped" in Path(result.log_path).read_text(encoding="utf-8")
