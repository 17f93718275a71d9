"""The tensor names and shapes of a FLUX transformer single file in Black Forest Labs' layout, for
any architecture (engine.models.flux.FluxArchitecture). The benchmarks write full-width files
from it; tests write theirs from real diffusers models (tests/fixtures/models.py)."""

from __future__ import annotations


def bfl_shapes(arch) -> dict[str, tuple[int, ...]]:
    w, mlp, h = arch.width, arch.mlp_hidden, arch.head_dim
    shapes = {"img_in.weight": (w, arch.in_channels), "img_in.bias": (w,),
              "txt_in.weight": (w, arch.context_dim), "txt_in.bias": (w,),
              "final_layer.linear.weight": (arch.in_channels, w), "final_layer.linear.bias": (arch.in_channels,),
              "final_layer.adaLN_modulation.1.weight": (2 * w, w), "final_layer.adaLN_modulation.1.bias": (2 * w,)}
    embedders = [("time_in", 256), ("vector_in", arch.pooled_dim)] + ([("guidance_in", 256)] if arch.has_guidance else [])
    for name, fan_in in embedders:
        shapes.update({f"{name}.in_layer.weight": (w, fan_in), f"{name}.in_layer.bias": (w,),
                       f"{name}.out_layer.weight": (w, w), f"{name}.out_layer.bias": (w,)})
    for i in range(arch.num_double):
        for stream in ("img", "txt"):
            b = f"double_blocks.{i}.{stream}_"
            shapes.update({b + "mod.lin.weight": (6 * w, w), b + "mod.lin.bias": (6 * w,),
                           b + "attn.qkv.weight": (3 * w, w), b + "attn.qkv.bias": (3 * w,),
                           b + "attn.norm.query_norm.scale": (h,), b + "attn.norm.key_norm.scale": (h,),
                           b + "attn.proj.weight": (w, w), b + "attn.proj.bias": (w,),
                           b + "mlp.0.weight": (mlp, w), b + "mlp.0.bias": (mlp,),
                           b + "mlp.2.weight": (w, mlp), b + "mlp.2.bias": (w,)})
    for i in range(arch.num_single):
        b = f"single_blocks.{i}."
        shapes.update({b + "linear1.weight": (3 * w + mlp, w), b + "linear1.bias": (3 * w + mlp,),
                       b + "linear2.weight": (w, w + mlp), b + "linear2.bias": (w,),
                       b + "modulation.lin.weight": (3 * w, w), b + "modulation.lin.bias": (3 * w,),
                       b + "norm.query_norm.scale": (h,), b + "norm.key_norm.scale": (h,)})
    return shapes
