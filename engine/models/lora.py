"""LoRA adapters (peft) on the layers sd-scripts trains, and LoRA files in kohya's layout.

sd-scripts trains BFL's fused layers (double-block `qkv`, single-block `linear1`) as one LoRA
each: one down matrix, one tall up matrix. diffusers splits those layers into `to_q`, `to_k`,
`to_v` (and `proj_mlp`), so the split layers share one lora_A parameter, and their lora_B
weights are row views (torch.nn.utils.parametrize) of one fused up parameter. The optimizer
therefore sees exactly sd-scripts' tensors, one [rank, in] down and one [out, rank] up per
layer (Adafactor's factored second moment is per tensor, so splitting up would change its
steps), and peft still runs the forward. The kohya key mapping is ours (diffusers' converter
hard-codes FLUX.1's widths).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from engine.fsutil import atomic_path
from engine.models.errors import ModelFileError
from engine.models.identify import describe

ADAPTER = "default"
PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "float": torch.float32}

# kohya name suffix -> diffusers module names (several = one fused layer, in file order).
_DOUBLE = {
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn_proj": ("attn.to_out.0",), "txt_attn_proj": ("attn.to_add_out",),
    "img_mlp_0": ("ff.net.0.proj",), "img_mlp_2": ("ff.net.2",),
    "txt_mlp_0": ("ff_context.net.0.proj",), "txt_mlp_2": ("ff_context.net.2",),
    "img_mod_lin": ("norm1.linear",), "txt_mod_lin": ("norm1_context.linear",),
}
_SINGLE = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",), "modulation_lin": ("norm.linear",),
}


def lora_layers(transformer, train_blocks: str = "all") -> dict[str, tuple[str, ...]]:
    """kohya LoRA name -> the diffusers module paths it covers."""
    layers = {}
    if train_blocks in ("all", "double"):
        for i in range(len(transformer.transformer_blocks)):
            for suffix, modules in _DOUBLE.items():
                layers[f"lora_unet_double_blocks_{i}_{suffix}"] = tuple(f"transformer_blocks.{i}.{m}" for m in modules)
    if train_blocks in ("all", "single"):
        for i in range(len(transformer.single_transformer_blocks)):
            for suffix, modules in _SINGLE.items():
                layers[f"lora_unet_single_blocks_{i}_{suffix}"] = tuple(
                    f"single_transformer_blocks.{i}.{m}" for m in modules)
    return layers


def add_lora(transformer, rank: int, alpha: float, train_blocks: str = "all", ranks=None) -> None:
    """Attach fp32 LoRA adapters (peft) to the sd-scripts layers, each fused layer as one
    down and one up parameter. alpha 0 means alpha = rank (scale 1), as in sd-scripts.
    `ranks` (engine.models.lora_ranks.LayerRanks, read from a file): exactly the file's layers at
    its ranks and alphas, input layers included, as sd-scripts' dim_from_weights."""
    from peft import LoraConfig

    alpha = effective_alpha(alpha, rank)
    layers = lora_layers(transformer, train_blocks)
    patterns: dict = {}
    if ranks is not None:
        layers, patterns = _file_layers_and_patterns(transformer, layers, ranks)
    targets = [module for modules in layers.values() for module in modules]
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=True, target_modules=targets, **patterns)
    transformer.add_adapter(config, adapter_name=ADAPTER)
    transformer._fluxlora_layers = layers
    modules = dict(transformer.named_modules())
    for paths in layers.values():
        parts = [modules[path] for path in paths]
        for lora in parts:
            lora.lora_A[ADAPTER].float()
            lora.lora_B[ADAPTER].float()
            lora.lora_A[ADAPTER].weight = parts[0].lora_A[ADAPTER].weight
        if len(parts) > 1:
            _fuse_up([lora.lora_B[ADAPTER] for lora in parts])
    for parameter in lora_parameters(transformer):
        parameter.requires_grad_(True)


def _file_layers_and_patterns(transformer, layers: dict, ranks) -> tuple[dict, dict]:
    import re

    from engine.models.lora_ranks import file_layers

    layers = file_layers(transformer, layers, ranks)
    patterns: dict = {"rank_pattern": {}, "alpha_pattern": {}}
    for name, paths in layers.items():
        rank, alpha = ranks.ranks[name]
        for path in paths:  # escaped: peft matches these keys as regular expressions
            patterns["rank_pattern"][re.escape(path)] = rank
            patterns["alpha_pattern"][re.escape(path)] = effective_alpha(alpha, rank)
    return layers, patterns


def effective_alpha(alpha: float, rank: int) -> float:
    """sd-scripts' rule: network_alpha 0 (or none) means alpha = rank."""
    return float(rank) if alpha is None or alpha == 0 else float(alpha)


class _Rows(torch.nn.Module):
    """A parametrization: this layer's weight is rows [start, stop) of the fused up matrix."""

    def __init__(self, start: int, stop: int):
        super().__init__()
        self.start, self.stop = start, stop

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return fused[self.start:self.stop]


def _fuse_up(ups: list[torch.nn.Linear]) -> None:
    from torch.nn.utils import parametrize

    fused = torch.nn.Parameter(torch.cat([up.weight.detach() for up in ups], dim=0))
    start = 0
    for up in ups:
        stop = start + up.weight.shape[0]
        parametrize.register_parametrization(up, "weight", _Rows(start, stop), unsafe=True)
        up.parametrizations.weight.original = fused  # one parameter shared by all parts
        start = stop


def _up_parameter(modules) -> torch.nn.Parameter:
    up = modules[0].lora_B[ADAPTER]
    if len(modules) > 1:
        return up.parametrizations.weight.original
    return up.weight


def _parts(models) -> list:
    """A LoRA's models: the transformer alone, or (transformer, CLIP-L) when CLIP-L trains too."""
    return [model for model in (models if isinstance(models, (tuple, list)) else (models,)) if model is not None]


def _lora_modules(models):
    found = {}
    for model in _parts(models):
        layers = getattr(model, "_fluxlora_layers", None)
        if layers is None:
            raise ValueError("the model has no FluxLoRA adapters; call add_lora first")
        modules = dict(model.named_modules())
        found.update({name: [modules[path] for path in paths] for name, paths in layers.items()})
    return found


def lora_named_parameters(models) -> dict[str, torch.nn.Parameter]:
    """kohya tensor name -> trainable parameter (`NAME.lora_down.weight`, `NAME.lora_up.weight`),
    layer by layer in the order the file lists them: exactly the tensors sd-scripts trains."""
    named = {}
    for name, modules in _lora_modules(models).items():
        named[f"{name}.lora_down.weight"] = modules[0].lora_A[ADAPTER].weight
        named[f"{name}.lora_up.weight"] = _up_parameter(modules)
    return named


def lora_parameters(models) -> list[torch.nn.Parameter]:
    """Every trainable LoRA parameter once: one down and one up per kohya layer."""
    return list(lora_named_parameters(models).values())


def lora_state_dict(models, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The adapters in kohya's layout: down (shared A), up (B's stacked), alpha."""
    return dict(_iter_kohya_tensors(models, dtype))


def _iter_kohya_tensors(models, dtype):
    for name, modules in _lora_modules(models).items():
        first = modules[0]
        rank = first.r[ADAPTER]
        alpha = first.lora_alpha[ADAPTER]
        down = first.lora_A[ADAPTER].weight.detach()
        up = _up_parameter(modules).detach()
        yield f"{name}.lora_down.weight", down.to(dtype).contiguous()
        yield f"{name}.lora_up.weight", up.to(dtype).contiguous()
        yield f"{name}.alpha", torch.tensor(float(alpha) if rank else 0.0).to(dtype)


def save_lora(models, path: str | Path, *, precision: str = "fp16", metadata: dict[str, str] | None = None,
              mem_eff: bool = False) -> None:
    """Write the adapters as a kohya-layout .safetensors file, atomically.

    mem_eff streams tensor by tensor to the file (our own small writer: safetensors' API
    needs the whole dict in memory), so no second copy of the LoRA is ever held.
    """
    dtype = PRECISIONS[precision]
    metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        if mem_eff:
            _stream_safetensors(tmp, models, dtype, metadata)
        else:
            from safetensors.torch import save_file

            save_file(lora_state_dict(models, dtype), str(tmp), metadata=metadata)


_DTYPE_NAMES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}


def _stream_safetensors(path: Path, models, dtype, metadata: dict[str, str]) -> None:
    size = torch.tensor([], dtype=dtype).element_size()
    header, offset, order = {}, 0, []
    for name, modules in _lora_modules(models).items():  # shapes only, no tensors copied
        down = modules[0].lora_A[ADAPTER].weight
        up_rows = _up_parameter(modules).shape[0]
        for key, shape in ((f"{name}.lora_down.weight", list(down.shape)),
                           (f"{name}.lora_up.weight", [up_rows, down.shape[0]]), (f"{name}.alpha", [])):
            count = 1
            for side in shape:
                count *= side
            header[key] = {"dtype": _DTYPE_NAMES[dtype], "shape": shape, "data_offsets": [offset, offset + count * size]}
            offset += count * size
            order.append(key)
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data section to 8 bytes
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)))
        handle.write(raw)
        for key, tensor in _iter_kohya_tensors(models, dtype):
            handle.write(_file_bytes(tensor))


def _file_bytes(tensor: torch.Tensor) -> bytes:
    """A tensor's bytes as the file stores them, one tensor at a time from wherever it lives
    (a LoRA on the GPU is copied to RAM here). A fake tensor (the memory plan) writes zeros."""
    from torch._subclasses.fake_tensor import is_fake

    if is_fake(tensor):
        return bytes(tensor.numel() * tensor.element_size())
    return tensor.detach().to("cpu").reshape(-1).view(torch.uint8).numpy().tobytes()


def load_lora(models, path: str | Path) -> None:
    """Load a LoRA file into the adapters so they compute exactly what the file does.

    Layouts: ours / sd-scripts' (`lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`),
    BFL names with peft suffixes (`diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight`),
    diffusers/peft (`transformer.transformer_blocks.0.attn.to_q.lora_A.weight`) and kohya
    suffixes on diffusers names (`lora_transformer_transformer_blocks_0_attn_to_q.lora_down.weight`).
    Adapter layers the file lacks get a zero lora_up (they add nothing, as in the file), like
    sd-scripts' non-strict load of `network_weights`.
    """
    from safetensors.torch import load_file

    from engine.models.safetensors_header import read_header

    path = Path(path)
    header = read_header(path, "a FLUX.1 LoRA file")
    names = list(header.tensors)
    _check_text_encoder_part(names, models, path)
    if not any(".lora_down." in name or ".lora_A." in name for name in names):
        raise ModelFileError(f"{path}: this looks like {describe(header.shapes())}; "
                             "expected a FLUX.1 LoRA (lora_unet_* or lora_A/lora_B tensors)")
    layers = _file_layers(load_file(str(path)), _parts(models)[0], path)
    modules_by_name = _lora_modules(models)
    unknown = sorted(set(layers) - set(modules_by_name))
    if unknown:
        raise ModelFileError(f"{path}: has layers this model lacks or does not train ({unknown[:3]}); "
                             "is it a LoRA for FLUX.1, and does train_blocks match it?")
    with torch.no_grad():
        for name, modules in modules_by_name.items():
            if name not in layers:
                _up_parameter(modules).zero_()
                continue
            down, up, file_alpha = layers[name]
            rank = modules[0].r[ADAPTER]
            if down.shape[0] != rank:
                raise ModelFileError(f"{path}: {name} has rank {down.shape[0]}, but network_dim is {rank}; set "
                                     f"network_dim to {down.shape[0]} to continue from this LoRA")
            # Without an alpha (diffusers convention) the scale is 1. A different alpha is
            # folded into lora_up, so the loaded LoRA computes exactly what the file does.
            file_alpha = effective_alpha(None if file_alpha is None else float(file_alpha.float()), rank)
            up = up.float() * (file_alpha / modules[0].lora_alpha[ADAPTER])
            target_up = _up_parameter(modules)
            if down.shape[1] != modules[0].lora_A[ADAPTER].weight.shape[1] or up.shape != target_up.shape:
                raise ModelFileError(f"{path}: {name} has shapes {tuple(down.shape)}/{tuple(up.shape)}, which do "
                                     "not fit this model; is the LoRA for a different FLUX model?")
            modules[0].lora_A[ADAPTER].weight.copy_(down.float())
            target_up.copy_(up)


def _check_text_encoder_part(names: list[str], models, path: Path) -> None:
    """A CLIP-L part (lora_te1_*) loads when CLIP-L trains too; any other text-encoder part is refused."""
    text_encoder = [name for name in names if name.startswith(("lora_te", "text_encoder", "te1", "te2"))]
    other = [name for name in text_encoder if not name.startswith("lora_te1_")]
    if other:
        raise ModelFileError(f"{path}: has a text-encoder part FluxLoRA does not train ({other[0]}); only "
                             "CLIP-L parts in kohya's layout (lora_te1_*) can be continued")
    trains_clip = any(name.startswith("lora_te1_") for model in _parts(models)
                      for name in getattr(model, "_fluxlora_layers", {}))
    if text_encoder and not trains_clip:
        raise ModelFileError(f"{path}: also holds a CLIP-L LoRA ({text_encoder[0]}); set the text encoder "
                             "learning rate above 0 to continue training it (at 0 only the transformer trains)")


def _file_layers(state: dict, transformer, path: Path) -> dict[str, tuple]:
    """kohya LoRA name -> (down, up, alpha or None), whatever the file's layout."""
    layers, leftover = {}, dict(state)

    def take(key):
        return leftover.pop(key, None)

    # kohya names: ours and sd-scripts'.
    for key in [k for k in state if k.startswith(("lora_unet_", "lora_te1_")) and k.endswith(".lora_down.weight")]:
        name = key.removesuffix(".lora_down.weight")
        layers[name] = (take(key), take(f"{name}.lora_up.weight"), take(f"{name}.alpha"))
    # BFL names with peft suffixes: fused layers stay fused, so they map one to one.
    for key in [k for k in state if k.endswith(".lora_A.weight")]:
        base = key.removesuffix(".lora_A.weight").removeprefix("diffusion_model.")
        if base.startswith(("double_blocks.", "single_blocks.")):
            stem = key.removesuffix(".lora_A.weight")
            layers["lora_unet_" + base.replace(".", "_")] = (
                take(key), take(f"{stem}.lora_B.weight"), take(f"{stem}.alpha"))
    # diffusers module names (peft suffixes, or kohya suffixes on lora_transformer_ names).
    for name, paths in _lora_layer_paths(transformer).items():
        found = [_diffusers_layer(leftover, p) for p in paths]
        if all(f is None for f in found):
            continue
        if any(f is None or f[1] is None for f in found):
            raise ModelFileError(f"{path}: {paths[0]} has a LoRA but its fused partners ({', '.join(paths[1:])}) "
                                 "do not; FluxLoRA trains them as one layer, as sd-scripts does")
        downs = [f[0] for f in found]
        if any(not torch.equal(d, downs[0]) for d in downs[1:]):
            raise ModelFileError(f"{path}: {', '.join(paths)} have different lora_A matrices; FluxLoRA trains "
                                 "them as one fused layer (as sd-scripts does) and cannot continue from this file")
        # Each part's alpha/rank scale is folded into its own rows of lora_up (scale 1 after).
        rank = downs[0].shape[0]
        ups = [up.float() * (effective_alpha(None if alpha is None else float(alpha), rank) / rank)
               for _, up, alpha in found]
        layers[name] = (downs[0], torch.cat(ups, dim=0), None)
    if leftover:
        raise ModelFileError(f"{path}: tensors of no FLUX.1 LoRA layer ({sorted(leftover)[:3]}); expected a FLUX.1 "
                             "LoRA in kohya, diffusers or peft layout")
    for name, (down, up, _) in layers.items():
        if down is None or up is None:
            raise ModelFileError(f"{path}: {name} lacks its lora_up/lora_B or lora_down/lora_A tensor")
    return layers


def _lora_layer_paths(transformer) -> dict[str, tuple[str, ...]]:
    """Every layer sd-scripts could train on this model (any train_blocks), for mapping files."""
    layers = getattr(transformer, "_fluxlora_layers", {})
    return {**lora_layers(transformer, "all"), **layers}


def _diffusers_layer(state: dict, module_path: str):
    """Pop (down, up, alpha) for one diffusers module in peft or lora_transformer_ naming."""
    flat = "lora_transformer_" + module_path.replace(".", "_")
    for down_key, up_key, alpha_key in (
        (f"transformer.{module_path}.lora_A.weight", f"transformer.{module_path}.lora_B.weight",
         f"transformer.{module_path}.alpha"),
        (f"base_model.model.{module_path}.lora_A.weight", f"base_model.model.{module_path}.lora_B.weight",
         f"base_model.model.{module_path}.alpha"),
        (f"{module_path}.lora_A.weight", f"{module_path}.lora_B.weight", f"{module_path}.alpha"),
        (f"{flat}.lora_down.weight", f"{flat}.lora_up.weight", f"{flat}.alpha"),
    ):
        if down_key in state:
            return state.pop(down_key), state.pop(up_key, None), state.pop(alpha_key, None)
    return None
