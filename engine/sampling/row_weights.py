"""Writing one LoRA file's weights (at a strength) into adapters of a larger or equal rank, for the
comparison grid: zero-padded down/up with the file's alpha/rank scale and the strength folded into
up, so the adapter (alpha = rank, scale 1) computes exactly strength x the file's LoRA. The
transformer part goes into the transformer, a CLIP-L part (lora_te1_*) into CLIP-L."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.models.errors import ModelFileError


def file_rank(path: Path) -> int:
    from engine.models.safetensors_header import read_header

    shapes = read_header(path, "a FLUX.1 LoRA file").shapes()
    ranks = [shape[0] for name, shape in shapes.items() if name.endswith((".lora_down.weight", ".lora_A.weight"))]
    if not ranks:
        raise ModelFileError(f"{path}: no lora_down/lora_A tensors; expected a FLUX.1 LoRA")
    return max(ranks)


def has_clip_part(path: Path) -> bool:
    from engine.models.safetensors_header import read_header

    return any(name.startswith("lora_te1_") for name in read_header(path, "a FLUX.1 LoRA file").tensors)


@torch.no_grad()
def set_row_weights(transformer, clip, path: Path | None, strength: float) -> None:
    """Adapters of `transformer` (and `clip`, when given) compute strength x the file (zero: None)."""
    from safetensors.torch import load_file

    from engine.models.lora import ADAPTER, _file_layers, _lora_modules, _up_parameter, effective_alpha

    models = [model for model in (transformer, clip) if model is not None and hasattr(model, "_fluxlora_layers")]
    if not models:
        return  # no LoRA files at all: the base model only
    modules_by_name = _lora_modules(models)
    layers = {}
    if path is not None:
        state = load_file(str(path))
        if clip is None:  # prompts encoded once, without a CLIP-L LoRA: only the transformer part applies
            state = {k: v for k, v in state.items() if not k.startswith("lora_te")}
        layers = _file_layers(state, transformer, path)
        unknown = sorted(set(layers) - set(modules_by_name))
        if unknown:
            raise ModelFileError(f"{path}: has layers this model lacks ({unknown[:3]}); is it a LoRA for this model?")
    for name, modules in modules_by_name.items():
        down_weight, up_weight = modules[0].lora_A[ADAPTER].weight, _up_parameter(modules)
        down_weight.zero_()
        up_weight.zero_()
        if name not in layers:
            continue
        down, up, alpha = layers[name]
        rank = down.shape[0]
        if up.shape[0] != up_weight.shape[0] or down.shape[1] != down_weight.shape[1]:
            raise ModelFileError(f"{path}: {name} has shapes that do not fit this model; is it a LoRA for another model?")
        scale = effective_alpha(None if alpha is None else float(alpha.float()), rank) / rank * strength
        down_weight[:rank].copy_(down.float())
        up_weight[:, :rank].copy_(up.float() * scale)
