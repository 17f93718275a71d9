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


def settle_memory() -> None:
    """At the start of a run, before it loads anything: free what earlier runs of this process left
    in reference cycles, then freeze what survives (the imported libraries, the page: ~0.5M objects)
    out of the cycle collector's view. free_memory() then scans only what runs make from here on; a
    full scan takes 0.5-0.8 s each time. Frozen objects are still freed when nothing refers to them."""
    gc.collect()
    gc.freeze()


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def encoder_dtype(device: torch.device) -> torch.dtype:
    """Frozen encoders compute in bf16 on a GPU and in float32 on the CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def make_accelerator(cpu: bool, precision: str):
    """accelerate for one run. Autocast's cast cache is off: it would keep a bf16 copy of every
    LoRA weight from the first forward use to the end of the backward pass (0.57 GiB at rank
    64 on FLUX.1-dev, measured by benchmarks/memory_plan.py); without it each use casts again,
    and the checkpoint recompute keeps only the copies of the block being recomputed."""
    from accelerate import Accelerator
    from accelerate.utils import AutocastKwargs

    return Accelerator(cpu=cpu, mixed_precision=precision, kwargs_handlers=[AutocastKwargs(cache_enabled=False)])
