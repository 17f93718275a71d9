"""FLUX flow-matching math as sd-scripts trains it: noise levels, latent packing, ids."""

from __future__ import annotations

import math

import torch


def sample_sigmas(mode: str, batch: int, generator: torch.Generator, *, shift: float, sigmoid_scale: float,
                  image_tokens: int) -> torch.Tensor:
    """Noise levels in [0, 1] for one batch."""
    if mode == "uniform":
        return torch.rand(batch, generator=generator)
    if mode == "sigma":
        # Uniform over the 1000 discrete levels of the shifted flow-matching schedule.
        index = torch.randint(0, 1000, (batch,), generator=generator)
        return _shift(1.0 - index.float() / 1000.0, shift)
    sigmas = torch.sigmoid(sigmoid_scale * torch.randn(batch, generator=generator))
    if mode == "sigmoid":
        return sigmas
    if mode == "shift":
        return _shift(sigmas, shift)
    if mode == "flux_shift":
        mu = _resolution_mu(image_tokens)
        return math.exp(mu) / (math.exp(mu) + (1.0 / sigmas - 1.0))
    raise ValueError(f"timestep_sampling: {mode!r} is not a sampling mode")


def _shift(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    return sigmas * shift / (1.0 + (shift - 1.0) * sigmas)


def _resolution_mu(image_tokens: int) -> float:
    """FLUX's resolution-dependent shift: 0.5 at 256 tokens, 1.15 at 4096, linear between."""
    slope = (1.15 - 0.5) / (4096 - 256)
    return 0.5 + slope * (image_tokens - 256)


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """b c (h 2) (w 2) -> b (h w) (c 2 2)"""
    b, c, h, w = latents.shape
    latents = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return latents.reshape(b, (h // 2) * (w // 2), c * 4)


def image_ids(latent_height: int, latent_width: int) -> torch.Tensor:
    """[0, row, col] per packed position."""
    rows, cols = latent_height // 2, latent_width // 2
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(cols)[None, :]
    return ids.reshape(rows * cols, 3)


def apply_prediction_type(kind: str, prediction: torch.Tensor, noisy: torch.Tensor,
                          sigmas: torch.Tensor) -> torch.Tensor:
    if kind == "raw":
        return prediction
    if kind == "additive":
        return prediction + noisy
    if kind == "sigma_scaled":
        return prediction * (-sigmas.view(-1, 1, 1)) + noisy
    raise ValueError(f"model_prediction_type: {kind!r} is not supported")
