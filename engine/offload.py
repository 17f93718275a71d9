"""`blocks_to_swap`: keep the frozen base weights of some transformer blocks in system RAM and
copy them to the GPU just before each use (forward, checkpoint recompute), prefetching the
next block on a side CUDA stream so the copy overlaps the current block's compute.

Our own hooks rather than diffusers' group offloading: group offloading moves every parameter
of a block, the trainable LoRA weights included, so their gradients and optimizer state would
end up on a different device than the weights. Here only frozen base tensors move; LoRA
parameters stay on the GPU. A weight that autograd saved for the backward pass stays alive
through that reference alone, so correctness never depends on the copy still being present.
"""

from __future__ import annotations

import torch
import torch.utils.checkpoint


class BlockSwapper:
    def __init__(self, transformer, count: int, device: torch.device, trace: list | None = None):
        blocks = list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks)
        count = min(count, len(blocks) - 1)
        self.device = torch.device(device)
        self.order = blocks  # forward order
        self.swapped = blocks[len(blocks) - count:] if count else []  # like sd-scripts: the last blocks
        self.trace = trace  # (event, block index) pairs, for tests and debugging
        self.stream = torch.cuda.Stream() if self.device.type == "cuda" else None
        self.home: dict[torch.nn.Parameter, torch.Tensor] = {}  # base weight -> its RAM copy
        self.pending: dict[int, torch.cuda.Event] = {}
        self.last_index = -1
        pin = self.device.type == "cuda"
        for module in blocks:
            on_gpu = module not in self.swapped
            for name, parameter in module.named_parameters():
                if "lora_" in name or on_gpu:
                    parameter.data = parameter.data.to(self.device)
                else:
                    ram = parameter.data.to("cpu")
                    self.home[parameter] = ram.pin_memory() if pin else ram
                    parameter.data = self.home[parameter]
        for module in blocks:  # every block prefetches its swapped neighbour
            module.register_forward_pre_hook(self._before)
        for module in self.swapped:
            module.register_forward_hook(self._after)

    @staticmethod
    def forward_context():
        """Wrap the training forward in this: checkpoint recomputation must run each block to
        its end (torch stops early by default), or the hook that drops the copy never runs."""
        return torch.utils.checkpoint.set_checkpoint_early_stop(False)

    @staticmethod
    def move_rest(transformer, device) -> None:
        """Everything outside the blocks (embedders, final layer) goes to the compute device."""
        blocks = set(transformer.transformer_blocks) | set(transformer.single_transformer_blocks)
        for name, child in transformer.named_children():
            if name not in ("transformer_blocks", "single_transformer_blocks") and child not in blocks:
                child.to(device)

    def _base(self, module):
        return [p for n, p in module.named_parameters() if "lora_" not in n]

    def _copy_in(self, module, use_stream: bool) -> None:
        index = self.order.index(module)
        if index in self.pending:
            return
        context = torch.cuda.stream(self.stream) if (use_stream and self.stream) else _null()
        with context:
            for parameter in self._base(module):  # always a fresh copy, so RAM copies stay untouched
                parameter.data = self.home[parameter].to(self.device, non_blocking=True, copy=True)
        if self.stream is not None and use_stream:
            event = torch.cuda.Event()
            event.record(self.stream)
            self.pending[index] = event
        else:
            self.pending[index] = None
        self._record("onload", index)

    def _before(self, module, args):
        index = self.order.index(module)
        if module in self.swapped:
            self._copy_in(module, use_stream=False)
            event = self.pending.get(index)
            if event is not None:
                torch.cuda.current_stream().wait_event(event)
        direction = 1 if index > self.last_index else -1
        self.last_index = index
        neighbour = index + direction
        if 0 <= neighbour < len(self.order) and self.order[neighbour] in self.swapped:
            self._copy_in(self.order[neighbour], use_stream=True)

    def _after(self, module, args, output):
        index = self.order.index(module)
        for parameter in self._base(module):
            parameter.data = self.home[parameter]
        self.pending.pop(index, None)
        self._record("offload", index)
        return output

    def _record(self, event: str, index: int) -> None:
        if self.trace is not None:
            self.trace.append((event, index))

    def resident_swapped_blocks(self) -> int:
        """How many swapped blocks currently have their weights on the compute device."""
        return sum(1 for module in self.swapped
                   if any(p.data_ptr() != self.home[p].data_ptr() for p in self._base(module)))


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
