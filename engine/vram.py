"""Predicted peak GPU memory of a training run, from file headers only (no weights loaded).

The model, part by part (bytes):
- base weights resident: every transformer tensor not in a swapped block; Linear weights take
  1 byte with fp8 base, everything else the compute dtype (2 bytes; 4 with mixed precision "no");
- streamed blocks: with `blocks_to_swap`, two of the largest swapped blocks are on the GPU at
  once (the one computing and the one being prefetched);
- LoRA: fp32 weights and gradients (8 bytes per parameter) plus the optimizer's state (AdamW 8,
  AdamW8bit 2, Prodigy 16 bytes per parameter; Adafactor's factored moments, rows + columns);
- activations: per image token and text token, with gradient checkpointing each block keeps its
  input (width x 2 bytes) and one block is recomputed at a time (about 24 x width x 2 bytes per
  token, attention by SDPA so no token x token matrix); without it every block keeps the lot;
- text encoders and VAE: only when their outputs are not cached or `highvram` keeps them;
- CUDA context and workspace: a fixed 0.6 GiB (cuBLAS workspace, allocator slack).
These are estimates; `benchmarks/gpu_12gb.py` measures the real peak on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine.models.flux import NAMED_ARCHITECTURES, FluxArchitecture, infer_flux_architecture
from engine.preset import parse_resolution

GIB = 1024 ** 3
CONTEXT_BYTES = int(0.6 * GIB)
T5_XXL_BYTES_BF16 = 9_524_621_312  # 4.76 G parameters
CLIP_L_BYTES_BF16 = 246_144_352
FLUX_VAE_BYTES_BF16 = 167_666_902
_OPTIMIZER_BYTES = {"AdamW": 8, "AdamW8bit": 2, "Prodigy": 16}


@dataclass
class VramEstimate:
    parts: dict[str, int] = field(default_factory=dict)  # label -> bytes, in display order
    architecture: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def table(self) -> str:
        width = max(len(label) for label in self.parts)
        lines = [f"{label:<{width}}  {value / GIB:6.2f} GiB" for label, value in self.parts.items()]
        lines.append(f"{'predicted peak':<{width}}  {self.total / GIB:6.2f} GiB")
        return "\n".join(lines)


def block_parameters(arch: FluxArchitecture) -> tuple[dict[str, int], dict[str, int], int]:
    """Parameter counts: (double-block Linear weights / other, single-block ditto, rest)."""
    w, mlp, h = arch.width, arch.mlp_hidden, arch.head_dim
    double_linear = 2 * (w * 3 * w + w * w + w * mlp + mlp * w + w * 6 * w)
    double_other = 2 * (3 * w + w + mlp + w + 6 * w) + 4 * h
    single_linear = w * (3 * w + mlp) + (w + mlp) * w + w * 3 * w
    single_other = (3 * w + mlp) + w + 3 * w + 2 * h
    embedder = lambda fan_in: fan_in * w + w + w * w + w  # noqa: E731  (two Linear layers)
    rest = (arch.in_channels * w + w) + (arch.context_dim * w + w) + embedder(256) + embedder(arch.pooled_dim)
    rest += embedder(256) if arch.has_guidance else 0
    rest += (w * arch.in_channels + arch.in_channels) + (w * 2 * w + 2 * w)  # final layer
    return ({"linear": double_linear, "other": double_other}, {"linear": single_linear, "other": single_other}, rest)


def lora_parameter_count(arch: FluxArchitecture, rank: int, train_blocks: str = "all") -> tuple[int, list[tuple[int, int]]]:
    """(total LoRA parameters, (rows, cols) of every LoRA matrix) for the sd-scripts layers."""
    w, mlp = arch.width, arch.mlp_hidden
    double = [(w, 3 * w), (w, w), (w, mlp), (mlp, w), (w, 6 * w)] * 2
    single = [(w, 3 * w + mlp), (w + mlp, w), (w, 3 * w)]
    layers = []
    if train_blocks in ("all", "double"):
        layers += double * arch.num_double
    if train_blocks in ("all", "single"):
        layers += single * arch.num_single
    shapes = [shape for fan_in, fan_out in layers for shape in ((rank, fan_in), (fan_out, rank))]
    return sum(rows * cols for rows, cols in shapes), shapes


def resolve_architecture(values: dict, arch_name: str | None = None) -> tuple[FluxArchitecture, str]:
    model = values.get("pretrained_model_name_or_path", "")
    if model and Path(model).is_file():
        from engine.models.safetensors_header import read_header

        return infer_flux_architecture(read_header(model).shapes(), source=model), Path(model).name
    name = arch_name or "flux1-dev"
    if name not in NAMED_ARCHITECTURES:
        raise ValueError(f"--arch: {name!r} is not known; choose one of {', '.join(NAMED_ARCHITECTURES)}")
    return NAMED_ARCHITECTURES[name], name


def estimate_vram(values: dict, arch: FluxArchitecture | None = None, arch_name: str | None = None) -> VramEstimate:
    if arch is None:
        arch, label = resolve_architecture(values, arch_name)
    else:
        label = arch_name or "given architecture"
    estimate = VramEstimate(architecture=label)
    compute = 4 if values["mixed_precision"] == "no" else 2
    weight_bytes = 1 if (values["fp8_base"] or values["fp8_base_unet"]) else compute
    double, single, rest = block_parameters(arch)
    double_bytes = double["linear"] * weight_bytes + double["other"] * compute
    single_bytes = single["linear"] * weight_bytes + single["other"] * compute
    blocks = [double_bytes] * arch.num_double + [single_bytes] * arch.num_single
    swapped = min(values["blocks_to_swap"], len(blocks) - 1)
    # Like sd-scripts, swapping takes blocks from the end (single blocks first).
    kept, moved = blocks[:len(blocks) - swapped], blocks[len(blocks) - swapped:]
    estimate.parts["base weights resident"] = sum(kept) + rest * compute
    estimate.parts["streamed blocks"] = 2 * max(moved) if moved else 0
    if swapped != values["blocks_to_swap"]:
        estimate.notes.append(f"blocks_to_swap {values['blocks_to_swap']} capped at {swapped} (this model has {len(blocks)} blocks)")

    count, shapes = lora_parameter_count(arch, values["network_dim"], values["train_blocks"])
    optimizer = values["optimizer"]
    if optimizer == "Adafactor":
        state = sum((rows + cols) * 4 for rows, cols in shapes)
    else:
        state = count * _OPTIMIZER_BYTES[optimizer]
    estimate.parts["LoRA weights + gradients"] = count * 8
    estimate.parts["optimizer state"] = state

    width, height = parse_resolution(values["max_resolution"])
    image_tokens = (width // 16) * (height // 16)
    tokens = (image_tokens + values["t5xxl_max_token_length"]) * values["train_batch_size"]
    per_block_working = tokens * 24 * arch.width * compute
    block_count = len(blocks)
    if values["gradient_checkpointing"]:
        activations = block_count * tokens * arch.width * compute + per_block_working
    else:
        activations = block_count * per_block_working
    estimate.parts["activations"] = activations

    encoders = 0
    if values["highvram"] or not values["flux1_cache_text_encoder_outputs"]:
        encoders += T5_XXL_BYTES_BF16 + CLIP_L_BYTES_BF16
    if values["highvram"] or not values["cache_latents"]:
        encoders += FLUX_VAE_BYTES_BF16
    estimate.parts["text encoders + VAE"] = encoders
    estimate.parts["CUDA context + workspace"] = CONTEXT_BYTES
    return estimate


def detected_gpu_memory() -> int | None:
    """Total memory of CUDA device 0 in bytes, or None without a CUDA GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory
