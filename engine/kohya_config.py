"""A kohya_ss GUI config read with kohya's meanings, so nothing changes training quietly.

Three things differ from reading our own presets:
- a key missing from the file takes the value kohya would train with (`KOHYA_DEFAULTS`, read from
  sd-scripts' arguments and the kohya_ss GUI), not our 12 GB recipe's;
- kohya keys that are not options of ours but change what kohya trains are applied where we
  can (`max_train_epochs`, `split_mode`, the old double/single block swap counts) or reported
  as "changes training in kohya, not supported here" when set;
- a FLUX model type we do not train (Chroma) is refused.
"""

from __future__ import annotations

from typing import Any

# Missing from a kohya_ss config -> what kohya trains with (sd-scripts' argument default, which
# the kohya_ss GUI's own widgets also start from).
KOHYA_DEFAULTS: dict[str, Any] = {
    "fp8_base": False,
    "fp8_base_unet": False,
    "timestep_sampling": "sigma",
    "model_prediction_type": "sigma_scaled",
    "guidance_scale": 3.5,
    "max_grad_norm": 1.0,
    "caption_extension": ".caption",
    "mem_eff_save": False,
    "gradient_checkpointing": False,
    "save_state_on_train_end": False,
    "cache_latents_to_disk": False,
    "flux1_cache_text_encoder_outputs": False,
    "flux1_cache_text_encoder_outputs_to_disk": False,
}

# kohya_ss keys we understand but do not keep as options, with the reason a user sees.
KOHYA_IGNORED_REASONS = {
    "flux1_checkbox": "FluxLoRA always trains FLUX.1",
    "xformers": "FluxLoRA always uses PyTorch SDPA attention",
    "sdxl": "FluxLoRA trains FLUX.1 only",
    "v2": "FluxLoRA trains FLUX.1 only",
    "v_parameterization": "FluxLoRA trains FLUX.1 only",
    "model_list": "the model is given by its file path",
    "save_model_as": "LoRAs are always saved as .safetensors",
    "network_train_text_encoder_only": "FluxLoRA always trains the transformer (with CLIP-L when the text "
                                       "encoder learning rate is above 0)",
    "lowvram": "use blocks_to_swap to save GPU memory",
}

SAMPLES_NOT_YET = "FluxLoRA does not render sample images yet"
PER_MODULE_RANKS = ("ranks per layer type are not set from a config here: every layer trains at network_dim "
                    "(a LoRA file trained with them does load as network_weights, with its ranks)")

# Set in the file -> kohya trains differently and we cannot. key: (values that mean "off", why).
UNSUPPORTED: dict[str, tuple[tuple, str]] = {
    "train_t5xxl": ((False,), "kohya trains a T5-XXL LoRA too; FluxLoRA keeps T5 frozen"),
    "split_qkv": ((False,), "kohya trains separate q, k and v LoRAs; FluxLoRA trains the fused qkv as sd-scripts "
                            "does by default"),
    **{key: (("", None), PER_MODULE_RANKS) for key in (
        "img_attn_dim", "txt_attn_dim", "img_mlp_dim", "txt_mlp_dim", "img_mod_dim", "txt_mod_dim",
        "single_dim", "single_mod_dim")},
    "in_dims": (("", None), "kohya also trains LoRAs on the input layers (img_in, time_in, vector_in, "
                            "guidance_in, txt_in); FluxLoRA does not"),
    "train_double_block_indices": (("", None, "all"), "kohya trains only the listed double blocks; FluxLoRA "
                                                       "trains the blocks train_blocks names"),
    "train_single_block_indices": (("", None, "all"), "kohya trains only the listed single blocks; FluxLoRA "
                                                       "trains the blocks train_blocks names"),
    "sample_prompts": (("", None), f"kohya renders sample images during training; {SAMPLES_NOT_YET}"),
    "ip_noise_gamma": ((0, None, ""), "kohya perturbs the noise input (applies to FLUX); FluxLoRA does not"),
    "loraplus_lr_ratio": ((0, None, ""), "LoRA+ learning-rate ratios are not supported here"),
    "loraplus_unet_lr_ratio": ((0, None, ""), "LoRA+ learning-rate ratios are not supported here"),
    "loraplus_text_encoder_lr_ratio": ((0, None, ""), "LoRA+ learning-rate ratios are not supported here"),
    "network_dropout": ((0, None, ""), "LoRA dropout is not supported here"),
    "rank_dropout": ((0, None, ""), "LoRA rank dropout is not supported here"),
    "module_dropout": ((0, None, ""), "LoRA module dropout is not supported here"),
    "shuffle_caption": ((False,), "kohya shuffles the comma-separated tags of each caption; FluxLoRA keeps "
                                  "their order"),
    "caption_dropout_rate": ((0, None, ""), "kohya drops whole captions at this rate; FluxLoRA does not"),
    "caption_tag_dropout_rate": ((0, None, ""), "kohya drops tags at this rate; FluxLoRA does not"),
    "flip_aug": ((False,), "kohya also trains on mirrored images; FluxLoRA does not"),
    "loss_type": (("l2", "", None), "kohya uses this loss instead of the squared error; FluxLoRA uses the "
                                    "squared error (l2)"),
    "prior_loss_weight": ((1, 1.0, None, ""), "kohya weights the regularisation images' loss; FluxLoRA weights "
                                              "every image 1"),
    "masked_loss": ((False,), "kohya masks the loss with alpha masks; FluxLoRA does not"),
    "scale_weight_norms": ((0, None, ""), "kohya rescales LoRA weights above this norm; FluxLoRA does not"),
    "dataset_config": (("", None), "kohya reads the dataset from this TOML file; FluxLoRA reads train_data_dir"),
    "additional_parameters": (("", None), "kohya passes these to sd-scripts as they are; FluxLoRA cannot read "
                                          "them"),
    "dim_from_weights": ((False,), "kohya takes the rank from network_weights; set network_dim to that rank"),
}

# Set in the file -> kohya ignores it for FLUX, and so do we (reported so it is not a surprise).
FLUX_IGNORES = {
    "noise_offset": "sd-scripts does not apply noise_offset to FLUX; neither does FluxLoRA (same result)",
    "min_snr_gamma": "sd-scripts does not apply min_snr_gamma to FLUX; neither does FluxLoRA (same result)",
    "debiased_estimation_loss": "sd-scripts does not apply it to FLUX; neither does FluxLoRA (same result)",
    "v_pred_like_loss": "sd-scripts does not apply it to FLUX; neither does FluxLoRA (same result)",
}


def read_kohya_meanings(data: dict, result) -> list[str]:
    """Everything a kohya_ss config means beyond its option keys; returns problems (refusals)."""
    if data.get("caption_extension") == "":
        result.values["caption_extension"] = ".caption"
        result.touched.add("caption_extension")
        result.reinterpreted.append("caption_extension = '.caption': empty in the file, which sd-scripts reads "
                                    "as its default '.caption'")
    return read_kohya_only_keys(data, result.values, result)


def read_kohya_only_keys(data: dict, values: dict, report) -> list[str]:
    """Apply or report kohya's keys that are not options of ours; returns problems (refusals).

    `values` holds what was read from the file's option keys (missing ones not yet filled);
    `report` has `reinterpreted`, `unsupported` and `unknown_keys` lists and a `touched` set.
    """
    problems = []
    model_type = str(data.get("model_type") or "flux").strip().lower()
    if model_type not in ("flux", "flux1", "dev", "schnell"):
        problems.append(f"model_type: {data['model_type']!r} is a FLUX variant FluxLoRA does not train "
                        "(Chroma has no CLIP-L and another architecture); start from a FLUX.1 config")
    acted = set()  # keys set in the file that change training; the rest stay in the "not used" list
    for key, (off, why) in UNSUPPORTED.items():
        if key in data and not _is_off(data[key], off):
            report.unsupported.append(f"{key} = {data[key]!r}: {why}")
            acted.add(key)
    for key, why in FLUX_IGNORES.items():
        if key in data and not _is_off(data[key], (0, None, "", False)):
            report.reinterpreted.append(f"{key} = {data[key]!r}: {why}")
            acted.add(key)
    if "seed" in data and _is_off(data["seed"], (0,)):
        report.reinterpreted.append("seed = 0: kohya_ss then lets sd-scripts pick a random seed; FluxLoRA trains "
                                    "with seed 0, so the run can be repeated")
        report.touched.add("seed")
    for apply in (_max_train_epochs, _split_mode, _old_block_swap):
        acted |= apply(data, values, report)
    if model_type != "flux":
        acted.add("model_type")
    report.unknown_keys[:] = [key for key in report.unknown_keys if key not in acted]
    return problems


def _is_off(raw: Any, off: tuple) -> bool:
    """Whether the file's value is one of the "off" values, whatever kohya wrote it as ("0", 0.0, "False")."""
    return _normal(raw) in [_normal(value) for value in off]


def _normal(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        if text.lower() == "none":
            return ""
        try:
            return float(text)
        except ValueError:
            return text
    if isinstance(value, bool):
        return value
    return float(value) if isinstance(value, (int, float)) else value


def _number(raw: Any) -> float | None:
    try:
        return float(raw) if raw not in ("", None) and not isinstance(raw, bool) else None
    except (TypeError, ValueError):
        return None


def _max_train_epochs(data: dict, values: dict, report) -> set[str]:
    epochs = _number(data.get("max_train_epochs"))
    if not epochs:
        return set()
    if not epochs.is_integer() or epochs < 1:
        report.unsupported.append(f"max_train_epochs = {data['max_train_epochs']!r}: not a whole number of epochs")
        return {"max_train_epochs"}
    values["epoch"], values["max_train_steps"] = int(epochs), 0
    report.touched |= {"epoch", "max_train_steps"}
    report.reinterpreted.append(
        f"max_train_epochs = {int(epochs)}: epoch {int(epochs)} and max_train_steps 0 (in sd-scripts "
        "max_train_epochs overrides epoch and max_train_steps)")
    return {"max_train_epochs"}


def _split_mode(data: dict, values: dict, report) -> set[str]:
    raw = data.get("split_mode")
    if raw is None or _is_off(raw, (False,)):
        return set()
    values["train_blocks"] = "single"
    report.touched.add("train_blocks")
    report.reinterpreted.append("split_mode = true: train_blocks 'single' (kohya_ss then trains the single "
                                "blocks only); use blocks_to_swap to save memory")
    return {"split_mode"}


def _old_block_swap(data: dict, values: dict, report) -> set[str]:
    double = int(_number(data.get("double_blocks_to_swap")) or 0)
    single = int(_number(data.get("single_blocks_to_swap")) or 0)
    if not (double or single):
        return set()
    keys = {key for key in ("double_blocks_to_swap", "single_blocks_to_swap") if key in data}
    if values.get("blocks_to_swap"):
        report.reinterpreted.append(
            f"double_blocks_to_swap = {double}, single_blocks_to_swap = {single}: not used, blocks_to_swap "
            f"{values['blocks_to_swap']} from the file decides (memory only, the LoRA is the same)")
        return keys
    count = max(double, 0) + -(-max(single, 0) // 2)  # kohya's blocks_to_swap: N//2 double, 2 single per rest
    values["blocks_to_swap"] = min(count, 120)
    report.touched.add("blocks_to_swap")
    report.reinterpreted.append(
        f"double_blocks_to_swap = {double}, single_blocks_to_swap = {single}: "
        f"blocks_to_swap {values['blocks_to_swap']} "
        "(about the same memory; the LoRA is the same)")
    return keys
