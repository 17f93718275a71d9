"""FLUX's VAE from `ae.safetensors` (the original LDM key layout) into diffusers' AutoencoderKL."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.models.errors import ModelFileError
from engine.models.identify import describe
from engine.models.safetensors_header import read_header

EXPECTED = "the FLUX VAE, ae.safetensors"
# FLUX.1's latent normalisation (its ae config); latents = (z - shift) * scale.
FLUX_SCALING_FACTOR = 0.3611
FLUX_SHIFT_FACTOR = 0.1159


def infer_vae_config(shapes: dict[str, tuple[int, ...]], source: str) -> dict:
    if "encoder.conv_in.weight" not in shapes or "decoder.conv_out.weight" not in shapes:
        raise ModelFileError(f"{source}: this looks like {describe(shapes)}; expected {EXPECTED}")
    blocks = sorted({int(k.split(".")[2]) for k in shapes if k.startswith("encoder.down.")})
    channels = tuple(shapes[f"encoder.down.{i}.block.0.conv1.weight"][0] for i in blocks)
    per_block = len({k.split(".")[4] for k in shapes if k.startswith("encoder.down.0.block.")})
    latent = shapes["encoder.conv_out.weight"][0] // 2
    if latent != 16:
        raise ModelFileError(f"{source}: this looks like {describe(shapes)}; expected {EXPECTED} (16 latent channels)")
    return dict(
        in_channels=shapes["encoder.conv_in.weight"][1], out_channels=shapes["decoder.conv_out.weight"][0],
        latent_channels=latent, block_out_channels=channels, layers_per_block=per_block,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        norm_num_groups=32 if min(channels) % 32 == 0 else min(channels),
        use_quant_conv="quant_conv.weight" in shapes, use_post_quant_conv="post_quant_conv.weight" in shapes,
        scaling_factor=FLUX_SCALING_FACTOR, shift_factor=FLUX_SHIFT_FACTOR,
    )


def load_autoencoder(path: str | Path, dtype: torch.dtype = torch.float32):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    from safetensors.torch import load_file

    path = Path(path)
    header = read_header(path, EXPECTED)
    config = infer_vae_config(header.shapes(), str(path))
    checkpoint = load_file(str(path))  # the VAE is small (160 MB); diffusers converts it whole
    state = convert_ldm_vae_checkpoint(checkpoint, config)
    model = AutoencoderKL.from_config(config)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True)
    return model.to(dtype).eval().requires_grad_(False)
