"""The preflight: every wrong file, state and setting found from headers and small files, before
anything loads (no loading event comes before the failure), each naming its field."""

import codecs
from pathlib import Path

import pytest

from engine.dataset.captions import decode_caption
from engine.dataset.layout import scan_train_dir
from engine.events import Finished, Progress
from engine.preflight import preflight
from engine.preflight.disk import saves_in_run
from engine.trainer import train
from tests.fixtures.datasets import tiny_training_values


def values_for(tiny_model_files, root, **overrides):
    return tiny_training_values(tiny_model_files, root, **overrides)


def truncated_copy(source, folder) -> str:
    data = Path(source).read_bytes()
    target = Path(folder) / "flux1-dev-half-downloaded.safetensors"
    target.write_bytes(data[: len(data) * 2 // 3])
    return str(target)


def lora_as_model(tiny_model_files, folder) -> str:
    from safetensors.torch import save_file
    import torch

    path = Path(folder) / "my_lora.safetensors"
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(4, 32),
               "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(96, 4)}, str(path))
    return str(path)


WRONG_FILES = {
    "vae as flux": (lambda files, tmp: {"pretrained_model_name_or_path": files["ae"]},
                    "pretrained_model_name_or_path: ae.safetensors is the FLUX VAE (ae.safetensors), not a FLUX.1 "
                    "transformer such as flux1-dev.safetensors (it belongs in Autoencoder (VAE) file)"),
    "clip as flux": (lambda files, tmp: {"pretrained_model_name_or_path": files["clip_l"]},
                     "pretrained_model_name_or_path: clip_l.safetensors is a CLIP text encoder, not a FLUX.1 "
                     "transformer such as flux1-dev.safetensors (it belongs in CLIP-L file)"),
    "t5 as vae": (lambda files, tmp: {"ae": files["t5xxl"]},
                  "ae: t5xxl_fp16.safetensors is a T5 text encoder, not the FLUX VAE, ae.safetensors "
                  "(it belongs in T5-XXL file)"),
    "flux as t5": (lambda files, tmp: {"t5xxl": files["pretrained_model_name_or_path"]},
                   "t5xxl: flux1-tiny.safetensors is a FLUX.1 transformer, not the T5-XXL text encoder, e.g. "
                   "t5xxl_fp16.safetensors (it belongs in FLUX.1 model file)"),
    "lora as flux": (lambda files, tmp: {"pretrained_model_name_or_path": lora_as_model(files, tmp)},
                     "pretrained_model_name_or_path: my_lora.safetensors is a LoRA, not a FLUX.1 "
                     "transformer such as flux1-dev.safetensors (it belongs in Start from LoRA)"),
    "truncated flux": (lambda files, tmp: {"pretrained_model_name_or_path": truncated_copy(
                           files["pretrained_model_name_or_path"], tmp)}, "truncated: the header describes"),
}


@pytest.mark.parametrize("case", list(WRONG_FILES))
def test_each_wrong_model_file_fails_before_anything_loads(tiny_model_files, tmp_path, case):
    change, expected = WRONG_FILES[case]
    values = values_for(tiny_model_files, tmp_path, **change(tiny_model_files, tmp_path))
    events = []
    result = train(values, on_event=events.append)
    assert result.status == "failed"
    assert expected in result.message
    assert not any(isinstance(e, Progress) for e in events)  # no model was loaded, no cache built
    assert isinstance(events[-1], Finished)


def test_every_problem_comes_back_at_once(tiny_model_files, tmp_path):
    values = values_for(tiny_model_files, tmp_path, network_dim=0, max_resolution="700,700",
                        min_bucket_reso=4096, max_bucket_reso=1024, ae="", optimizer_args="beta1")
    problems = preflight(values).problems
    keys = [problem.split(":", 1)[0] for problem in problems]
    assert keys[:5] == ["network_dim", "max_resolution", "min_bucket_reso", "optimizer_args", "ae"]


def test_tokenizer_missing_offline_is_named(tiny_model_files, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty cache"))
    values = values_for(tiny_model_files, tmp_path, t5xxl_tokenizer_path="",
                        clip_l_tokenizer_path=str(tmp_path))  # a folder without tokenizer files
    problems = preflight(values).problems
    assert f"clip_l_tokenizer_path: {tmp_path} holds no tokenizer (expected tokenizer.json or vocab.json + " \
           "merges.txt); choose the tokenizer folder itself" in problems
    assert any(p.startswith("t5xxl_tokenizer_path: the standard tokenizer google/t5-v1_1-xxl is not in the Hugging "
                            "Face cache and this computer is set to work offline") for p in problems)


def test_resume_with_another_rank_and_adafactor_arguments_are_found_at_once(tiny_model_files, tmp_path):
    values = values_for(tiny_model_files, tmp_path, epoch=1)
    assert train(values).status == "completed"
    state = Path(values["output_dir"]) / "tiny-state"
    changed = dict(values, epoch=2, resume=str(state), network_dim=8, optimizer="Adafactor",
                   optimizer_args="relative_step=False foo=1")
    events = []
    result = train(changed, on_event=events.append)
    assert "network_dim: the state tiny-state is a rank 4 LoRA, but Network rank (dim) is 8; set it to 4 to " \
           "continue from it" in result.message
    assert "optimizer_args: 'foo' is not an argument of Adafactor; Adafactor accepts eps, " in result.message
    assert not any(isinstance(e, Progress) for e in events)
    done = preflight(dict(values, resume=str(state)))
    assert done.problems == ["epoch: tiny-state has already trained 6 steps (epoch 1); raise it above 1 to continue"]


def test_disk_need_counts_every_file_the_run_writes(tiny_model_files, tmp_path):
    values = values_for(tiny_model_files, tmp_path, epoch=3, save_state=True)
    assert saves_in_run(values, 0, 18, 6) == (3, 0, 3)
    assert saves_in_run(dict(values, save_last_n_epochs_state=2), 18, 36, 6) == (3, 0, 2)
    assert saves_in_run(dict(values, save_every_n_epochs=2, save_every_n_steps=4), 6, 18, 6) == (1, 3, 1)
    report = preflight(values)
    assert report.problems == []
    assert report.notes[0] == "dataset: 3 images, 6 with repeats, 6 steps per epoch"
    assert report.notes[1].startswith("disk: this run writes about ")
    assert "4 LoRA file(s)" in report.notes[1] and "4 state folder(s)" in report.notes[1]


def test_utf16_and_cp1252_captions_are_read_right_and_named(tiny_model_files, tmp_path):
    assert decode_caption(codecs.BOM_UTF16_LE + "ohwx man, café".encode("utf-16-le"), "a.txt") == \
        ("ohwx man, café", None)
    text, warning = decode_caption("ohwx man, café".encode("cp1252"), "b.txt")
    assert text == "ohwx man, café" and warning.startswith("b.txt: not UTF-8, read as Windows-1252 (cp1252)")
    text, warning = decode_caption("ohwx".encode("utf-16-le"), "c.txt")
    assert text == "ohwx" and warning.startswith("c.txt: UTF-16 without a byte order mark")
    values = values_for(tiny_model_files, tmp_path)
    folder = Path(values["train_data_dir"]) / "2_ohwx man"
    (folder / "photo 0.txt").write_bytes(codecs.BOM_UTF16_LE + "ohwx man, smiling".encode("utf-16-le"))
    (folder / "photo 1.txt").write_bytes("ohwx man, naïve".encode("cp1252"))
    captions = [item.caption for item in scan_train_dir(values["train_data_dir"], ".txt")]
    assert captions[:2] == ["ohwx man, smiling", "ohwx man, naïve"]
    warnings = preflight(values).warnings
    assert warnings == [f"caption {folder / 'photo 1.txt'}: not UTF-8, read as Windows-1252 (cp1252): "
                        "'ohwx man, naïve'; save it as UTF-8 if that is wrong"]
