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
- text encoders and VAE: when their outputs are not cached, or `highvram` keeps them; CLIP-L
  always when the text encoder learning rate is above 0 (it trains a LoRA, with its state).
- sample images: what sampling needs beyond the training step (engine/sampling/memory.py).
- CUDA context: 0.45 GiB outside PyTorch's allocator (driver, kernels; varies by driver and card).
- workspace + allocator slack: cuBLAS workspaces and fragmentation, 64 MiB + 5% of the tensors.
These are estimates; `benchmarks/gpu_12gb.py` measures the real peak on a GPU and compares.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from engine.host_ram import host_ram_phases
from engine.memory_phases import timeline
from engine.models.flux import NAMED_ARCHITECTURES, FluxArchitecture, infer_flux_architecture
from engine.preset import parse_resolution

GIB = 1024 ** 3
MODULATION = ("norm1.linear.", "norm1_context.linear.", "norm.linear.")  # AdaLN Linears inside a block
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
    phases: dict[str, int] = field(default_factory=dict)  # device tensors at each phase's peak (engine.memory_phases)
    host: dict[str, int] = field(default_factory=dict)  # system RAM per phase (engine.host_ram)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def table(self) -> str:
        width = max(len(label) for label in self.parts)
        lines = [f"{label:<{width}}  {value / GIB:6.2f} GiB" for label, value in self.parts.items()]
        lines.append(f"{'predicted peak':<{width}}  {self.total / GIB:6.2f} GiB")
        return "\n".join(lines)

    @property
    def host_peak(self) -> int:
        return max(self.host.values()) if self.host else 0

    def host_table(self) -> str:
        width = max(len(phase) for phase in self.host)
        lines = [f"RAM {phase:<{width}}  {value / GIB:6.2f} GiB" for phase, value in self.host.items()]
        lines.append(f"RAM {'peak (system RAM needed)':<{width}}  {self.host_peak / GIB:6.2f} GiB")
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


def block_lora_counts(arch: FluxArchitecture, rank: int) -> tuple[int, int]:
    """LoRA parameters in one double block and in one single block."""
    one = FluxArchitecture(**{**arch.__dict__, "num_double": 1, "num_single": 1})
    return lora_parameter_count(one, rank, "double")[0], lora_parameter_count(one, rank, "single")[0]


CLIP_L_LAYERS, CLIP_L_WIDTH, CLIP_L_MLP, CLIP_L_TOKENS = 12, 768, 3072, 77


def clip_lora_shapes(rank: int) -> list[tuple[int, int]]:
    """(rows, cols) of every CLIP-L LoRA matrix: q/k/v/out_proj, fc1, fc2 of each encoder layer."""
    w, mlp = CLIP_L_WIDTH, CLIP_L_MLP
    layers = [(w, w)] * 4 + [(w, mlp), (mlp, w)]
    return [shape for fan_in, fan_out in layers * CLIP_L_LAYERS for shape in ((rank, fan_in), (fan_out, rank))]


def _clip_lora_bytes(values: dict, lora_bytes: int, compute: int) -> int:
    """CLIP-L kept on the GPU with its LoRA, gradients, optimizer state and (small) activations."""
    shapes = clip_lora_shapes(values["network_dim"])
    count = sum(rows * cols for rows, cols in shapes)
    state = optimizer_state_bytes(values["optimizer"], values["optimizer_args"], shapes, lora_bytes)
    # Per token and layer roughly: attention inputs/outputs and the MLP's hidden activations.
    activations = (CLIP_L_TOKENS * values["train_batch_size"] * CLIP_L_LAYERS
                   * (8 * CLIP_L_WIDTH + 2 * CLIP_L_MLP) * compute)
    return CLIP_L_BYTES_BF16 + 2 * lora_bytes * count + state + activations


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
    if values["blocks_to_swap"] == "auto":
        raise ValueError("blocks_to_swap: 'auto' is chosen for a memory size first (resolve_auto_swap)")
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
    checkpointing = values["gradient_checkpointing"]
    if (double or single) and not checkpointing:
        estimate.notes.append("blocks_to_swap saves no GPU memory without gradient_checkpointing "
                              "(autograd keeps each swapped block's weights for the backward pass)")
    lora_bytes = 2 if values["full_bf16"] else 4
    rank = values["network_dim"]
    _, shapes = lora_parameter_count(arch, rank, values["train_blocks"])
    state = optimizer_state_bytes(values["optimizer"], values["optimizer_args"], shapes, lora_bytes)
    width, height = parse_resolution(values["max_resolution"])
    tokens = ((width // 16) * (height // 16) + values["t5xxl_max_token_length"]) * values["train_batch_size"]
    saved_double, saved_single = block_activation_bytes(arch, rank, compute)
    lora_double, lora_single = block_lora_counts(arch, rank)
    train = values["train_blocks"]
    blocks = [dict(stored=stored, swapped=i >= arch.num_double - double, cast=compute * cast if fp8 else 0,
                   lora=lora_double if train in ("all", "double") else 0, saved=saved_double * tokens)
              for i, (stored, cast) in enumerate(zip(weights.double, weights.fp8_saved))]
    blocks += [dict(stored=stored, swapped=i >= arch.num_single - single, cast=compute * cast if fp8 else 0,
                    lora=lora_single if train in ("all", "single") else 0, saved=saved_single * tokens)
               for i, (stored, cast) in enumerate(zip(weights.single, weights.fp8_saved[arch.num_double:]))]
    train_clip = values["text_encoder_lr"] > 0  # CLIP-L trains a LoRA too and stays on the GPU
    extra = {"CLIP-L with its LoRA (trained)": _clip_lora_bytes(values, lora_bytes, compute)} if train_clip else {}
    encoders = 0
    if values["highvram"] or not values["flux1_cache_text_encoder_outputs"]:
        encoders += T5_XXL_BYTES_BF16 + (0 if train_clip else CLIP_L_BYTES_BF16)
    if values["highvram"] or not values["cache_latents"]:
        encoders += FLUX_VAE_BYTES_BF16
    phases = timeline(blocks, weights.rest, lora_bytes, state, encoders, tokens, arch.width, compute, checkpointing,
                      extra, compute * arch.mlp_hidden * arch.width if fp8 else 0)
    count = sum(block["lora"] for block in blocks)
    estimate.host = host_ram_phases(
        values, arch.mlp_hidden * arch.width * (1 if fp8 else compute), sum(b["stored"] for b in blocks if b["swapped"]),
        count, {"t5": T5_XXL_BYTES_BF16, "clip": CLIP_L_BYTES_BF16, "vae": FLUX_VAE_BYTES_BF16})
    estimate.phases = {phase: sum(breakdown.values()) for phase, breakdown in phases.items()}
    parts.update(max(phases.values(), key=lambda breakdown: sum(breakdown.values())))
    from engine.sampling.memory import sampling_extra_bytes

    # Sampling runs between steps: the peak's activations and LoRA gradients are free then.
    transient = parts["activations"] + parts["LoRA weights + gradients"] - lora_bytes * count
    parts["sample images"] = sampling_extra_bytes(values, arch.width, values["t5xxl_max_token_length"], compute,
                                                  FLUX_VAE_BYTES_BF16, transient)
    parts["workspace + allocator slack"] = WORKSPACE_BYTES + sum(parts.values()) // 20
    parts["CUDA context"] = CONTEXT_BYTES
    return estimate


@dataclass(frozen=True)
class StoredWeights:
    double: list[int]  # bytes of each double block as stored
    single: list[int]
    rest: int  # embedders, final layer
    fp8_params: list[int]  # float8 parameters per block (each gets a compute copy while it runs)
    fp8_saved: list[int] = field(default_factory=list)  # of those, the ones whose copy autograd keeps


@functools.lru_cache(maxsize=16)
def stored_weight_bytes(arch: FluxArchitecture, fp8: bool, compute_bytes: int) -> StoredWeights:
    """What the transformer occupies, dtype by dtype as load_flux_transformer stores it: the same
    model built on the meta device (no memory), with the same layer-wise casting."""
    import torch
    from diffusers import FluxTransformer2DModel

    from engine.models.flux import apply_fp8_storage

    # torch's device context is per thread; accelerate's init_empty_weights patches every
    # Module process-wide, so the GUI's estimate at Start put the run's CLIP-L, built at the
    # same moment in the training thread, on the meta device ("Cannot copy out of meta tensor").
    with torch.device("meta"):
        model = FluxTransformer2DModel.from_config(arch.diffusers_config())
    if fp8:
        apply_fp8_storage(model, torch.bfloat16)

    def size(module) -> tuple[int, int]:
        params = list(module.parameters())
        low = sum(p.numel() for p in params if p.dtype == torch.float8_e4m3fn)
        return low + (sum(p.numel() for p in params) - low) * compute_bytes, low

    def kept_for_backward(block) -> int:
        # The AdaLN modulation's input is the time embedding, which needs no gradient, so autograd
        # keeps no copy of those weights; every other block Linear's compute copy is kept.
        return sum(p.numel() for name, p in block.named_parameters()
                   if p.dtype == torch.float8_e4m3fn and not name.startswith(MODULATION))

    blocks = list(model.transformer_blocks) + list(model.single_transformer_blocks)
    double = [size(block) for block in model.transformer_blocks]
    single = [size(block) for block in model.single_transformer_blocks]
    total, _ = size(model)
    rest = total - sum(b for b, _ in double + single)
    return StoredWeights([b for b, _ in double], [b for b, _ in single], rest, [n for _, n in double + single],
                         [kept_for_backward(block) for block in blocks])


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


def max_useful_swap(arch: FluxArchitecture) -> int:
    """The smallest blocks_to_swap that swaps all the blocks this model allows."""
    from engine.offload import swap_plan

    most = swap_plan(10 ** 6, arch.num_double, arch.num_single)
    return next(n for n in range(10 ** 6) if swap_plan(n, arch.num_double, arch.num_single) == most)


class SwapChoiceError(ValueError):
    """Even the most swapping does not fit the memory available."""


def choose_blocks_to_swap(values: dict, free_bytes: int, arch: FluxArchitecture | None = None,
                          context_counted: bool = True, arch_name: str | None = None) -> tuple[int, VramEstimate]:
    """The fewest blocks_to_swap whose estimated peak fits in `free_bytes` (the least swapping is
    the fastest), and that estimate. `context_counted=False` when `free_bytes` was read after
    this process made its CUDA context (torch.cuda.mem_get_info), which is then already used."""
    if arch is None:
        arch, arch_name = resolve_architecture(values, arch_name)

    def need(estimate: VramEstimate) -> int:
        return estimate.total - (0 if context_counted else CONTEXT_BYTES)

    most = max_useful_swap(arch)
    for count in range(most + 1):
        estimate = estimate_vram(dict(values, blocks_to_swap=count), arch=arch, arch_name=arch_name)
        if need(estimate) <= free_bytes:
            return count, estimate
    lower = [f"{key} (now {values[key]})" for key in ("max_resolution", "network_dim", "train_batch_size")]
    if values["optimizer"] in ("AdamW", "Prodigy"):
        lower.append(f"optimizer (now {values['optimizer']}: Adafactor or AdamW8bit keep less state)")
    raise SwapChoiceError(
        f"blocks_to_swap auto: even swapping {most} blocks needs {need(estimate) / GIB:.1f} GiB, more than the "
        f"{free_bytes / GIB:.1f} GiB free on the GPU; lower {', '.join(lower[:-1])} or {lower[-1]}")


def free_device_bytes(device=0) -> int | None:
    """Free memory of a CUDA device now (this process's context already made), or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.mem_get_info(device)[0]


def resolve_auto_swap(values: dict, free_bytes: int | None, context_counted: bool = False,
                      arch_name: str | None = None) -> tuple[dict, str]:
    """values with blocks_to_swap a number, and the sentence that says what was chosen and why.
    Raises SwapChoiceError when nothing fits. Values without 'auto' come back unchanged."""
    if values["blocks_to_swap"] != "auto":
        return values, ""
    if free_bytes is None:
        return dict(values, blocks_to_swap=0), "blocks_to_swap auto: no CUDA GPU, so no blocks are swapped"
    count, estimate = choose_blocks_to_swap(values, free_bytes, context_counted=context_counted, arch_name=arch_name)
    return dict(values, blocks_to_swap=count), (f"blocks_to_swap auto: swapping {count} blocks to fit "
                                                f"{free_bytes / GIB:.1f} GiB free (estimated peak "
                                                f"{estimate.total / GIB:.2f} GiB)")


def auto_swap_problems(values: dict) -> list[str]:
    """blocks_to_swap auto on a GPU where even the most swapping does not fit (none on the CPU)."""
    try:
        resolve_auto_swap(values, free_device_bytes())
    except SwapChoiceError as exc:
        return [str(exc)]
    return []


def swap_for_device(values: dict, device, log) -> dict:
    """At Start, before anything loads: blocks_to_swap 'auto' becomes a number for this GPU's
    free memory, said in the log; SwapChoiceError (a ValueError) when nothing fits."""
    if values["blocks_to_swap"] != "auto":
        return values
    free = free_device_bytes(device) if getattr(device, "type", str(device)) == "cuda" else None
    values, sentence = resolve_auto_swap(values, free)
    log(sentence)
    return values
