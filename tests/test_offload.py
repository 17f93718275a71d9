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


def swapped_model(tmp_path, count, trace=None, checkpointing=True, fp8=False):
    path = tmp_path / "flux.safetensors"
    if not path.exists():
        write_tiny_flux(path, num_double=2, num_single=3, dtype=torch.float32)
    model = load_flux_transformer(path, fp8=fp8, compute_dtype=torch.bfloat16 if fp8 else torch.float32)
    torch.manual_seed(0)
    add_lora(model, 4, 4.0)
    with torch.no_grad():
        for parameter in lora_parameters(model):
            parameter.normal_(0, 0.1)
    if checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    swapper = BlockSwapper(model, count, "cpu", trace=trace) if count else None
    return model, swapper


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
    # Between uses the swapped weights are the RAM copies, not the compute copies.
    block = model.single_transformer_blocks[2]
    weight = block.proj_mlp.base_layer.weight
    assert weight.data_ptr() == swapper.home[weight].data_ptr()


@pytest.mark.parametrize("fp8", [False, True])
def test_swapped_forward_and_gradients_equal_unswapped(tmp_path, fp8):
    # fp8: diffusers' layer-wise casting hooks run inside our block hooks (weights float8, compute bf16).
    dtype = torch.bfloat16 if fp8 else torch.float32
    plain, _ = swapped_model(tmp_path, 0, fp8=fp8)
    swapped, swapper = swapped_model(tmp_path, 3, fp8=fp8)
    assert len(swapper.swapped) == 4
    out_plain, grads_plain = forward_backward(plain, dtype)
    out_swapped, grads_swapped = forward_backward(swapped, dtype)
    assert torch.equal(out_plain, out_swapped)
    assert all(torch.equal(a, b) for a, b in zip(grads_plain, grads_swapped))
    weight = swapped.single_transformer_blocks[2].proj_mlp.base_layer.weight
    assert weight.dtype == (torch.float8_e4m3fn if fp8 else torch.float32)
    assert weight.data_ptr() == swapper.home[weight].data_ptr()


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
