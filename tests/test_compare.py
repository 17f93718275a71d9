"""The epoch x prompt comparison grid, through the engine and `fluxlora sample`, on the tiny models."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.events import SampleImage
from engine.preset import save_preset
from engine.sampling.compare import compare_loras, compare_prompts, run_lora_files
from engine.trainer import train
from tests.fixtures.cli import run_engine
from tests.fixtures.datasets import tiny_training_values

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["ohwx man on a beach --w 64 --h 64 --s 2 --d 7", "ohwx man, portrait --w 80 --h 64 --s 2"]


@pytest.fixture(scope="module")
def trained(tiny_model_files, tmp_path_factory):
    """Three epochs with sample images of both prompts at the start and after every epoch."""
    root = tmp_path_factory.mktemp("compare run")
    values = tiny_training_values(tiny_model_files, root, epoch=3, save_precision="float", sample_at_first=True,
                                  sample_every_n_epochs=1, sample_prompts="\n".join(PROMPTS),
                                  save_state_on_train_end=False)
    events = []
    result = train(values, on_event=events.append)
    assert result.status == "completed", result.message
    samples = {(e.epoch, e.index): e.path for e in events if isinstance(e, SampleImage)}
    return values, samples


def test_run_files_in_training_order(trained):
    values, _ = trained
    names = [p.name for p in run_lora_files(values["output_dir"], "tiny")]
    # the last epoch is numbered too; the final file holds the same step, so it is not listed twice
    assert names == ["tiny-000001.safetensors", "tiny-000002.safetensors", "tiny-000003.safetensors"]


def test_grid_rows_draw_what_training_drew_at_each_epoch(trained):
    values, samples = trained
    loras = run_lora_files(values["output_dir"], "tiny")
    prompts = compare_prompts(PROMPTS, values["seed"])
    assert [p.seed for p in prompts] == [7, 43]  # the seeds the training samples used
    result = compare_loras(values, loras, prompts, out_path=Path(values["output_dir"]) / "grid.png")
    assert result.status == "completed" and result.rows == ["no LoRA", "tiny-000001", "tiny-000002", "tiny-000003"]
    for row, epoch in enumerate((0, 1, 2, 3)):  # the base model is what training drew before step 1
        for column in range(2):
            drawn = np.asarray(result.images[row][column])
            during_training = np.asarray(Image.open(samples[(epoch, column)]))
            assert np.array_equal(drawn, during_training), (row, column)
    grid = Image.open(result.grid_path)
    assert grid.size == (180 + 8 + 120 + 8 + 120 + 8, grid.height) and grid.height > 4 * (64 + 8)


def test_strength_zero_is_the_base_model(trained):
    values, samples = trained
    prompts = compare_prompts(PROMPTS[:1], values["seed"])
    result = compare_loras(values, run_lora_files(values["output_dir"], "tiny")[2:3], prompts, strength=0.0,
                           include_base=False, out_path=Path(values["output_dir"]) / "zero.png")
    assert np.array_equal(np.asarray(result.images[0][0]), np.asarray(Image.open(samples[(0, 0)])))


def test_cli_sample_writes_one_grid(trained, tmp_path):
    values, _ = trained
    preset = tmp_path / "run preset.json"
    save_preset(values, preset)
    out = tmp_path / "grid ü.png"
    result = run_engine("sample", preset, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--out", out)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"4 x 2 grid: {out}"  # no LoRA + the 3 epochs
    assert Image.open(out).size[0] == 180 + 8 + 120 + 8 + 120 + 8


def test_cli_sample_refuses_a_missing_lora(trained, tmp_path):
    values, _ = trained
    preset = tmp_path / "p.json"
    save_preset(values, preset)
    result = run_engine("sample", preset, "--lora", tmp_path / "no.safetensors", "--prompt", "x")
    assert result.returncode == 1 and result.stderr.strip() == f"error: --lora: file {tmp_path / 'no.safetensors'} not found"


def test_true_cfg_with_a_negative_prompt_changes_the_image(trained):
    values, _ = trained
    prompts = compare_prompts(["ohwx --w 64 --h 64 --s 2 --d 1", "ohwx --w 64 --h 64 --s 2 --d 1 --l 3 --n blurry"], 0)
    result = compare_loras(values, [], prompts, out_path=Path(values["output_dir"]) / "cfg.png")
    plain, guided = (np.asarray(image, dtype=np.int16) for image in result.images[0])
    assert result.rows == ["no LoRA"] and np.abs(plain - guided).max() > 0
