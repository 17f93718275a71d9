"""The device memory of one training step as a timeline, block by block (used by engine.vram).

Each moment is a breakdown (label -> bytes) of what is alive on the GPU; a phase's peak is
its largest moment. The moments follow the code: `load_transformer_with_lora` places the
model, the forward runs the blocks in order (with gradient checkpointing each keeps only its
input; `engine.offload.BlockSwapper` streams a swapped block in and prefetches the next), the
backward recomputes them in reverse (a block's saved tensors, its fp8 weights' compute copies
and its gradient working set alive together, the LoRA gradients of the blocks behind it
already accumulated), then the optimizer step and the LoRA save (gradients freed by
`zero_grad(set_to_none=True)`). benchmarks/memory_plan.py measures the same phases on the real
code at full size under fake tensors; the constants here are per token and per block.
"""

from __future__ import annotations

PHASES = ("model placed", "forward", "backward", "optimizer step", "LoRA save")
# x width x compute bytes per token: a block's transient intermediates in the forward (checkpointed:
# nothing is kept, but norms and RoPE work in float32 and the fused projections are wide),
# measured by benchmarks/memory_plan.py on full-width blocks at 768 and 1024 pixels.
FORWARD_WORKING = 28
BACKWARD_WORKING = 8  # ditto for its backward (the widest gradient and the block output's)


def timeline(blocks: list[dict], rest: int, lora_bytes: int, state: int, encoders: int,
             tokens: int, width: int, compute: int, checkpointing: bool,
             extra: dict[str, int] | None = None, linear_copy: int = 0) -> dict[str, dict[str, int]]:
    """Peak breakdown per phase. `blocks` in forward order, each with: stored (bytes as stored),
    swapped (bool), cast (bytes of compute copies of its fp8 weights), lora (LoRA parameters),
    saved (bytes autograd saves in it without checkpointing). `extra`: parts on the GPU all
    step long (a trained CLIP-L with its LoRA). `linear_copy`: the compute copy of the largest fp8
    Linear weight (0 without fp8)."""
    resident = rest + sum(b["stored"] for b in blocks if not b["swapped"])
    lora_weights = sum(b["lora"] for b in blocks) * lora_bytes
    unit = tokens * width * compute  # one block input or output

    def moment(streamed=0, cast=0, grads=0, activations=0) -> dict[str, int]:
        return {"base weights resident": resident, "streamed blocks": streamed, "compute copies of fp8 weights": cast,
                "LoRA weights + gradients": lora_weights + grads, "optimizer state": state,
                "activations": activations, **(extra or {}), "text encoders + VAE": encoders}

    def streamed(*indices) -> int:
        return sum(blocks[i]["stored"] for i in indices if 0 <= i < len(blocks) and blocks[i]["swapped"])

    placed = moment()
    forward, backward = [], []
    for i, block in enumerate(blocks):
        if checkpointing:
            kept = (i + 1) * unit
            # Nothing is saved, so a layer's compute copy lives only while that layer runs.
            forward.append(moment(streamed(i, i + 1), linear_copy, 0, kept + FORWARD_WORKING * unit))
        else:
            done = blocks[:i + 1]
            forward.append(moment(streamed(*range(i + 2)), sum(b["cast"] for b in done), 0,
                                  sum(b["saved"] for b in done) + FORWARD_WORKING * unit))
    for i in reversed(range(len(blocks))):
        grads = sum(b["lora"] for b in blocks[i:]) * lora_bytes
        if checkpointing:
            activations = (i + 1) * unit + blocks[i]["saved"] + BACKWARD_WORKING * unit
            backward.append(moment(streamed(i, i - 1), blocks[i]["cast"], grads, activations))
        else:
            alive = blocks[:i + 1]
            backward.append(moment(streamed(*range(i + 1)), sum(b["cast"] for b in alive), grads,
                                   sum(b["saved"] for b in alive) + BACKWARD_WORKING * unit))
    step = moment(grads=lora_weights)
    return {"model placed": placed, "forward": max(forward, key=_total), "backward": max(backward, key=_total),
            "optimizer step": step, "LoRA save": placed}


def _total(breakdown: dict[str, int]) -> int:
    return sum(breakdown.values())
