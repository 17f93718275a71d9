"""Continue from a state folder sd-scripts wrote (accelerate's save_state in its layout).

Such a folder holds `model.safetensors` (the LoRA, kohya's keys), `optimizer.bin`,
`scheduler.bin`, `random_states_0.pkl` and `train_state.json`. accelerate's own load_state
cannot read it into our run: sd-scripts' optimizer lists the LoRA tensors in its module order
(per double block img_mod, img_attn qkv/proj, img_mlp, then txt_...; per single block linear1,
linear2, modulation), and its schedule is not a registered checkpoint object of ours. Here the
optimizer state is moved to our tensors by name, the schedule is loaded and placed at the true
step, and the random states are restored.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import torch

from engine.train_state import StateError

OPTIMIZER_FILE, SCHEDULER_FILE, RANDOM_FILE = "optimizer.bin", "scheduler.bin", "random_states_0.pkl"
# Module order inside sd-scripts' DoubleStreamBlock / SingleStreamBlock (its named_modules walk).
_DOUBLE_ORDER = ("img_mod_lin", "img_attn_qkv", "img_attn_proj", "img_mlp_0", "img_mlp_2",
                 "txt_mod_lin", "txt_attn_qkv", "txt_attn_proj", "txt_mlp_0", "txt_mlp_2")
_SINGLE_ORDER = ("linear1", "linear2", "modulation_lin")
_NAME = re.compile(r"^lora_unet_(double|single)_blocks_(\d+)_(\w+?)\.lora_(down|up)\.weight$")
# in_dims layers come after the blocks, in sd-scripts' filter order (img, time, vector, guidance, txt).
_INPUT_ORDER = ("img_in", "time_in_in_layer", "time_in_out_layer", "vector_in_in_layer", "vector_in_out_layer",
                "guidance_in_in_layer", "guidance_in_out_layer", "txt_in")


def is_kohya_state(folder: Path) -> bool:
    """sd-scripts' layout: its optimizer file next to model.safetensors, none of our adapter files."""
    return (folder / OPTIMIZER_FILE).is_file() and (folder / "model.safetensors").is_file() and not (
        folder / "adapter.safetensors").is_file()


_CLIP_ORDER = ("self_attn_k_proj", "self_attn_v_proj", "self_attn_q_proj", "self_attn_out_proj", "mlp_fc1", "mlp_fc2")
_CLIP_NAME = re.compile(r"^lora_te1_text_model_encoder_layers_(\d+)_(\w+?)\.lora_(down|up)\.weight$")


def kohya_parameter_order(names) -> list[str]:
    """Our LoRA tensor names in the order sd-scripts' optimizer holds them (CLIP-L's walk: k, v, q,
    out_proj, fc1, fc2 per layer; the transformer's: its blocks, then the in_dims layers)."""
    def key(name: str):
        clip = _CLIP_NAME.match(name)
        if clip is not None:
            return (-1, int(clip.group(1)), _CLIP_ORDER.index(clip.group(2)), clip.group(3) == "up")
        layer, _, part = name.removeprefix("lora_unet_").partition(".lora_")
        if layer in _INPUT_ORDER:
            return (2, _INPUT_ORDER.index(layer), 0, part.startswith("up"))
        match = _NAME.match(name)
        if match is None:
            raise StateError(f"{name}: not a LoRA tensor sd-scripts trains on FLUX.1")
        kind, block, layer, part = match.groups()
        order = _DOUBLE_ORDER if kind == "double" else _SINGLE_ORDER
        return (int(kind == "single"), int(block), order.index(layer), part == "up")
    return sorted(names, key=key)


def load_kohya_optimizer(optimizer, named_groups: list[dict[str, torch.nn.Parameter]], path: Path) -> None:
    """sd-scripts' optimizer.bin into our optimizer, tensor by tensor by name. `named_groups`: our
    parameter groups (kohya tensor name -> parameter), in our optimizer's group order."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    groups = saved["param_groups"]
    counts, ours = [len(group["params"]) for group in groups], [len(named) for named in named_groups]
    if counts != ours:
        raise StateError(
            f"{path}: holds {sum(counts)} tensors in {len(groups)} parameter group(s), this LoRA trains {sum(ours)} in "
            f"{len(ours)}: kohya trained other layers (with or without a CLIP-L LoRA, other train_blocks) or used "
            "LoRA+ groups")
    settings = lambda group: set(group) - {"params", "lr", "initial_lr"}  # noqa: E731
    if settings(groups[0]) != settings(optimizer.param_groups[0]):
        written = ", ".join(sorted(settings(groups[0])))
        raise StateError(f"{path}: written by another optimizer (its settings: {written}); "
                         "choose the optimizer kohya trained with to continue its optimizer state")
    state, new_groups, start = {}, [], 0
    for group, named in zip(groups, named_groups):
        names = list(named)
        position = {name: start + index for index, name in enumerate(names)}
        for saved_id, name in zip(group["params"], kohya_parameter_order(names)):
            if saved_id in saved["state"]:
                _check_shapes(saved["state"][saved_id], named[name], name, path)
                state[position[name]] = saved["state"][saved_id]
        # Each group lists our parameters in our order; the saved hyperparameters are kept.
        new_groups.append(dict(group, params=list(range(start, start + len(names)))))
        start += len(names)
    optimizer.load_state_dict({"state": state, "param_groups": new_groups})


def _check_shapes(tensors: dict, parameter: torch.Tensor, name: str, path: Path) -> None:
    shape = tuple(parameter.shape)
    expected = {"exp_avg": shape, "exp_avg_sq": shape, "momentum_buffer": shape,
                "exp_avg_sq_row": shape[:-1], "exp_avg_sq_col": shape[:-2] + shape[-1:]}
    for key, want in expected.items():
        value = tensors.get(key)
        if isinstance(value, torch.Tensor) and tuple(value.shape) != want:
            raise StateError(f"{path}: {name} has {key} of shape {tuple(value.shape)}, this LoRA's tensor is "
                             f"{shape}: the rank or the model differs")


def load_kohya_state(model, named_groups: list[dict], folder: Path, true_step: int) -> list[str]:
    """Optimizer, schedule (at the true step) and random states; returns what was loaded, for the log."""
    load_kohya_optimizer(model.optimizer, named_groups, folder / OPTIMIZER_FILE)
    loaded = ["optimizer"]
    if (folder / SCHEDULER_FILE).is_file():
        model.scheduler.load_state_dict(torch.load(folder / SCHEDULER_FILE, map_location="cpu", weights_only=True))
        loaded.append(f"schedule (sd-scripts counted {model.scheduler.last_epoch} steps)")
    # sd-scripts' schedule counts every step it ran, the ones redone after a resume too; ours
    # continues at the true step.
    model.scheduler.last_epoch = true_step
    if (folder / RANDOM_FILE).is_file():
        _restore_random_states(folder / RANDOM_FILE)
        loaded.append("random states")
    return loaded


def _restore_random_states(path: Path) -> None:
    import numpy as np

    # accelerate writes this with torch.save and reads it back unrestricted; it is the user's own file.
    states = torch.load(path, map_location="cpu", weights_only=False)
    if "random_state" in states:
        random.setstate(states["random_state"])
    if "numpy_random_seed" in states:
        np.random.set_state(states["numpy_random_seed"])
    if "torch_manual_seed" in states:
        torch.set_rng_state(states["torch_manual_seed"])
    cuda = states.get("torch_cuda_manual_seed")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
