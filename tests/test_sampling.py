"""Sample images: kohya's prompt format, the flow-matching Euler schedule, and samples written
during a tiny training run on the CPU."""

import re
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from engine.events import SAMPLING, Progress, SampleImage
from engine.preset import default_values, parse_preset
from engine.sampling.prompts import (SamplePrompt, SamplePromptError, due, load_sample_prompts, parse_prompt_line,
                                     sample_file_name)
from engine.trainer import check_ready, train
from tests.fixtures.datasets import tiny_training_values

TWO_PROMPTS = "ohwx man on a beach --w 64 --h 64 --s 2 --d 7\n# a comment line\nohwx man, portrait --w 80 --h 64 --s 2"


def test_prompt_line_options_as_kohya_reads_them():
    prompt = parse_prompt_line("a cat --w 770 --h 500 --s 12 --d 5 --g 4.5 --l 2.0 --n blurry, ugly", 3, 99)
    assert prompt == SamplePrompt(index=3, prompt="a cat", width=768, height=496, steps=12, seed=5, guidance=4.5,
                                  cfg_scale=2.0, negative="blurry, ugly")
    plain = parse_prompt_line("a dog", 0, 99)
    assert (plain.width, plain.height, plain.steps, plain.seed, plain.guidance, plain.cfg_scale) == (
        512, 512, 20, 99, 3.5, 1.0)


def test_bad_prompt_options_name_the_prompt():
    with pytest.raises(SamplePromptError, match=r"prompt 2: --w 'big' is not a whole number"):
        parse_prompt_line("a cat --w big", 1, 0)
    with pytest.raises(SamplePromptError, match=r"prompt 1: option --x 3 is not one of"):
        parse_prompt_line("a cat --x 3", 0, 0)
    with pytest.raises(SamplePromptError, match="'karras' is not a sampler"):
        parse_prompt_line("a cat --ss karras", 0, 0)


def test_prompts_from_text_and_from_kohya_files(tmp_path):
    values = dict(default_values(), seed=10, sample_prompts=TWO_PROMPTS)
    prompts = load_sample_prompts(values)
    assert [(p.index, p.prompt, p.width, p.height, p.seed) for p in prompts] == [
        (0, "ohwx man on a beach", 64, 64, 7), (1, "ohwx man, portrait", 80, 64, 11)]
    text_file = tmp_path / "my prompts.txt"
    text_file.write_bytes("\ufeffa cat --d 3\r\n\r\na dog\r\n".encode("utf-8"))
    values["sample_prompts"] = f'"{text_file}"'  # Windows "Copy as path" quotes
    assert [(p.prompt, p.seed) for p in load_sample_prompts(values)] == [("a cat", 3), ("a dog", 11)]
    toml_file = tmp_path / "prompts.toml"
    toml_file.write_text('[prompt]\nwidth = 256\nsample_steps = 4\n[[prompt.subset]]\nprompt = "a cat"\nseed = 1\n'
                         '[[prompt.subset]]\nprompt = "a dog"\nheight = 128\n', encoding="utf-8")
    values["sample_prompts"] = str(toml_file)
    assert [(p.prompt, p.width, p.height, p.steps, p.seed) for p in load_sample_prompts(values)] == [
        ("a cat", 256, 512, 4, 1), ("a dog", 256, 128, 4, 11)]
    values["sample_prompts"] = str(tmp_path / "missing.txt")
    with pytest.raises(SamplePromptError, match="missing.txt not found"):
        load_sample_prompts(values)


def test_when_samples_are_due_epochs_win_over_steps():
    values = dict(default_values(), sample_every_n_epochs=2, sample_every_n_steps=3)
    assert [due(values, step, epoch) for step, epoch in ((3, None), (6, 1), (12, 2), (15, None))] == [
        False, False, True, False]
    values["sample_every_n_epochs"] = 0
    assert [due(values, step, epoch) for step, epoch in ((3, None), (4, None), (6, 1))] == [True, False, True]


def test_kohya_file_names():
    prompt = SamplePrompt(index=1, prompt="x", seed=42)
    assert sample_file_name("ohwx", prompt, "20260101120000", epoch=3, step=30) == "ohwx_e000003_01_20260101120000_42.png"
    assert sample_file_name("ohwx", prompt, "20260101120000", epoch=None, step=25) == "ohwx_000025_01_20260101120000_42.png"


def test_kohya_sampler_names_are_read_as_euler_with_a_note():
    data = {key: value for key, value in default_values().items()}
    data["sample_sampler"] = "euler_a"
    result = parse_preset(data)
    assert result.values["sample_sampler"] == "euler"
    assert any(note.startswith("sample_sampler: 'euler_a' read as 'euler'") for note in result.notes)
    data["sample_sampler"] = "karras_magic"
    with pytest.raises(ValueError, match="sample_sampler: 'karras_magic' is not allowed"):
        parse_preset(data)


def test_schedule_is_flux_shifted_euler():
    """diffusers' scheduler gives sd-scripts' get_schedule: linspace(1, 0) shifted by mu(tokens)."""
    import math

    from engine.sampling.generate import scheduler_for

    steps, tokens = 4, 1024
    mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (tokens - 256)
    expected = [math.exp(mu) / (math.exp(mu) + (1 / t - 1)) if t > 0 else 0.0 for t in np.linspace(1, 0, steps + 1)]
    assert scheduler_for(steps, tokens).sigmas.tolist() == pytest.approx(expected, abs=1e-6)


def test_ready_check_reports_bad_prompts(tiny_model_files, tmp_path):
    values = tiny_training_values(tiny_model_files, tmp_path, sample_every_n_epochs=1, sample_prompts="")
    assert any(p.startswith("sample_prompts: empty, but sample images are asked for") for p in check_ready(values))
    values["sample_prompts"] = "a cat --s ten"
    assert "sample_prompts, prompt 1: --s 'ten' is not a whole number" in check_ready(values)


def _run(values, stop=None, on_event=None):
    events = []

    def record(event):
        events.append(event)
        if on_event:
            on_event(event)

    result = train(values, on_event=record, stop=stop)
    assert result.status in ("completed", "stopped"), result.message
    return result, events


def test_samples_at_the_asked_epochs_without_changing_the_lora(tiny_model_files, tmp_path):
    common = dict(epoch=2, save_state_on_train_end=False, save_every_n_epochs=0)
    plain, _ = _run(tiny_training_values(tiny_model_files, tmp_path / "plain", **common))
    values = tiny_training_values(tiny_model_files, tmp_path / "sampled", sample_prompts=TWO_PROMPTS,
                                  sample_every_n_epochs=1, sample_at_first=True, **common)
    sampled, events = _run(values)
    images = [event for event in events if isinstance(event, SampleImage)]
    assert [(e.epoch, e.index, e.step) for e in images] == [(0, 0, 0), (0, 1, 0), (1, 0, 6), (1, 1, 6), (2, 0, 12),
                                                           (2, 1, 12)]
    folder = tmp_path / "sampled" / "out" / "sample"
    names = sorted(path.name for path in folder.iterdir())
    assert len(names) == 6 and all(re.fullmatch(r"tiny_e00000[012]_0[01]_\d{14}_(7|43)\.png", n) for n in names)
    assert {e.path for e in images} == {str(folder / n) for n in names}
    sizes = {Image.open(e.path).size for e in images}
    assert sizes == {(64, 64), (80, 64)}
    first, last = (np.asarray(Image.open(images[i].path), dtype=np.int16) for i in (0, 4))
    assert np.abs(first - last).max() > 0  # the LoRA changed what the model draws
    # sampling draws from its own generators: the trained LoRA is bit for bit the same
    a, b = load_file(plain.lora_path), load_file(sampled.lora_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert list((tmp_path / "sampled" / "log").glob("tiny_*/events.out.tfevents.*"))


def test_same_seed_same_sample_image(tiny_model_files, tmp_path):
    values = tiny_training_values(tiny_model_files, tmp_path, sample_prompts="ohwx --w 64 --h 64 --s 2 --d 3",
                                  sample_at_first=True, epoch=1, max_train_steps=1, save_state_on_train_end=False,
                                  save_every_n_epochs=0)
    _, first = _run(values)
    _, again = _run(dict(values, output_name="again"))
    paths = [next(e.path for e in events if isinstance(e, SampleImage)) for events in (first, again)]
    assert np.array_equal(np.asarray(Image.open(paths[0])), np.asarray(Image.open(paths[1])))


def test_stop_during_sampling_is_honoured(tiny_model_files, tmp_path):
    stop = threading.Event()

    def stop_when_sampling(event):
        if isinstance(event, Progress) and event.phase == SAMPLING:
            stop.set()

    values = tiny_training_values(tiny_model_files, tmp_path, sample_prompts=TWO_PROMPTS, sample_every_n_steps=2,
                                  epoch=2, save_every_n_epochs=0, save_state_on_train_end=False)
    result, events = _run(values, stop=stop, on_event=stop_when_sampling)
    assert result.status == "stopped" and result.steps == 2
    assert not any(isinstance(event, SampleImage) for event in events)
    assert not (tmp_path / "out" / "sample").exists() or not list((tmp_path / "out" / "sample").iterdir())
    assert (tmp_path / "out" / "tiny.safetensors").is_file()
