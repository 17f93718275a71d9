"""LoRA adapters (peft) on the layers sd-scripts trains, and LoRA files in kohya's layout.

sd-scripts trains BFL's fused layers (double-block `qkv`, single-block `linear1`) as one LoRA
each: one down matrix, one tall up matrix. diffusers splits those layers into `to_q`, `to_k`,
`to_v` (and `proj_mlp`), so we give the split layers one *shared* lora_A parameter and
separate lora_B's: mathematically the fused LoRA, saved exactly as sd-scripts saves it.
The kohya key mapping is ours (diffusers' converter hard-codes FLUX.1's widths).
"""

from __future__ import annotations

import json
import struct
from datetime import datetime, timezone
from pathlib import Path

import torch

from engine.fsutil import atomic_path
from engine.models.errors import ModelFileError
from engine.models.identify import describe
from engine.schema import OPTIONS_TABLE

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


def add_lora(transformer, rank: int, alpha: float, train_blocks: str = "all") -> None:
    """Attach fp32 LoRA adapters (peft) to the sd-scripts layers; fused layers share lora_A."""
    from peft import LoraConfig

    layers = lora_layers(transformer, train_blocks)
    targets = [module for modules in layers.values() for module in modules]
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=True, target_modules=targets)
    transformer.add_adapter(config, adapter_name=ADAPTER)
    transformer._fluxlora_layers = layers
    modules = dict(transformer.named_modules())
    for paths in layers.values():
        first = modules[paths[0]]
        for path in paths:
            lora = modules[path]
            lora.lora_A[ADAPTER].float()
            lora.lora_B[ADAPTER].float()
            if path != paths[0]:
                lora.lora_A[ADAPTER].weight = first.lora_A[ADAPTER].weight
    for parameter in lora_parameters(transformer):
        parameter.requires_grad_(True)


def _lora_modules(transformer):
    layers = getattr(transformer, "_fluxlora_layers", None)
    if layers is None:
        raise ValueError("the transformer has no FluxLoRA adapters; call add_lora first")
    modules = dict(transformer.named_modules())
    return {name: [modules[path] for path in paths] for name, paths in layers.items()}


def lora_parameters(transformer) -> list[torch.nn.Parameter]:
    """Every trainable LoRA parameter once (shared lora_A's are not repeated)."""
    seen, params = set(), []
    for modules in _lora_modules(transformer).values():
        for module in modules:
            for parameter in (module.lora_A[ADAPTER].weight, module.lora_B[ADAPTER].weight):
                if id(parameter) not in seen:
                    seen.add(id(parameter))
                    params.append(parameter)
    return params


def lora_state_dict(transformer, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The adapters in kohya's layout: down (shared A), up (B's stacked), alpha."""
    return dict(_iter_kohya_tensors(transformer, dtype))


def _iter_kohya_tensors(transformer, dtype):
    for name, modules in _lora_modules(transformer).items():
        first = modules[0]
        rank = first.r[ADAPTER]
        alpha = first.lora_alpha[ADAPTER]
        down = first.lora_A[ADAPTER].weight.detach()
        up = torch.cat([module.lora_B[ADAPTER].weight.detach() for module in modules], dim=0)
        yield f"{name}.lora_down.weight", down.to(dtype).contiguous()
        yield f"{name}.lora_up.weight", up.to(dtype).contiguous()
        yield f"{name}.alpha", torch.tensor(float(alpha) if rank else 0.0).to(dtype)


def save_lora(transformer, path: str | Path, *, precision: str = "fp16", metadata: dict[str, str] | None = None,
              mem_eff: bool = False) -> None:
    """Write the adapters as a kohya-layout .safetensors file, atomically.

    mem_eff streams tensor by tensor to the file (our own small writer: safetensors' API
    needs the whole dict in memory), so no second copy of the LoRA is ever held.
    """
    dtype = PRECISIONS[precision]
    metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        if mem_eff:
            _stream_safetensors(tmp, transformer, dtype, metadata)
        else:
            from safetensors.torch import save_file

            save_file(lora_state_dict(transformer, dtype), str(tmp), metadata=metadata)


_DTYPE_NAMES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}


def _stream_safetensors(path: Path, transformer, dtype, metadata: dict[str, str]) -> None:
    size = torch.tensor([], dtype=dtype).element_size()
    header, offset, order = {}, 0, []
    for name, modules in _lora_modules(transformer).items():  # shapes only, no tensors copied
        down = modules[0].lora_A[ADAPTER].weight
        up_rows = sum(module.lora_B[ADAPTER].weight.shape[0] for module in modules)
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
        for key, tensor in _iter_kohya_tensors(transformer, dtype):
            handle.write(_file_bytes(tensor))


def _file_bytes(tensor: torch.Tensor) -> bytes:
    """A tensor's bytes as the file stores them, one tensor at a time from wherever it lives
    (a LoRA on the GPU is copied to RAM here). A fake tensor (the memory plan) writes zeros."""
    from torch._subclasses.fake_tensor import is_fake

    if is_fake(tensor):
        return bytes(tensor.numel() * tensor.element_size())
    return tensor.detach().to("cpu").reshape(-1).view(torch.uint8).numpy().tobytes()


def load_lora(transformer, path: str | Path) -> None:
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
    text_encoder = [name for name in names if name.startswith(("lora_te", "text_encoder", "te1", "te2"))]
    if text_encoder:
        raise ModelFileError(f"{path}: also trains a text encoder ({text_encoder[0]}); FluxLoRA trains the "
                             "transformer only and cannot continue from it exactly")
    if not any(".lora_down." in name or ".lora_A." in name for name in names):
        raise ModelFileError(f"{path}: this looks like {describe(header.shapes())}; "
                             "expected a FLUX.1 LoRA (lora_unet_* or lora_A/lora_B tensors)")
    layers = _file_layers(load_file(str(path)), transformer, path)
    modules_by_name = _lora_modules(transformer)
    unknown = sorted(set(layers) - set(modules_by_name))
    if unknown:
        raise ModelFileError(f"{path}: has layers this model lacks or does not train ({unknown[:3]}); "
                             "is it a LoRA for FLUX.1, and does train_blocks match it?")
    with torch.no_grad():
        for name, modules in modules_by_name.items():
            if name not in layers:
                for module in modules:
                    module.lora_B[ADAPTER].weight.zero_()
                continue
            down, up, file_alpha = layers[name]
            rank = modules[0].r[ADAPTER]
            if down.shape[0] != rank:
                raise ModelFileError(f"{path}: {name} has rank {down.shape[0]}, but network_dim is {rank}; set "
                                     f"network_dim to {down.shape[0]} to continue from this LoRA")
            # Without an alpha (diffusers convention) the scale is 1. A different alpha is
            # folded into lora_up, so the loaded LoRA computes exactly what the file does.
            file_alpha = float(rank) if file_alpha is None else float(file_alpha.float())
            up = up.float() * (file_alpha / modules[0].lora_alpha[ADAPTER])
            rows = [module.lora_B[ADAPTER].weight.shape[0] for module in modules]
            if down.shape[1] != modules[0].lora_A[ADAPTER].weight.shape[1] or up.shape[0] != sum(rows):
                raise ModelFileError(f"{path}: {name} has shapes {tuple(down.shape)}/{tuple(up.shape)}, which do "
                                     "not fit this model; is the LoRA for a different FLUX model?")
            modules[0].lora_A[ADAPTER].weight.copy_(down.float())
            for module, part in zip(modules, torch.split(up, rows, dim=0)):
                module.lora_B[ADAPTER].weight.copy_(part)


def _file_layers(state: dict, transformer, path: Path) -> dict[str, tuple]:
    """kohya LoRA name -> (down, up, alpha or None), whatever the file's layout."""
    layers, leftover = {}, dict(state)

    def take(key):
        return leftover.pop(key, None)

    # kohya names: ours and sd-scripts'.
    for key in [k for k in state if k.startswith("lora_unet_") and k.endswith(".lora_down.weight")]:
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
        ups = [up.float() * ((rank if alpha is None else float(alpha)) / rank) for _, up, alpha in found]
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


def build_metadata(values: dict, *, epoch: int, steps: int, started_at: float,
                   finished_at: float | None = None, architecture: str = "flux-1-dev/lora") -> dict[str, str]:
    """sd-scripts' ss_* and modelspec.* metadata from a preset; every value a string."""
    def stamp(seconds):
        return str(int(seconds)) if seconds is not None else ""

    metadata = {option.metadata: _metadata_text(values[option.key]) for option in OPTIONS_TABLE if option.metadata}
    metadata.update({
        "ss_network_module": "networks.lora_flux",
        "ss_base_model_version": "flux1",
        "ss_optimizer": values["optimizer"] + (f"({values['optimizer_args']})" if values["optimizer_args"] else ""),
        "ss_epoch": str(epoch),
        "ss_steps": str(steps),
        "ss_training_started_at": stamp(started_at),
        "ss_training_finished_at": stamp(finished_at),
        "ss_resolution": f"({values['max_resolution']})",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": architecture,
        "modelspec.implementation": "https://github.com/black-forest-labs/flux",
        "modelspec.title": values["output_name"],
        "modelspec.date": datetime.fromtimestamp(finished_at or started_at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
        "modelspec.resolution": values["max_resolution"].replace(",", "x"),
    })
    return metadata


def _metadata_text(value) -> str:
    """sd-scripts writes str() of its argument: "True", "64", "64.0", "0.0001"."""
    return str(bool(value)) if isinstance(value, bool) else str(value)
