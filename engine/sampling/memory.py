"""GPU memory that sample images need on top of what training already holds.

While sampling, the training step's activations and the LoRA gradients are gone (gradients are
set to None after every optimizer step), the base weights, LoRA and optimizer state stay. What
comes on top is the larger of:
- the transformer's inference working set at the largest sample size: no autograd, so only the
  tensors of the block computing: a single block's fused projections (3 w q/k/v + 4 w MLP),
  its GELU, the concatenation (5 w) and the residual stream, about 16 w values per token;
- the VAE visiting the GPU to decode: its weights plus the decoder's widest full-resolution
  step (the third up block's 256 upsampled channels, their convolution and the last block's
  128 channels: about 768 values per output pixel).
These are derived from the layer shapes, not measured on a GPU; benchmarks/sampling.py measures
the CPU side and benchmarks/gpu_12gb.py is where a GPU check belongs.
"""

from __future__ import annotations

INFERENCE_VALUES_PER_TOKEN_PER_WIDTH = 16
DECODER_VALUES_PER_PIXEL = 768


def sampling_extra_bytes(values: dict, width: int, t5_tokens: int, compute_bytes: int, vae_bytes: int,
                         training_transient: int) -> int:
    """Bytes sampling adds beyond the training peak's `training_transient` (activations + LoRA
    gradients, which are free while sampling); 0 when the run samples nothing."""
    from engine.sampling.prompts import load_sample_prompts, sampling_enabled

    if not sampling_enabled(values):
        return 0
    prompts = load_sample_prompts(values)
    if not prompts:
        return 0
    pixels = max(prompt.width * prompt.height for prompt in prompts)
    tokens = pixels // 256 + t5_tokens
    transformer = tokens * INFERENCE_VALUES_PER_TOKEN_PER_WIDTH * width * compute_bytes
    decoder = (0 if values["highvram"] else vae_bytes) + pixels * DECODER_VALUES_PER_PIXEL * compute_bytes
    return max(0, max(transformer, decoder) - training_transient)
