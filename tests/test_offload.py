from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.models.flux import load_flux_transformer
from engine.models.lora import add_lora, lora_parameters
from engine.offload import BlockSwapper, swap_plan
from engine.trainer import train
from tests.fixtures.datasets import tiny_training_values
from tests.fixtures.models import write_tiny_flux
from tests.test_models import flux_inputs


def model_with_lora(path, *, fp8, compute_dtype, checkpointing):
    """The file's transformer with a seeded LoRA whose up matrices are not zero (so gradients flow)."""
    model = load_flux_transformer(path, fp8=fp8, compute_dtype=compute_dtype)
    torch.manual_seed(0)
    add_lora(model, 4, 4.0)
    with torch.no_grad():
        for parameter in lora_parameters(model):
            parameter.normal_(0, 0.1)
    if checkpointing:
        model.enable_gradient_checkpointing()
    return model.train()


def swapped_model(tmp_path, count, trace=None, checkpointing=True, fp8=False):
    path = tmp_path / "flux.safetensors"
    if not path.exists():
        write_tiny_flux(path, num_double=2, num_single=3, dtype=torch.float32)
    model = model_with_lora(path, fp8=fp8, compute_dtype=torch.bfloat16 if fp8 else torch.float32,
                            checkpointing=checkpointing)
    swapper = BlockSwapper(model, count, "cpu", trace=trace) if count else None
    return model, swapper


def poison_offloaded(swapper):
    """Device-faithful CPU test: the moment a swapped block is offloaded, whatever its modules
    still hold for the frozen base weights is made unusable (NaN, where it has data at all), as
    a RAM tensor is unusable to a CUDA kernel. Any later read of it shows in the results."""
    def hook(block, args, output):
        for path, parameter in block.named_parameters():
            if "lora_" not in path and parameter.device.type != "meta":
                parameter.data = torch.full_like(parameter.data, float("nan"))
        return output

    for block in swapper.swapped:
        block.register_forward_hook(hook)  # after the swapper's own hook


def base_weights(block):
    return {path: parameter for path, parameter in block.named_parameters() if "lora_" not in path}


def forward_backward(model, dtype=torch.float32):
    with BlockSwapper.forward_context():
        out = model(**flux_inputs(dtype)).sample
        out.square().mean().backward()
    return out.detach(), [p.grad.clone() for p in lora_parameters(model)]


def test_swap_plan_follows_kohya():
    # sd-scripts: N // 2 double blocks and (N - N // 2) * 2 single blocks (FLUX.1: 19 + 38).
    assert [swap_plan(n, 19, 38) for n in (0, 1, 16, 22, 28)] == [(0, 0), (0, 2), (8, 16), (11, 22), (14, 28)]
    assert swap_plan(120, 19, 38) == (18, 38)  # the first double block always stays
    assert swap_plan(1, 1, 1) == (0, 1) and swap_plan(4, 2, 3) == (1, 3)


def test_swap_schedule_with_checkpointing(tmp_path):
    trace = []
    model, swapper = swapped_model(tmp_path, 2, trace)
    # 2 = one double block and two single blocks, the last of each kind: forward indices 1, 3, 4.
    assert swapper.swapped == [model.transformer_blocks[1], model.single_transformer_blocks[1],
                               model.single_transformer_blocks[2]]
    forward_backward(model)
    # Forward: each swapped block is prefetched while its predecessor computes and dropped after
    # use; the checkpoint recompute in the backward pass walks back and does the same in reverse.
    assert trace == [("onload", 1), ("offload", 1), ("onload", 3), ("onload", 4), ("offload", 3), ("offload", 4),
                     ("onload", 4), ("onload", 3), ("offload", 4), ("offload", 3), ("onload", 1), ("offload", 1)]
    resident, peak = 0, 0
    for event, _ in trace:
        resident += 1 if event == "onload" else -1
        peak = max(peak, resident)
    assert peak == 2 and swapper.resident_swapped_blocks() == 0
    # Between uses a swapped block holds no weights at all: they are in the swapper's RAM copies.
    block = model.single_transformer_blocks[2]
    assert all(p.device.type == "meta" for p in base_weights(block).values())
    assert (block.proj_mlp.base_layer, "weight") in swapper.home


@pytest.mark.parametrize("fp8, checkpointing", [(False, True), (True, True), (False, False), (True, False)])
def test_swapped_forward_and_gradients_equal_unswapped(tmp_path, fp8, checkpointing):
    # Device-faithful: an offloaded block's weights are poisoned, so a backward that read them
    # (the first version of offload.py did: NaN in 71 of 75 LoRA gradients) fails here.
    # fp8: diffusers' layer-wise casting hooks run inside our block hooks (weights float8, compute bf16).
    dtype = torch.bfloat16 if fp8 else torch.float32
    plain, _ = swapped_model(tmp_path, 0, fp8=fp8, checkpointing=checkpointing)
    swapped, swapper = swapped_model(tmp_path, 3, fp8=fp8, checkpointing=checkpointing)
    poison_offloaded(swapper)
    assert len(swapper.swapped) == 4
    out_plain, grads_plain = forward_backward(plain, dtype)
    out_swapped, grads_swapped = forward_backward(swapped, dtype)
    assert torch.equal(out_plain, out_swapped)
    differing = [i for i, (a, b) in enumerate(zip(grads_plain, grads_swapped)) if not torch.equal(a, b)]
    assert not differing, f"{len(differing)} of {len(grads_plain)} LoRA gradients differ"
    block = swapped.single_transformer_blocks[2]
    home = swapper.home[(block.proj_mlp.base_layer, "weight")]
    assert home.dtype == block.proj_mlp.base_layer.weight.dtype == (torch.float8_e4m3fn if fp8 else torch.float32)
    assert not home.isnan().any()  # the RAM copy itself is never handed out or changed


def test_offloaded_weights_cannot_be_read(tmp_path):
    model, swapper = swapped_model(tmp_path, 3)
    block = swapper.swapped[0]
    with pytest.raises((RuntimeError, NotImplementedError)):
        block.norm1.linear.weight.sum().item()  # no data: a stray read fails as it would on CUDA
    forward_backward(model)  # the swapper's own use of the block brings real weights
    assert swapper.resident_swapped_blocks() == 0
    assert swapper.host_bytes() == sum(t.numel() * t.element_size() for t in swapper.home.values()) > 0


def test_training_with_swapped_blocks_equals_plain_training(tiny_model_files, tmp_path):
    common = dict(epoch=1, save_precision="float", gradient_checkpointing=True)
    plain = tiny_training_values(tiny_model_files, tmp_path / "plain", **common)
    swapped = tiny_training_values(tiny_model_files, tmp_path / "swapped", blocks_to_swap=1, **common)
    assert train(plain).status == "completed"
    result = train(swapped)
    assert result.status == "completed", result.message
    assert "blocks_to_swap 1: 0 double and 1 single transformer blocks stay in system RAM" in Path(result.log_path).read_text(encoding="utf-8")
    a = load_file(str(tmp_path / "plain/out/tiny.safetensors"))
    b = load_file(str(tmp_path / "swapped/out/tiny.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_loader_puts_only_the_swapped_blocks_in_ram(tmp_path):
    from engine.offload import swap_placement

    path = tmp_path / "flux.safetensors"
    write_tiny_flux(path, num_double=2, num_single=3, dtype=torch.float32)
    # "meta" stands in for the GPU: whatever is not swapped must not touch RAM at all.
    model = load_flux_transformer(path, compute_dtype=torch.float32, device=swap_placement(2, 3, 2, "meta"))
    in_ram = {name.split(".")[0] + "." + name.split(".")[1] for name, p in model.named_parameters() if p.device.type == "cpu"}
    assert in_ram == {"transformer_blocks.1", "single_transformer_blocks.1", "single_transformer_blocks.2"}
    assert all(p.device.type == "meta" for name, p in model.named_parameters()
               if not name.startswith(tuple(in_ram)))


class _Cycle:
    """A model-like object that refers to itself, so only the cycle collector can free it."""

    def __init__(self):
        self.weight = torch.zeros(1024)
        self.me = self


def test_a_run_frees_what_earlier_runs_left_in_cycles_and_collects_its_own():
    import gc
    import weakref

    from engine.training.placement import free_memory, settle_memory

    earlier = _Cycle()
    left_by_an_earlier_run = weakref.ref(earlier)
    del earlier
    try:
        settle_memory()
        assert left_by_an_earlier_run() is None  # gone before the run loads anything
        made_by_this_run = _Cycle()
        this_run = weakref.ref(made_by_this_run)
        del made_by_this_run
        free_memory()
        assert this_run() is None  # what the run made is still scanned and freed
    finally:
        gc.unfreeze()
