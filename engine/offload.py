"""`blocks_to_swap`: keep the frozen base weights of some transformer blocks in system RAM and
copy them to the GPU just before each use (forward, checkpoint recompute), prefetching the
next block on a side CUDA stream so the copy overlaps the current block's compute.

Which blocks: kohya's meaning of the number (sd-scripts' FLUX `enable_block_swap`): N swaps
N // 2 double blocks and (N - N // 2) * 2 single blocks (a double block is about twice a single
one), the last ones of each kind. We cap at all but the first double block (sd-scripts leaves
two of each kind; our prefetch needs only one resident block to start from).

Our own hooks rather than diffusers' group offloading (diffusers 0.42,
hooks/group_offloading.py, read for this): with streams it snapshots every parameter of a
group into pinned RAM once, at setup, and "offloads" by pointing `param.data` back at that
snapshot. For training that loses the optimizer's updates to the LoRA weights (peft puts them
inside the blocks) at the next offload, and between offload and the optimizer step the LoRA
weights sit in RAM while their gradients are on the GPU. Without streams it moves whole modules,
LoRA included, so nothing overlaps. Here only frozen base tensors move; LoRA parameters stay on
the GPU.

Backward correctness. Autograd keeps some base tensors of a block for its backward pass, and
for a frozen leaf it keeps the Parameter object itself (RMSNorm's `hidden * self.weight`; the
checkpoint recompute saves such tensors undetached too). Re-pointing that Parameter's `.data`
at the RAM copy after the block ran, as this module first did, made backward read RAM. So a
use never mutates a tensor autograd may hold: each onload puts a *new* Parameter holding a new
device copy into the module, and the offload puts back a placeholder on the meta device. What
autograd saved stays on the device, alive through autograd's reference alone, until that
block's backward is done. With gradient checkpointing that is the one block being recomputed,
so at most two swapped blocks (that one and the prefetched next) are on the device, as in
sd-scripts, without a second copy for backward. Why not the alternatives: sd-scripts brings
blocks back with backward hooks, which under checkpoint recompute means tracking which
backward ran; keeping the small non-Linear tensors resident relies on every op of the block
saving its Linear weights only through a view (aten::linear's transpose), an autograd detail.
The RAM copies live only in `BlockSwapper.home`, never in the module, so any read of an
off-device weight fails loudly (meta tensors have no data) on the CPU as on CUDA.
"""

from __future__ import annotations

import contextlib

import torch
import torch.utils.checkpoint


def swap_plan(blocks_to_swap: int, num_double: int, num_single: int) -> tuple[int, int]:
    """(double blocks, single blocks) that `blocks_to_swap` keeps in RAM, kohya's way, capped."""
    double = min(blocks_to_swap // 2, num_double - 1)
    single = min((blocks_to_swap - blocks_to_swap // 2) * 2, num_single)
    return double, single


def swap_placement(num_double: int, num_single: int, blocks_to_swap: int, device):
    """Where the loader puts each diffusers parameter: the swapped blocks' in RAM, the rest
    straight on `device`, so loading never holds the whole transformer in system RAM."""
    double, single = swap_plan(blocks_to_swap, num_double, num_single)
    ram = tuple(f"transformer_blocks.{i}." for i in range(num_double - double, num_double))
    ram += tuple(f"single_transformer_blocks.{i}." for i in range(num_single - single, num_single))
    return lambda name: "cpu" if name.startswith(ram) else device


class BlockSwapper:
    def __init__(self, transformer, blocks_to_swap: int, device: torch.device, trace: list | None = None):
        double_blocks = list(transformer.transformer_blocks)
        single_blocks = list(transformer.single_transformer_blocks)
        double, single = swap_plan(blocks_to_swap, len(double_blocks), len(single_blocks))
        blocks = double_blocks + single_blocks
        self.device = torch.device(device)
        self.order = blocks  # forward order
        # The last blocks of each kind, like sd-scripts.
        self.swapped = double_blocks[len(double_blocks) - double:] + single_blocks[len(single_blocks) - single:]
        self.trace = trace  # (event, block index) pairs, for tests and debugging
        cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream() if cuda else None
        # (module, parameter name) -> the RAM copy, for every frozen base tensor of a swapped block
        self.home: dict[tuple[torch.nn.Module, str], torch.Tensor] = {}
        self.members: dict[torch.nn.Module, list[tuple[torch.nn.Module, str]]] = {block: [] for block in self.swapped}
        self.pending: dict[int, torch.cuda.Event] = {}
        self.last_index = -1
        for block in blocks:
            for module, name, parameter in _tensors(block, lora=True):  # LoRA weights live on the device
                parameter.data = parameter.data.to(self.device)
            for module, name, parameter in _tensors(block, lora=False):
                if block not in self.swapped:
                    parameter.data = parameter.data.to(self.device)
                    continue
                ram = parameter.data.to("cpu")
                self.home[(module, name)] = ram.pin_memory() if cuda else ram
                module._parameters[name] = _placeholder(ram)
                self.members[block].append((module, name))
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

    def _copy_in(self, block, use_stream: bool) -> None:
        index = self.order.index(block)
        if index in self.pending:
            return
        side = self.stream if use_stream else None
        compute = torch.cuda.current_stream(self.device) if side is not None else None
        with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
            for module, name in self.members[block]:
                # A new tensor in a new Parameter each time: whatever autograd kept from an
                # earlier use keeps its own copy, and the RAM copy is never handed out.
                copy = self.home[(module, name)].to(self.device, non_blocking=True, copy=True)
                if side is not None:
                    # Made on the side stream, read and freed on the compute stream: without this
                    # the allocator could hand the memory to the next prefetch while the compute
                    # stream still reads it.
                    copy.record_stream(compute)
                module._parameters[name] = torch.nn.Parameter(copy, requires_grad=False)
        event = None
        if side is not None:
            event = torch.cuda.Event()
            event.record(side)
        self.pending[index] = event
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

    def _after(self, block, args, output):
        index = self.order.index(block)
        for module, name in self.members[block]:
            module._parameters[name] = _placeholder(self.home[(module, name)])
        self.pending.pop(index, None)
        self._record("offload", index)
        return output

    def _record(self, event: str, index: int) -> None:
        if self.trace is not None:
            self.trace.append((event, index))

    def resident_swapped_blocks(self) -> int:
        """How many swapped blocks currently have their weights on the compute device."""
        return sum(1 for block in self.swapped
                   if any(module._parameters[name].device.type != "meta" for module, name in self.members[block]))

    def host_bytes(self) -> int:
        """System RAM the swapped blocks' copies take (pinned on CUDA)."""
        return sum(t.numel() * t.element_size() for t in self.home.values())


def _tensors(block, lora: bool):
    """(module, name, parameter) of a block's LoRA or frozen base parameters."""
    for path, module in block.named_modules():
        for name, parameter in list(module._parameters.items()):
            if parameter is not None and ("lora_" in f"{path}.{name}") == lora:
                yield module, name, parameter


def _placeholder(like: torch.Tensor) -> torch.nn.Parameter:
    """What a module holds while its weights are in RAM: shape and dtype, no data to read."""
    return torch.nn.Parameter(torch.empty_like(like, device="meta"), requires_grad=False)
