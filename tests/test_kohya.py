"""kohya's files coming in: a kohya_ss config trained as kohya reads it, sd-scripts' LoRAs and states."""

import json
from pathlib import Path

from safetensors import safe_open

from engine.events import Log
from engine.preset import load_preset
from engine.trainer import train
from tests.fixtures.datasets import tiny_training_values


def kohya_ss_config(values: dict, **keys) -> dict:
    """A config as the kohya_ss GUI writes it: its key names, its quirks, no preset_version."""
    config = {key: values[key] for key in (
        "pretrained_model_name_or_path", "ae", "clip_l", "t5xxl", "clip_l_tokenizer_path", "t5xxl_tokenizer_path",
        "train_data_dir", "output_dir", "logging_dir", "output_name", "max_resolution", "min_bucket_reso",
        "learning_rate", "unet_lr", "network_dim", "network_alpha", "optimizer", "optimizer_args",
        "caption_extension", "seed")}
    config.update(LoRA_type="Flux1", flux1_checkbox=True, epoch="1", max_train_steps="2", mixed_precision="no",
                  train_batch_size="1", save_every_n_epochs="0", xformers="sdpa", **keys)
    return config


def test_kohya_config_with_fp8_base_off_and_no_fp8_base_unet_trains_without_fp8(tiny_model_files, tmp_path):
    values = tiny_training_values(tiny_model_files, tmp_path)
    path = tmp_path / "kohya config.json"
    path.write_text(json.dumps(kohya_ss_config(values, fp8_base=False)), encoding="utf-8")
    loaded = load_preset(path)
    assert (loaded.format, loaded.values["fp8_base"], loaded.values["fp8_base_unet"]) == ("kohya_ss", False, False)
    events = []
    result = train(loaded.values, on_event=events.append)
    assert (result.status, result.steps) == ("completed", 2), result.message
    logged = [e.text for e in events if isinstance(e, Log)]
    assert "loading the transformer" in logged and "loading the transformer in fp8" not in logged
    with safe_open(str(Path(values["output_dir"]) / "tiny.safetensors"), "pt") as handle:
        metadata = handle.metadata()
    assert (metadata["ss_fp8_base"], metadata["ss_fp8_base_unet"]) == ("False", "False")
    # kohya's other defaults for keys the file lacks went into the run too.
    assert (metadata["ss_timestep_sampling"], metadata["ss_model_prediction_type"],
            metadata["ss_guidance_scale"]) == ("sigma", "sigma_scaled", "3.5")
