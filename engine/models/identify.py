"""Say what a checkpoint looks like from its tensor names, for errors about wrong files."""

from __future__ import annotations


def kind(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """"flux", "vae", "clip", "t5", "lora" or None: which model field a file belongs in."""
    text = describe(shapes)
    for word, name in (("LoRA", "lora"), ("FLUX.1 transformer", "flux"), ("FLUX VAE", "vae"),
                       ("CLIP text", "clip"), ("T5 text", "t5")):
        if word in text:
            return name
    return None


def describe(shapes: dict[str, tuple[int, ...]]) -> str:
    names = list(shapes)

    def has(fragment: str) -> bool:
        return any(fragment in name for name in names)

    if has("lora_down") or has("lora_A") or has("lora_up") or has("lora_B"):
        return "a LoRA, not a base model"
    if has("double_blocks.") and has("single_blocks."):
        return "a FLUX.1 transformer"
    if has("conditioner.embedders"):
        return "an SDXL checkpoint"
    if has("model.diffusion_model.input_blocks") or has("cond_stage_model."):
        return "a Stable Diffusion 1.x/2.x checkpoint"
    if has("encoder.down.") and has("decoder.up."):
        latent = next((shape[0] // 2 for name, shape in shapes.items()
                       if name.endswith("encoder.conv_out.weight")), None)
        return "the FLUX VAE (ae.safetensors)" if latent == 16 else f"a VAE with {latent} latent channels"
    if has("text_model.encoder.layers."):
        return "a CLIP text encoder"
    if has("encoder.block.") and has("shared.weight"):
        return "a T5 text encoder"
    if has("encoder.block."):
        return "a T5 text encoder"
    return f"an unknown model ({len(names)} tensors, e.g. {names[0] if names else 'none'})"
