import threading
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from engine.events import Finished, Log, Progress
from engine.preset import save_preset
from engine.trainer import check_ready, train
from tests.fixtures.cli import run_engine
from tests.fixtures.datasets import tiny_training_values, write_images


class ForwardCounter:
    """Counts real forward calls of the VAE encoder and both text encoders (global hook)."""

    def __init__(self):
        self.counts = {"vae": 0, "clip": 0, "t5": 0}

    def __enter__(self):
        from diffusers.models.autoencoders.vae import Encoder
        from transformers import CLIPTextModel, T5EncoderModel

        kinds = {Encoder: "vae", CLIPTextModel: "clip", T5EncoderModel: "t5"}

        def hook(module, args, output):
            kind = kinds.get(type(module))
            if kind:
                self.counts[kind] += 1

        self.handle = torch.nn.modules.module.register_module_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_cli_two_epochs_writes_loras_events_and_log(tiny_model_files, tmp_path):
    values = tiny_training_values(tiny_model_files, tmp_path, epoch=2)
    preset = tmp_path / "my preset.json"
    save_preset(values, preset)
    result = run_engine("train", preset, "--set", "save_state_on_train_end=false")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    # The last epoch is numbered too, so a later Continue never loses it.
    assert sorted(p.name for p in out.iterdir()) == ["tiny-000001.safetensors", "tiny-000002.safetensors",
                                                     "tiny.safetensors"]
    assert result.stdout.strip() == f"trained to step 12 (epoch 2); LoRA: {out / 'tiny.safetensors'}"
    with safe_open(str(out / "tiny.safetensors"), "pt") as handle:
        metadata = handle.metadata()
        assert handle.get_tensor("lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight").dtype == torch.float16
    assert (metadata["ss_epoch"], metadata["ss_steps"], metadata["ss_network_dim"]) == ("2", "12", "4")
    with safe_open(str(out / "tiny-000001.safetensors"), "pt") as handle:
        assert (handle.metadata()["ss_epoch"], handle.metadata()["ss_steps"]) == ("1", "6")
    log_dir = tmp_path / "log"
    logs = list(log_dir.glob("tiny_*.log"))
    assert len(logs) == 1 and "epoch 2 done" in logs[0].read_text()
    assert list(log_dir.glob("tiny_*/events.out.tfevents.*"))


def test_cli_reports_every_problem_at_once(tmp_path):
    from engine.preset import default_values

    preset = tmp_path / "p.json"
    save_preset(dict(default_values(), train_data_dir=str(tmp_path / "nowhere"), output_dir=str(tmp_path)), preset)
    result = run_engine("train", preset)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[:4] == [
        "error: pretrained_model_name_or_path: empty; choose a FLUX.1 transformer such as flux1-dev.safetensors",
        "error: ae: empty; choose the FLUX VAE, ae.safetensors",
        "error: clip_l: empty; choose the CLIP-L text encoder, clip_l.safetensors",
        "error: t5xxl: empty; choose the T5-XXL text encoder, e.g. t5xxl_fp16.safetensors",
    ]
    assert f"error: train_data_dir: folder {tmp_path / 'nowhere'} not found" in lines


def test_data_folder_one_level_too_deep_is_explained(tiny_model_files, tmp_path):
    values = tiny_training_values(tiny_model_files, tmp_path)
    values["train_data_dir"] = str(Path(values["train_data_dir"]) / "2_ohwx man")
    problems = check_ready(values)
    assert problems == [f"train_data_dir: {values['train_data_dir']} is itself a repeat folder; choose its parent "
                        f"{Path(values['train_data_dir']).parent} instead (the image folder must hold the N_name folders)"]


def lora_tensors(path):
    return load_file(str(path))


def test_same_seed_gives_identical_lora(tiny_model_files, tmp_path):
    first = tiny_training_values(tiny_model_files, tmp_path / "a", epoch=1, save_precision="float")
    second = tiny_training_values(tiny_model_files, tmp_path / "b", epoch=1, save_precision="float")
    assert train(first).status == "completed" and train(second).status == "completed"
    a, b = lora_tensors(tmp_path / "a/out/tiny.safetensors"), lora_tensors(tmp_path / "b/out/tiny.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    third = tiny_training_values(tiny_model_files, tmp_path / "c", epoch=1, save_precision="float", seed=7)
    train(third)
    c = lora_tensors(tmp_path / "c/out/tiny.safetensors")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_disk_cache_is_reused_and_only_changed_entries_recomputed(tiny_model_files, tmp_path):
    # Text encoder lr 0: CLIP-L is frozen and cached too (above 0 it trains and runs live).
    values = tiny_training_values(tiny_model_files, tmp_path, images=3, epoch=1, text_encoder_lr=0.0)
    with ForwardCounter() as first:
        train(values, overwrite=True)
    assert first.counts == {"vae": 3, "clip": 3, "t5": 3}
    with ForwardCounter() as second:
        train(values, overwrite=True)
    assert second.counts == {"vae": 0, "clip": 0, "t5": 0}
    folder = Path(values["train_data_dir"]) / "2_ohwx man"
    (folder / "photo 1.txt").write_text("ohwx man, edited caption\r\n", encoding="utf-8")
    with ForwardCounter() as edited:
        train(values, overwrite=True)
    assert edited.counts == {"vae": 0, "clip": 1, "t5": 1}
    write_images(folder, 1, seed=99, captions=False, prefix="photo")  # photo 0.png gets new pixels
    with ForwardCounter() as changed:
        train(values, overwrite=True)
    assert changed.counts == {"vae": 1, "clip": 0, "t5": 0}


def test_uncached_training_encodes_on_the_fly(tiny_model_files, tmp_path):
    values = tiny_training_values(tiny_model_files, tmp_path, epoch=1, cache_latents=False,
                                  flux1_cache_text_encoder_outputs=False)
    with ForwardCounter() as counter:
        assert train(values).status == "completed"
    # 6 steps of batch 1: every step encodes its image and caption.
    assert counter.counts == {"vae": 6, "clip": 6, "t5": 6}
    assert not (Path(values["train_data_dir"]) / ".fluxlora-cache").exists()


def test_overfitting_lowers_the_loss_and_the_lora_changes_the_model(tiny_model_files, tmp_path):
    events = []
    values = tiny_training_values(tiny_model_files, tmp_path, images=1, repeats=1, epoch=60, learning_rate=1e-2,
                                  unet_lr=1e-2, timestep_sampling="uniform", save_every_n_epochs=0,
                                  save_precision="float", text_encoder_lr=0.0)  # the transformer alone
    assert train(values, on_event=events.append).status == "completed"
    losses = [e.loss for e in events if isinstance(e, Progress) and e.phase == "training"]
    assert len(losses) == 60
    early, late = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert late < 0.5 * early, (early, late)

    from engine.models.flux import load_flux_transformer
    from engine.models.lora import add_lora, load_lora
    from tests.test_models import flux_inputs

    base = load_flux_transformer(values["pretrained_model_name_or_path"], compute_dtype=torch.float32)
    inputs = flux_inputs()
    with torch.no_grad():
        before = base(**inputs).sample
        add_lora(base, 4, 4.0)
        untrained = base(**inputs).sample
        load_lora(base, tmp_path / "out/tiny.safetensors")
        after = base(**inputs).sample
    assert torch.equal(before, untrained)  # a fresh LoRA starts as a no-op (lora_up = 0)
    assert (after - before).abs().mean() > 1e-3


def test_stop_mid_epoch_ends_cleanly_with_a_lora(tiny_model_files, tmp_path):
    values = tiny_training_values(tiny_model_files, tmp_path, epoch=3)
    stop = threading.Event()
    events = []

    def on_event(event):
        events.append(event)
        if isinstance(event, Progress) and event.phase == "training" and event.done == 4:
            stop.set()

    result = train(values, on_event=on_event, stop=stop)
    assert (result.status, result.steps, result.epoch) == ("stopped", 4, 0)
    assert Path(result.lora_path) == tmp_path / "out/tiny.safetensors" and Path(result.lora_path).is_file()
    assert Path(result.state_dir) == tmp_path / "out/tiny-state"
    assert isinstance(events[-1], Finished) and events[-1].status == "stopped"
    assert any(isinstance(e, Log) and "stop requested" in e.text for e in events)


def test_fp8_base_with_bf16_and_gradient_checkpointing_trains(tiny_model_files, tmp_path):
    values = tiny_training_values(tiny_model_files, tmp_path, epoch=1, fp8_base=True, mixed_precision="bf16",
                                  gradient_checkpointing=True, optimizer="Adafactor",
                                  optimizer_args="relative_step=False scale_parameter=False warmup_init=False")
    result = train(values)
    assert result.status == "completed", result.message
    tensors = lora_tensors(tmp_path / "out/tiny.safetensors")
    assert all(torch.isfinite(t.float()).all() for t in tensors.values())
    assert any(t.abs().max() > 0 for k, t in tensors.items() if "lora_up" in k)


@pytest.mark.parametrize("optimizer, scheduler", [("AdamW8bit", "cosine"), ("AdamW", "polynomial"), ("Prodigy", "linear"),
                                                  ("Adafactor", "cosine_with_restarts")])
def test_optimizers_and_schedulers(tiny_model_files, tmp_path, optimizer, scheduler):
    # Adafactor with a schedule of ours needs a fixed step size (kohya users' arguments).
    args = "relative_step=False scale_parameter=False warmup_init=False" if optimizer == "Adafactor" else ""
    # CLIP-L trains too; Prodigy takes one learning rate for all groups.
    values = tiny_training_values(tiny_model_files, tmp_path, epoch=1, optimizer=optimizer, lr_scheduler=scheduler,
                                  lr_warmup_steps=2, timestep_sampling="flux_shift", optimizer_args=args,
                                  text_encoder_lr=1e-3 if optimizer == "Prodigy" else 1e-4)
    events = []
    assert train(values, on_event=events.append).status == "completed"
    lrs = [e.lr for e in events if isinstance(e, Progress) and e.phase == "training"]
    assert lrs[0] == pytest.approx(0.5e-3)  # warmup: step 1 of 2
    assert lrs[1] == pytest.approx(1e-3)


def test_failure_is_reported_not_raised(tiny_model_files, tmp_path):
    values = tiny_training_values(tiny_model_files, tmp_path, pretrained_model_name_or_path=tiny_model_files["ae"])
    events = []
    result = train(values, on_event=events.append)
    assert result.status == "failed"
    # Found by the preflight from the file's header, before any model loads.
    assert "ae.safetensors is the FLUX VAE (ae.safetensors), not a FLUX.1 transformer" in result.message
    assert isinstance(events[-1], Finished) and events[-1].message == result.message


def test_max_train_steps_t5_mask_and_highvram(tiny_model_files, tmp_path):
    values = tiny_training_values(tiny_model_files, tmp_path, epoch=5, max_train_steps=8, apply_t5_attn_mask=True,
                                  highvram=True, save_every_n_epochs=1, t5xxl_max_token_length=48)
    result = train(values)
    # kohya's meaning: max_train_steps wins over epochs; 8 steps at 6 per epoch end inside epoch 2.
    assert (result.status, result.steps, result.epoch) == ("completed", 8, 1)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tiny-000001.safetensors", "tiny-state",
                                                                    "tiny.safetensors"]
    # The T5 mask changes what the model sees: the same run without it gives another LoRA.
    other = tiny_training_values(tiny_model_files, tmp_path / "unmasked", epoch=5, max_train_steps=8,
                                 t5xxl_max_token_length=48)
    train(other)
    a, b = lora_tensors(tmp_path / "out/tiny.safetensors"), lora_tensors(tmp_path / "unmasked/out/tiny.safetensors")
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_stop_while_caching_ends_at_once_and_keeps_the_cached_entries(tiny_model_files, tmp_path):
    values = tiny_training_values(tiny_model_files, tmp_path, epoch=3)
    stop = threading.Event()
    events = []

    def on_event(event):
        events.append(event)
        if isinstance(event, Progress) and event.phase == "caching latents" and event.done == 1:
            stop.set()

    with ForwardCounter() as counter:
        result = train(values, on_event=on_event, stop=stop)
    assert (result.status, result.steps, result.lora_path) == ("stopped", 0, "")
    assert result.message == "stopped before training started; nothing was saved (cached entries are kept)"
    # Text encoder lr above 0 (the recipe): only T5 is cached; CLIP-L would run live with its LoRA.
    assert counter.counts == {"vae": 1, "clip": 0, "t5": 3}
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert not any(isinstance(e, Progress) and e.phase == "training" for e in events)
    assert isinstance(events[-1], Finished) and events[-1].status == "stopped"
    assert len(list((Path(values["train_data_dir"]) / ".fluxlora-cache" / "latents").iterdir())) == 1


def test_output_folders_that_cannot_be_written_and_bad_bucket_steps_are_reported(tiny_model_files, tmp_path):
    blocker = tmp_path / "a file.txt"
    blocker.write_text("x")
    values = tiny_training_values(tiny_model_files, tmp_path, output_dir=str(blocker / "out"),
                                  logging_dir=str(blocker), bucket_reso_steps=24)
    assert check_ready(values) == [
        "bucket_reso_steps: 24 is not allowed; use a multiple of 16 (FLUX packs 2x2 latents of 8 pixels), such as 64",
        f"output_dir: {blocker / 'out'} cannot be created ({blocker} is not a folder); choose another folder",
        f"logging_dir: {blocker} is a file, not a folder",
    ]
    assert check_ready(dict(values, output_dir=str(tmp_path / "new" / "deeper"), logging_dir="",
                            bucket_reso_steps=64)) == []
