"""The FLUX.1 transformer from a single file in Black Forest Labs' key layout.

diffusers' own converter hard-codes the width 3072 when it splits single-block `linear1`, so
the architecture is inferred here from tensor shapes and the keys are mapped by our own table
(`_block_rules`). Tensors are read one at a time straight into their target dtype, so loading
never holds two copies of the weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.models.errors import ModelFileError
from engine.models.identify import describe
from engine.models.safetensors_header import read_header, read_tensor_into

PREFIX = "model.diffusion_model."
EXPECTED = "a FLUX.1 transformer such as flux1-dev.safetensors"
MLP_RATIO = 4  # diffusers' FluxTransformer2DModel has no setting for another ratio


@dataclass(frozen=True)
class FluxArchitecture:
    width: int
    num_heads: int
    head_dim: int
    num_double: int
    num_single: int
    mlp_hidden: int
    in_channels: int
    context_dim: int  # T5 width
    pooled_dim: int  # CLIP-L pooled width
    has_guidance: bool

    def diffusers_config(self) -> dict:
        axis = 2 * round(self.head_dim * 56 / 256)  # FLUX: (16, 56, 56) for head size 128
        return dict(
            patch_size=1, in_channels=self.in_channels, num_layers=self.num_double,
            num_single_layers=self.num_single, attention_head_dim=self.head_dim,
            num_attention_heads=self.num_heads, joint_attention_dim=self.context_dim,
            pooled_projection_dim=self.pooled_dim, guidance_embeds=self.has_guidance,
            axes_dims_rope=(self.head_dim - 2 * axis, axis, axis),
        )


# Modules that stay in the compute dtype under fp8 base: the RMS norms of q and k, the input
# embedders and the final layer (together about 0.5% of FLUX.1's weights). Everything else, the
# block Linears including their modulation, is fp8 as in sd-scripts. diffusers' own
# `enable_layerwise_casting` would also keep every `norm1.linear` wide (its "norm" pattern
# matches the modulation Linears): a third of each double block, ~3 GB more for FLUX.1-dev.
KEEP_WIDE_IN_FP8 = (r"^x_embedder$", r"^context_embedder$", r"^time_text_embed", r"^norm_out", r"^proj_out$",
                    r"\.norm_(q|k|added_q|added_k)$")

# Real FLUX.1 files, for estimates when no file is at hand.
FLUX1_DEV = FluxArchitecture(3072, 24, 128, 19, 38, 12288, 64, 4096, 768, True)
FLUX1_SCHNELL = FluxArchitecture(3072, 24, 128, 19, 38, 12288, 64, 4096, 768, False)
NAMED_ARCHITECTURES = {"flux1-dev": FLUX1_DEV, "flux1-schnell": FLUX1_SCHNELL}


def strip_prefix(shapes: dict) -> dict:
    return {(k[len(PREFIX):] if k.startswith(PREFIX) else k): v for k, v in shapes.items()}


def infer_flux_architecture(shapes: dict[str, tuple[int, ...]], source: str = "file") -> FluxArchitecture:
    shapes = strip_prefix(shapes)
    if "double_blocks.0.img_attn.qkv.weight" not in shapes or "img_in.weight" not in shapes:
        raise ModelFileError(f"{source}: this looks like {describe(shapes)}; expected {EXPECTED}")
    width, in_channels = shapes["img_in.weight"]
    head_dim = shapes["double_blocks.0.img_attn.norm.query_norm.scale"][0]
    mlp_hidden = shapes["double_blocks.0.img_mlp.0.weight"][0]
    if mlp_hidden != MLP_RATIO * width:
        raise ModelFileError(f"{source}: MLP width {mlp_hidden} is not 4 x {width}; only FLUX.1-style models load")
    return FluxArchitecture(
        width=width, num_heads=width // head_dim, head_dim=head_dim,
        num_double=_count_blocks(shapes, "double_blocks."), num_single=_count_blocks(shapes, "single_blocks."),
        mlp_hidden=mlp_hidden, in_channels=in_channels, context_dim=shapes["txt_in.weight"][1],
        pooled_dim=shapes["vector_in.in_layer.weight"][1],
        has_guidance="guidance_in.in_layer.weight" in shapes,
    )


def _count_blocks(shapes: dict, prefix: str) -> int:
    return len({key.split(".")[1] for key in shapes if key.startswith(prefix)})


def _block_rules(arch: FluxArchitecture) -> list[tuple[re.Pattern, object]]:
    """(BFL name regex, target) pairs. A target is a diffusers name template, or a tuple of
    (template, ...) to split the tensor along dim 0 into `sizes`."""
    w, mlp = arch.width, arch.mlp_hidden
    d, s = r"double_blocks\.(\d+)\.", r"single_blocks\.(\d+)\."
    t, st = "transformer_blocks.{0}.", "single_transformer_blocks.{0}."
    rules = {
        r"time_in\.in_layer\.(weight|bias)": "time_text_embed.timestep_embedder.linear_1.{p}",
        r"time_in\.out_layer\.(weight|bias)": "time_text_embed.timestep_embedder.linear_2.{p}",
        r"vector_in\.in_layer\.(weight|bias)": "time_text_embed.text_embedder.linear_1.{p}",
        r"vector_in\.out_layer\.(weight|bias)": "time_text_embed.text_embedder.linear_2.{p}",
        r"guidance_in\.in_layer\.(weight|bias)": "time_text_embed.guidance_embedder.linear_1.{p}",
        r"guidance_in\.out_layer\.(weight|bias)": "time_text_embed.guidance_embedder.linear_2.{p}",
        r"txt_in\.(weight|bias)": "context_embedder.{p}",
        r"img_in\.(weight|bias)": "x_embedder.{p}",
        r"final_layer\.linear\.(weight|bias)": "proj_out.{p}",
        r"final_layer\.adaLN_modulation\.1\.(weight|bias)": ("swap", "norm_out.linear.{p}"),
        d + r"img_mod\.lin\.(weight|bias)": t + "norm1.linear.{p}",
        d + r"txt_mod\.lin\.(weight|bias)": t + "norm1_context.linear.{p}",
        d + r"img_attn\.qkv\.(weight|bias)": ((w, w, w), t + "attn.to_q.{p}", t + "attn.to_k.{p}", t + "attn.to_v.{p}"),
        d + r"txt_attn\.qkv\.(weight|bias)": ((w, w, w), t + "attn.add_q_proj.{p}", t + "attn.add_k_proj.{p}", t + "attn.add_v_proj.{p}"),
        d + r"img_attn\.norm\.query_norm\.(scale)": t + "attn.norm_q.weight",
        d + r"img_attn\.norm\.key_norm\.(scale)": t + "attn.norm_k.weight",
        d + r"txt_attn\.norm\.query_norm\.(scale)": t + "attn.norm_added_q.weight",
        d + r"txt_attn\.norm\.key_norm\.(scale)": t + "attn.norm_added_k.weight",
        d + r"img_mlp\.0\.(weight|bias)": t + "ff.net.0.proj.{p}",
        d + r"img_mlp\.2\.(weight|bias)": t + "ff.net.2.{p}",
        d + r"txt_mlp\.0\.(weight|bias)": t + "ff_context.net.0.proj.{p}",
        d + r"txt_mlp\.2\.(weight|bias)": t + "ff_context.net.2.{p}",
        d + r"img_attn\.proj\.(weight|bias)": t + "attn.to_out.0.{p}",
        d + r"txt_attn\.proj\.(weight|bias)": t + "attn.to_add_out.{p}",
        s + r"modulation\.lin\.(weight|bias)": st + "norm.linear.{p}",
        s + r"linear1\.(weight|bias)": ((w, w, w, mlp), st + "attn.to_q.{p}", st + "attn.to_k.{p}", st + "attn.to_v.{p}", st + "proj_mlp.{p}"),
        s + r"linear2\.(weight|bias)": st + "proj_out.{p}",
        s + r"norm\.query_norm\.(scale)": st + "attn.norm_q.weight",
        s + r"norm\.key_norm\.(scale)": st + "attn.norm_k.weight",
    }
    return [(re.compile(pattern + "$"), target) for pattern, target in rules.items()]


def map_key(name: str, rules) -> tuple[object, tuple[str, ...]] | None:
    """For one BFL tensor name: (how, diffusers names). how is None, "swap" or split sizes."""
    for pattern, target in rules:
        match = pattern.match(name)
        if not match:
            continue
        *index, part = match.groups()
        fill = lambda template: template.format(*index, p=part)  # noqa: E731
        if isinstance(target, str):
            return None, (fill(target),)
        how, *templates = target
        return how, tuple(fill(template) for template in templates)
    return None


def convert_tensor(how, tensor: torch.Tensor) -> list[torch.Tensor]:
    if how is None:
        return [tensor]
    if how == "swap":  # BFL stores (shift, scale); diffusers' AdaLayerNormContinuous wants (scale, shift)
        shift, scale = tensor.chunk(2, dim=0)
        return [torch.cat([scale, shift], dim=0)]
    return list(torch.split(tensor, how, dim=0))


# diffusers' own FLUX skip list ("norm") would also keep the AdaLN modulation Linears
# (norm1.linear, norm1_context.linear, norm.linear) 16-bit: 3.2 GB of FLUX.1-dev, which decides
# whether a 12 GB card fits. sd-scripts' fp8 base stores them in fp8 too; so do we. The pattern is
# matched against each module name on the way down, so it must let the AdaLN parents through.
def apply_fp8_storage(model, compute_dtype: torch.dtype) -> None:
    """Layer-wise casting: Linear weights live in float8_e4m3fn and compute in `compute_dtype`."""
    from diffusers.hooks import apply_layerwise_casting

    apply_layerwise_casting(model, torch.float8_e4m3fn, compute_dtype, skip_modules_pattern=KEEP_WIDE_IN_FP8)


def load_flux_transformer(path: str | Path, *, fp8: bool = False, compute_dtype: torch.dtype = torch.bfloat16,
                          device="cpu"):
    """Build diffusers' FluxTransformer2DModel from a BFL single file, fully offline.

    device: where the tensors go, or a function of the diffusers parameter name giving that
    (engine.offload.swap_placement: swapped blocks in RAM, the rest on the GPU).
    fp8: every Linear layer inside the blocks (attention, MLP and modulation) is stored as
    float8_e4m3fn and computed in `compute_dtype` (diffusers layer-wise casting); the q/k norms,
    the input embedders and the final layer keep `compute_dtype` (see KEEP_WIDE_IN_FP8).
    """
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from diffusers import FluxTransformer2DModel
    path = Path(path)
    header = read_header(path, EXPECTED)
    arch = infer_flux_architecture(header.shapes(), source=str(path))
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    # The empty model is made of meta tensors even in a full-size memory plan under fake
    # tensors (benchmarks/memory_plan.py), where the tensors read below are fake.
    with unset_fake_temporarily(), init_empty_weights():
        model = FluxTransformer2DModel.from_config(arch.diffusers_config())
        if fp8:
            # On the meta model this only records the storage dtype per parameter, so each
            # tensor below is read straight into the dtype it will live in.
            apply_fp8_storage(model, compute_dtype)
    targets = dict(model.named_parameters())
    rules = _block_rules(arch)
    loaded, unused = set(), []
    # An all-in-one checkpoint keeps the transformer under the prefix, the VAE and text
    # encoders beside it; those are loaded from their own files.
    prefixed = any(name.startswith(PREFIX) for name in header.tensors)
    if "scaled_fp8" in strip_prefix(header.shapes()):
        raise ModelFileError(f"{path}: a 'scaled fp8' checkpoint (weights stored divided by a scale) is not "
                             "supported; use the bf16 flux1-dev.safetensors or a plain float8_e4m3fn file")
    with open(path, "rb", buffering=0) as handle:
        for name, info in header.tensors.items():
            if prefixed and not name.startswith(PREFIX):
                continue
            short = name[len(PREFIX):] if name.startswith(PREFIX) else name
            mapping = map_key(short, rules)
            if mapping is None:
                unused.append(name)
                continue
            how, new_names = mapping
            parts = [targets[new_name] for new_name in new_names]
            rows = sum(part.shape[0] for part in parts) if isinstance(how, tuple) else parts[0].shape[0]
            if tuple(info.shape) != (rows, *parts[0].shape[1:]) or (how == "swap" and rows % 2):
                raise ModelFileError(f"{path}: {name} has shape {tuple(info.shape)}, not what FLUX.1 expects")
            dtype = torch.float8_e4m3fn if parts[0].dtype == torch.float8_e4m3fn else compute_dtype
            # Straight into the dtype it will live in; fused layers are split into views.
            tensor = torch.empty(info.shape, dtype=dtype)
            read_tensor_into(handle, path, header, name, tensor)
            for new_name, part in zip(new_names, convert_tensor(how, tensor)):
                target = device(new_name) if callable(device) else device
                set_module_tensor_to_device(model, new_name, target, value=part, dtype=dtype)
                loaded.add(new_name)
            del tensor
    missing = sorted(set(targets) - loaded)
    if missing or unused:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unused[:3]}"
        raise ModelFileError(f"{path}: not a complete FLUX.1 transformer ({detail}); expected {EXPECTED}")
    model.eval().requires_grad_(False)
    return model
