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
            handle.write(tensor.view(torch.uint8).numpy().tobytes() if tensor.ndim else
                         tensor.reshape(1).view(torch.uint8).numpy().tobytes())


def load_lora(transformer, path: str | Path) -> None:
    """Load a LoRA file into the adapters so they compute exactly what the file does:
    ours/sd-scripts' kohya layout, or the diffusers/peft layout (`transformer.…lora_A.weight`)."""
    from safetensors.torch import load_file

    from engine.models.safetensors_header import read_header

    path = Path(path)
    header = read_header(path, "a FLUX.1 LoRA file")
    names = list(header.tensors)
    if any(name.startswith("lora_unet_") for name in names):
        state = load_file(str(path))
    elif any(".lora_A." in name or ".lora_B." in name for name in names):
        state = _peft_to_kohya(load_file(str(path)), transformer, path)
    else:
        raise ModelFileError(f"{path}: not a FLUX.1 LoRA (no lora_unet_* or lora_A/lora_B tensors)")
    modules_by_name = _lora_modules(transformer)
    unknown = sorted({key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0]
                      for key in state} - set(modules_by_name))
    if unknown:
        raise ModelFileError(f"{path}: has layers this model lacks or does not train ({unknown[:3]}); "
                             "is it a LoRA for FLUX.1 with the same train_blocks?")
    with torch.no_grad():
        for name, modules in modules_by_name.items():
            if f"{name}.lora_down.weight" not in state:
                raise ModelFileError(f"{path}: missing {name}; the LoRA was trained on other blocks")
            down = state[f"{name}.lora_down.weight"]
            up = state[f"{name}.lora_up.weight"]
            rank = modules[0].r[ADAPTER]
            if down.shape[0] != rank:
                raise ModelFileError(f"{path}: rank {down.shape[0]}, but network_dim is {rank}; set network_dim "
                                     f"to {down.shape[0]} to continue from this LoRA")
            # Without an alpha (diffusers convention) the scale is 1. A different alpha is
            # folded into lora_up, so the loaded LoRA computes exactly what the file does.
            file_alpha = float(state[f"{name}.alpha"].float()) if f"{name}.alpha" in state else float(rank)
            up = up.float() * (file_alpha / modules[0].lora_alpha[ADAPTER])
            modules[0].lora_A[ADAPTER].weight.copy_(down.float())
            rows = [module.lora_B[ADAPTER].weight.shape[0] for module in modules]
            for module, part in zip(modules, torch.split(up.float(), rows, dim=0)):
                module.lora_B[ADAPTER].weight.copy_(part)


def _peft_to_kohya(state: dict, transformer, path: Path) -> dict:
    """diffusers/peft layout -> kohya layout; fused layers need one shared lora_A."""
    state = {key.removeprefix("transformer."): value for key, value in state.items()}
    out = {}
    for name, paths in transformer._fluxlora_layers.items():
        downs = [state.get(f"{p}.lora_A.weight") for p in paths]
        ups = [state.get(f"{p}.lora_B.weight") for p in paths]
        if all(d is None for d in downs):
            continue
        if any(d is None for d in downs) or any(u is None for u in ups):
            raise ModelFileError(f"{path}: {paths[0]} has a LoRA but its fused partners do not")
        if any(not torch.equal(d, downs[0]) for d in downs[1:]):
            raise ModelFileError(f"{path}: {', '.join(paths)} have different lora_A matrices; FluxLoRA trains "
                                 "them as one fused layer (as sd-scripts does) and cannot continue from this file")
        out[f"{name}.lora_down.weight"] = downs[0]
        out[f"{name}.lora_up.weight"] = torch.cat(ups, dim=0)
        alpha_key = f"{paths[0]}.alpha"
        if alpha_key in state:
            out[f"{name}.alpha"] = state[alpha_key]
    return out


def build_metadata(values: dict, *, epoch: int, steps: int, started_at: float,
                   finished_at: float | None = None, architecture: str = "flux-1-dev/lora") -> dict[str, str]:
    """sd-scripts' ss_* and modelspec.* metadata from a preset; every value a string."""
    def stamp(seconds):
        return str(int(seconds)) if seconds is not None else ""

    metadata = {
        "ss_network_module": "networks.lora_flux",
        "ss_network_dim": str(values["network_dim"]),
        "ss_network_alpha": _number(values["network_alpha"]),
        "ss_base_model_version": "flux1",
        "ss_output_name": values["output_name"],
        "ss_learning_rate": _number(values["learning_rate"]),
        "ss_unet_lr": _number(values["unet_lr"]),
        "ss_optimizer": values["optimizer"] + (f"({values['optimizer_args']})" if values["optimizer_args"] else ""),
        "ss_lr_scheduler": values["lr_scheduler"],
        "ss_num_epochs": str(values["epoch"]),
        "ss_epoch": str(epoch),
        "ss_steps": str(steps),
        "ss_max_train_steps": str(values["max_train_steps"]),
        "ss_training_started_at": stamp(started_at),
        "ss_training_finished_at": stamp(finished_at),
        "ss_seed": str(values["seed"]),
        "ss_mixed_precision": values["mixed_precision"],
        "ss_fp8_base": str(bool(values["fp8_base"])),
        "ss_fp8_base_unet": str(bool(values["fp8_base_unet"])),
        "ss_guidance_scale": _number(values["guidance_scale"]),
        "ss_timestep_sampling": values["timestep_sampling"],
        "ss_discrete_flow_shift": _number(values["discrete_flow_shift"]),
        "ss_model_prediction_type": values["model_prediction_type"],
        "ss_resolution": f"({values['max_resolution']})",
        "ss_train_blocks": values["train_blocks"],
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": architecture,
        "modelspec.implementation": "https://github.com/black-forest-labs/flux",
        "modelspec.title": values["output_name"],
        "modelspec.date": datetime.fromtimestamp(finished_at or started_at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
        "modelspec.resolution": values["max_resolution"].replace(",", "x"),
    }
    return metadata


def _number(value) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)
