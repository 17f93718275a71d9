"""Where the encoders live during a run: on the GPU, or in RAM visiting the GPU per batch."""

from __future__ import annotations

import contextlib
import gc

import torch


class EncoderPlacement:
    def __init__(self, device: torch.device, highvram: bool):
        self.device = device
        # Without highvram an encoder that is still needed lives in RAM and visits the GPU per batch.
        self.visits = device.type == "cuda" and not highvram

    @property
    def parking(self) -> torch.device | str:
        return "cpu" if self.visits else self.device

    @contextlib.contextmanager
    def visiting(self, model):
        if not self.visits:
            yield
            return
        model.to(self.device)
        try:
            yield
        finally:
            model.to("cpu")


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def encoder_dtype(device: torch.device) -> torch.dtype:
    """Frozen encoders compute in bf16 on a GPU and in float32 on the CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32
