"""LoRA files from sd-scripts with a rank per layer type (`img_attn_dim=...`) or LoRAs on the input
layers (`in_dims`): the layers and ranks come from the file, as sd-scripts does with
`dim_from_weights`, so such a file loads as `network_weights` or a state to continue from.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from engine.models.errors import ModelFileError
from engine.models.safetensors_header import read_header

# sd-scripts' in_dims layers (BFL names) -> diffusers module paths.
INPUT_LAYERS = {
    "lora_unet_img_in": "x_embedder",
    "lora_unet_txt_in": "context_embedder",
    "lora_unet_time_in_in_layer": "time_text_embed.timestep_embedder.linear_1",
    "lora_unet_time_in_out_layer": "time_text_embed.timestep_embedder.linear_2",
    "lora_unet_vector_in_in_layer": "time_text_embed.text_embedder.linear_1",
    "lora_unet_vector_in_out_layer": "time_text_embed.text_embedder.linear_2",
    "lora_unet_guidance_in_in_layer": "time_text_embed.guidance_embedder.linear_1",
    "lora_unet_guidance_in_out_layer": "time_text_embed.guidance_embedder.linear_2",
}
_TYPES = (("img_attn", "img_attn"), ("txt_attn", "txt_attn"), ("img_mlp", "img_mlp"), ("txt_mlp", "txt_mlp"),
          ("img_mod", "img_mod"), ("txt_mod", "txt_mod"), ("single_mod", "modulation"), ("single", "single_blocks"),
          ("in", "_in"))


@dataclass(frozen=True)
class LayerRanks:
    source: Path
    ranks: dict[str, tuple[int, float | None]]  # kohya layer name -> (rank, alpha or None)


def per_layer_ranks(path: str | Path) -> LayerRanks | None:
    """The file's layers and ranks when they differ between layers or it has input-layer LoRAs;
    None for an ordinary file (one rank everywhere), which loads as before."""
    from safetensors import safe_open

    path = Path(path)
    header = read_header(path, "a FLUX.1 LoRA file")
    ranks = {name.removesuffix(".lora_down.weight"): info.shape[0] for name, info in header.tensors.items()
             if name.startswith("lora_unet_") and name.endswith(".lora_down.weight") and len(info.shape) == 2}
    inputs = [name for name in ranks if name in INPUT_LAYERS]
    if not ranks or (len(set(ranks.values())) == 1 and not inputs):
        return None
    with safe_open(str(path), "pt") as handle:
        keys = set(handle.keys())
        alphas = {name: float(handle.get_tensor(f"{name}.alpha").float()) if f"{name}.alpha" in keys else None
                  for name in ranks}
    return LayerRanks(path, {name: (rank, alphas[name]) for name, rank in ranks.items()})


def describe_ranks(layer_ranks: LayerRanks) -> str:
    """'img_attn 8, txt_attn 4, single 16, in 4': the ranks by sd-scripts' layer types, for the log."""
    by_type: dict[str, Counter] = {}
    for name, (rank, _) in layer_ranks.ranks.items():
        kind = next((label for label, part in _TYPES if part in name), "other")
        by_type.setdefault(kind, Counter())[rank] += 1
    return ", ".join(f"{kind} {'/'.join(str(r) for r in sorted(counts))}" for kind, counts in by_type.items())


def check_ranks_fit(layer_ranks: LayerRanks, layers: dict) -> None:
    missing = sorted(set(layer_ranks.ranks) - set(layers))
    if missing:
        raise ModelFileError(f"{layer_ranks.source}: has LoRA layers this model lacks or train_blocks leaves out "
                             f"({missing[:3]}); "
                             "set train_blocks to all, or use a LoRA made for this FLUX model")


def file_layers(transformer, layers: dict, layer_ranks: LayerRanks) -> dict:
    """The file's layers (kohya name -> module paths), input layers included."""
    modules = dict(transformer.named_modules())
    layers = {**layers, **{name: (path,) for name, path in INPUT_LAYERS.items() if path in modules}}
    check_ranks_fit(layer_ranks, layers)
    return {name: paths for name, paths in layers.items() if name in layer_ranks.ranks}
