"""A LoRA on CLIP-L, as sd-scripts trains it when the text encoder learning rate is not 0.

Layers: every encoder layer's self_attn q/k/v/out_proj and mlp fc1/fc2, named
`lora_te1_text_model_encoder_layers_{i}_{self_attn_q_proj|...|mlp_fc2}` (ComfyUI applies them
with the LoRA loader's strength_clip). The tensors are saved, loaded and counted by
engine.models.lora, which treats the CLIP-L model as one more part of the LoRA.
"""

from __future__ import annotations

import torch

from engine.models.lora import ADAPTER, effective_alpha, lora_parameters

CLIP_PREFIX = "lora_te1_"
CLIP_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


def clip_lora_layers(clip) -> dict[str, tuple[str]]:
    """kohya LoRA name -> the CLIPTextModel module it covers."""
    # transformers 5 dropped the `text_model.` level of CLIPTextModel; kohya's names keep it.
    nested = hasattr(clip, "text_model")
    encoder = clip.text_model.encoder if nested else clip.encoder
    layers = {}
    for index in range(len(encoder.layers)):
        for target in CLIP_TARGETS:
            name = f"text_model.encoder.layers.{index}.{target}"
            layers[CLIP_PREFIX + name.replace(".", "_")] = (name if nested else name.removeprefix("text_model."),)
    return layers


def add_clip_lora(clip, rank: int, alpha: float) -> list[torch.nn.Parameter]:
    """Attach fp32 LoRA adapters (peft) to CLIP-L; returns the trainable parameters. The base
    weights stay frozen in their own dtype."""
    from peft import LoraConfig, inject_adapter_in_model

    layers = clip_lora_layers(clip)
    config = LoraConfig(r=rank, lora_alpha=effective_alpha(alpha, rank), init_lora_weights=True,
                        target_modules=[paths[0] for paths in layers.values()])
    clip.requires_grad_(False)
    inject_adapter_in_model(config, clip, adapter_name=ADAPTER)
    clip._fluxlora_layers = layers
    modules = dict(clip.named_modules())
    for (path,) in layers.values():
        modules[path].lora_A[ADAPTER].float()
        modules[path].lora_B[ADAPTER].float()
    params = lora_parameters(clip)
    for parameter in params:
        parameter.requires_grad_(True)
    return params
