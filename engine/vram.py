"""Predicted peak GPU memory of a training run, from file headers only (no weights loaded).

The model, part by part (bytes; c = bytes of the compute dtype: 2 for bf16/fp16, 4 for "no"):
- base weights resident: every transformer tensor outside the swapped blocks, in the dtype the
  loader gives it. With fp8 that is float8 for the blocks' Linear layers (AdaLN modulation
  included) and the compute dtype for norms, embedders and the output layer. We get the dtypes
  by building the model on the meta device with the loader's own `apply_fp8_storage`, so the
  estimate follows the loader.
- streamed blocks: with `blocks_to_swap` (kohya's count, `engine.offload.swap_plan`), at most
  two swapped blocks are on the GPU at once (the one computing, the one prefetched): the two
  largest. So swapping 1 (two single blocks) saves nothing; 2 and up do. Without gradient
  checkpointing every swapped block stays on the GPU from its forward to its backward.
- compute copies of fp8 weights: layer-wise casting makes a compute-dtype copy of each fp8
  weight while its layer runs, and autograd keeps it for the backward pass: one block's worth
  with gradient checkpointing (the block being recomputed), every block's without.
- LoRA weights + gradients: fp32 (bf16 with `full_bf16`), twice.
- optimizer state per LoRA tensor: AdamW 2 moments in the LoRA dtype; AdamW8bit (bitsandbytes)
  2 x 1 byte plus a float32 absmax per 256 values, tensors under 4096 values keep 32-bit
  state; Adafactor (transformers, factored) one float per row and per column, plus a full
  first moment only when `beta1` is given; Prodigy 4 tensors the size of the weights.
- activations, per token (image tokens (W/16)(H/16) plus T5 tokens, times the batch), as
  measured with autograd's saved-tensor hooks on diffusers 0.42's blocks with sd-scripts' LoRA
  layers (tests/test_vram.py checks the formula against that measurement): a double block
  saves (27 w + 6 r) c + 12 h bytes, a single block (24 w + 5 r) c + 12 h (w width, r rank,
  h heads; SDPA keeps only its output and log-sum-exp, never a token x token matrix). With
  gradient checkpointing each block keeps only its input (w c per token) and one block is
  recomputed at a time, plus a backward working set of about 8 w c per token (the gradient of
  the widest intermediate, a single block's 7 w fused projection, and of the block output);
  without checkpointing every block keeps its saved tensors.
- text encoders and VAE: when their outputs are not cached, or `highvram` keeps them.
- CUDA context: 0.45 GiB outside PyTorch's allocator (driver, kernels; varies by driver and card).
- workspace + allocator slack: cuBLAS workspaces and fragmentation, 64 MiB + 5% of the tensors.
These are estimates; `benchmarks/gpu_12gb.py` measures the real peak on a GPU and compares.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from engine.models.flux import NAMED_ARCHITECTURES, FluxArchitecture, infer_flux_architecture
from engine.preset import parse_resolution

GIB = 1024 ** 3
CONTEXT_BYTES = int(0.45 * GIB)
WORKSPACE_BYTES = 64 * 1024 ** 2
T5_XXL_BYTES_BF16 = 9_524_621_312  # 4.76 G parameters
CLIP_L_BYTES_BF16 = 246_144_352
FLUX_VAE_BYTES_BF16 = 167_666_902


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
    """Predicted peak GPU memory of training with these preset values; parts sum to `total`."""
    from engine.offload import swap_plan

    if arch is None:
        arch, label = resolve_architecture(values, arch_name)
    else:
        label = arch_name or "given architecture"
    estimate = VramEstimate(architecture=label)
    model = values.get("pretrained_model_name_or_path", "")
    if model and not Path(model).is_file():
        estimate.notes.append(f"{model} not found: assuming the {label} architecture")
    parts = estimate.parts
    compute = 4 if values["mixed_precision"] == "no" else 2
    fp8 = bool(values["fp8_base"] or values["fp8_base_unet"])
    weights = stored_weight_bytes(arch, fp8, compute)

    double, single = swap_plan(values["blocks_to_swap"], arch.num_double, arch.num_single)
    if (double, single) != swap_plan(values["blocks_to_swap"], 10 ** 6, 10 ** 6):
        estimate.notes.append(f"blocks_to_swap {values['blocks_to_swap']} swaps {double} double and {single} single "
                              f"blocks, all this model allows")
    kept = weights.double[:arch.num_double - double] + weights.single[:arch.num_single - single]
    moved = weights.double[arch.num_double - double:] + weights.single[arch.num_single - single:]
    parts["base weights resident"] = sum(kept) + weights.rest
    checkpointing = values["gradient_checkpointing"]
    # At most two swapped blocks on the GPU at once; without checkpointing autograd keeps every
    # swapped block's device copy until its backward, so swapping saves nothing.
    parts["streamed blocks"] = sum(sorted(moved)[-2:]) if checkpointing else sum(moved)
    if moved and not checkpointing:
        estimate.notes.append("blocks_to_swap saves no GPU memory without gradient_checkpointing "
                              "(autograd keeps each swapped block's weights for the backward pass)")
    cast = weights.fp8_params
    parts["compute copies of fp8 weights"] = compute * (max(cast) if checkpointing else sum(cast)) if fp8 else 0

    lora_bytes = 2 if values["full_bf16"] else 4
    count, shapes = lora_parameter_count(arch, values["network_dim"], values["train_blocks"])
    parts["LoRA weights + gradients"] = 2 * lora_bytes * count
    parts["optimizer state"] = optimizer_state_bytes(values["optimizer"], values["optimizer_args"], shapes, lora_bytes)

    width, height = parse_resolution(values["max_resolution"])
    tokens = ((width // 16) * (height // 16) + values["t5xxl_max_token_length"]) * values["train_batch_size"]
    saved_double, saved_single = block_activation_bytes(arch, values["network_dim"], compute)
    if checkpointing:
        block_inputs = (arch.num_double + arch.num_single) * arch.width * compute
        activations = tokens * (block_inputs + max(saved_double, saved_single) + 8 * arch.width * compute)
    else:
        activations = tokens * (arch.num_double * saved_double + arch.num_single * saved_single)
    parts["activations"] = activations

    encoders = 0
    if values["highvram"] or not values["flux1_cache_text_encoder_outputs"]:
        encoders += T5_XXL_BYTES_BF16 + CLIP_L_BYTES_BF16
    if values["highvram"] or not values["cache_latents"]:
        encoders += FLUX_VAE_BYTES_BF16
    parts["text encoders + VAE"] = encoders
    parts["workspace + allocator slack"] = WORKSPACE_BYTES + sum(parts.values()) // 20
    parts["CUDA context"] = CONTEXT_BYTES
    return estimate


@dataclass(frozen=True)
class StoredWeights:
    double: list[int]  # bytes of each double block as stored
    single: list[int]
    rest: int  # embedders, final layer
    fp8_params: list[int]  # float8 parameters per block (each gets a compute copy while it runs)


@functools.lru_cache(maxsize=16)
def stored_weight_bytes(arch: FluxArchitecture, fp8: bool, compute_bytes: int) -> StoredWeights:
    """What the transformer occupies, dtype by dtype as load_flux_transformer stores it: the same
    model built on the meta device (no memory), with the same layer-wise casting."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    from engine.models.flux import apply_fp8_storage

    with init_empty_weights():
        model = FluxTransformer2DModel.from_config(arch.diffusers_config())
    if fp8:
        apply_fp8_storage(model, torch.bfloat16)

    def size(module) -> tuple[int, int]:
        params = list(module.parameters())
        low = sum(p.numel() for p in params if p.dtype == torch.float8_e4m3fn)
        return low + (sum(p.numel() for p in params) - low) * compute_bytes, low

    double = [size(block) for block in model.transformer_blocks]
    single = [size(block) for block in model.single_transformer_blocks]
    total, _ = size(model)
    rest = total - sum(b for b, _ in double + single)
    return StoredWeights([b for b, _ in double], [b for b, _ in single], rest, [n for _, n in double + single])


def block_activation_bytes(arch: FluxArchitecture, rank: int, compute_bytes: int) -> tuple[int, int]:
    """Bytes per token that autograd saves in one (double, single) block, LoRA layers included."""
    w, heads = arch.width, arch.num_heads
    return (27 * w + 6 * rank) * compute_bytes + 12 * heads, (24 * w + 5 * rank) * compute_bytes + 12 * heads


def optimizer_state_bytes(optimizer: str, optimizer_args: str, shapes: list[tuple[int, int]], lora_bytes: int) -> int:
    from engine.training.optim import parse_optimizer_args

    sizes = [rows * cols for rows, cols in shapes]
    if optimizer == "AdamW":
        return sum(2 * n * lora_bytes for n in sizes)
    if optimizer == "AdamW8bit":
        return sum(2 * n + 2 * 4 * -(-n // 256) if n >= 4096 else 2 * 4 * n for n in sizes) + 2 * 256 * 4
    if optimizer == "Adafactor":
        first_moment = parse_optimizer_args(optimizer_args).get("beta1") is not None
        return sum((rows + cols) * lora_bytes + (rows * cols * lora_bytes if first_moment else 0)
                   for rows, cols in shapes)
    if optimizer == "Prodigy":
        return sum(4 * n * lora_bytes for n in sizes)
    raise ValueError(f"optimizer: {optimizer!r} is not supported")


def detected_gpu_memory() -> int | None:
    """Total memory of CUDA device 0 in bytes, or None without a CUDA GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory
