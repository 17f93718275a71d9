"""One sample image from a FLUX transformer (fp8, block-swapped, with or without a LoRA) and
the VAE, by flow-matching Euler: diffusers' FlowMatchEulerDiscreteScheduler with FLUX's
resolution-dependent shift, the schedule FluxPipeline and sd-scripts both use."""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import torch
from PIL import Image

from engine.sampling.prompts import SamplePrompt
from engine.training import flow

LATENT_CHANNELS = 16


class SamplingStopped(Exception):
    """A stop request arrived while an image was being denoised."""


def scheduler_for(steps: int, image_tokens: int):
    """FLUX's schedule: sigmas 1 .. 1/steps, shifted by mu(image tokens), then 0."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    sigmas = np.linspace(1.0, 1.0 / steps, steps)
    scheduler.set_timesteps(sigmas=sigmas, mu=calculate_shift(image_tokens), device="cpu")
    return scheduler


def initial_noise(prompt: SamplePrompt) -> torch.Tensor:
    """Packed noise from the prompt's seed, drawn on the CPU so every device starts alike."""
    generator = torch.Generator().manual_seed(prompt.seed)
    latent_h, latent_w = prompt.height // 8, prompt.width // 8
    noise = torch.randn(1, LATENT_CHANNELS, latent_h, latent_w, generator=generator)
    return flow.pack_latents(noise)


@torch.no_grad()
def denoise(transformer, prompt: SamplePrompt, text: dict, negative: dict | None, *, device, dtype,
            t5_mask: bool = False, stop: threading.Event | None = None, on_step=None) -> torch.Tensor:
    """Packed latents after `prompt.steps` Euler steps. `text`/`negative`: pooled, t5, mask
    (negative only when cfg_scale != 1); `t5_mask` = apply_t5_attn_mask. `on_step(done, total)`
    after each step."""
    latents = initial_noise(prompt).to(device)
    scheduler = scheduler_for(prompt.steps, latents.shape[1])
    img_ids = flow.image_ids(prompt.height // 8, prompt.width // 8).to(device)
    guided = negative is not None and prompt.cfg_scale != 1.0
    conditions = [text, negative] if guided else [text]
    has_guidance = transformer.config.guidance_embeds
    for index, timestep in enumerate(scheduler.timesteps):
        if stop is not None and stop.is_set():
            raise SamplingStopped()
        sigma = (timestep / 1000.0).reshape(1).to(device, dtype)
        predictions = []
        for condition in conditions:
            t5 = condition["t5"].to(device, dtype)
            predictions.append(transformer(
                hidden_states=latents.to(dtype), encoder_hidden_states=t5,
                pooled_projections=condition["pooled"].to(device, dtype), timestep=sigma, img_ids=img_ids,
                txt_ids=torch.zeros(t5.shape[1], 3, device=device),
                guidance=torch.full((1,), prompt.guidance, device=device, dtype=dtype) if has_guidance else None,
                joint_attention_kwargs=_attention_mask(condition, latents.shape[1], device) if t5_mask else None,
            ).sample.float())
        prediction = predictions[0]
        if guided:
            prediction = predictions[1] + prompt.cfg_scale * (predictions[0] - predictions[1])
        latents = scheduler.step(prediction, timestep, latents, return_dict=False)[0]
        if on_step is not None:
            on_step(index + 1, prompt.steps)
    return latents


def _attention_mask(condition: dict, image_tokens: int, device) -> dict | None:
    """apply_t5_attn_mask: the T5 padding mask, extended over the image tokens."""
    mask = condition["mask"].to(device).bool().reshape(1, -1)
    full = torch.cat([mask, torch.ones(1, image_tokens, dtype=torch.bool, device=device)], dim=1)
    return {"attention_mask": full[:, None, None, :]}


@torch.no_grad()
def decode(vae, packed: torch.Tensor, width: int, height: int) -> Image.Image:
    """Packed latents -> an RGB image, with the VAE's own shift and scale undone."""
    latent_h, latent_w = height // 8, width // 8
    latents = unpack_latents(packed, latent_h, latent_w)
    latents = latents / vae.config.scaling_factor + vae.config.shift_factor
    parameter = next(vae.parameters())
    pixels = vae.decode(latents.to(parameter.device, parameter.dtype)).sample.float()
    pixels = ((pixels.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return Image.fromarray(pixels[0].permute(1, 2, 0).cpu().numpy())


def unpack_latents(packed: torch.Tensor, latent_height: int, latent_width: int) -> torch.Tensor:
    """b (h w) (c 2 2) -> b c (h 2) (w 2), the inverse of flow.pack_latents."""
    b, _, features = packed.shape
    c = features // 4
    rows, cols = latent_height // 2, latent_width // 2
    latents = packed.reshape(b, rows, cols, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return latents.reshape(b, c, rows * 2, cols * 2)


def visiting(model, device, keep: bool):
    """The VAE or an encoder on `device` only while it works, unless `keep` (highvram)."""
    if keep or torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    return _visit(model, device)


@contextlib.contextmanager
def _visit(model, device):
    model.to(device)
    try:
        yield
    finally:
        model.to("cpu")
        torch.cuda.empty_cache()
