"""Block swap on a real CUDA device: RAM copies pinned, prefetch on a side stream, forward and
backward (with the checkpoint recompute) equal to the same model without swapping. The CPU
tests (test_offload.py) poison offloaded weights to stand in for the device boundary; this
module is the boundary itself, and runs wherever a GPU is present."""

import pytest
import torch

from engine.models.lora import lora_parameters
from engine.offload import BlockSwapper
from tests.fixtures.models import write_tiny_flux
from tests.test_models import flux_inputs
from tests.test_offload import model_with_lora

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (torch.cuda.is_available() is False here)")


def cuda_model(path, swap, fp8, checkpointing):
    model = model_with_lora(path, fp8=fp8, compute_dtype=torch.bfloat16, checkpointing=checkpointing)
    if swap:
        swapper = BlockSwapper(model, swap, "cuda")
        BlockSwapper.move_rest(model, "cuda")
        return model, swapper
    return model.to("cuda"), None


def run_step(model):
    inputs = {k: v.to("cuda") if isinstance(v, torch.Tensor) else v for k, v in flux_inputs(torch.bfloat16).items()}
    with BlockSwapper.forward_context(), torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(**inputs).sample
        out.float().square().mean().backward()
    torch.cuda.synchronize()
    return out.detach().cpu(), [p.grad.detach().cpu() for p in lora_parameters(model)]


@pytest.mark.parametrize("fp8, checkpointing", [(True, True), (False, True), (True, False)])
def test_swap_forward_backward_on_cuda(tmp_path, fp8, checkpointing):
    path = tmp_path / "flux.safetensors"
    write_tiny_flux(path, num_double=2, num_single=3, dtype=torch.float32)
    plain, _ = cuda_model(path, 0, fp8, checkpointing)
    swapped, swapper = cuda_model(path, 3, fp8, checkpointing)
    assert len(swapper.swapped) == 4
    assert all(t.device.type == "cpu" and t.is_pinned() for t in swapper.home.values())
    out_plain, grads_plain = run_step(plain)
    out_swapped, grads_swapped = run_step(swapped)
    assert torch.equal(out_plain, out_swapped)
    assert all(torch.isfinite(g).all() for g in grads_swapped)
    differing = [i for i, (a, b) in enumerate(zip(grads_plain, grads_swapped)) if not torch.equal(a, b)]
    assert not differing, f"{len(differing)} of {len(grads_plain)} LoRA gradients differ"
    assert swapper.resident_swapped_blocks() == 0
    assert all(p.device.type == "cuda" for p in lora_parameters(swapped))


def test_lora_saved_from_the_gpu(tmp_path):
    # The streaming writer copies each tensor to RAM itself (numpy cannot read CUDA memory).
    from safetensors.torch import load_file

    from engine.models.lora import lora_state_dict, save_lora

    path = tmp_path / "flux.safetensors"
    write_tiny_flux(path, num_double=2, num_single=3, dtype=torch.float32)
    model, _ = cuda_model(path, 3, True, True)
    save_lora(model, tmp_path / "lora.safetensors", precision="fp16", mem_eff=True)
    saved = load_file(str(tmp_path / "lora.safetensors"))
    expected = lora_state_dict(model, torch.float16)
    assert saved.keys() == expected.keys() and all(torch.equal(saved[k], expected[k].cpu()) for k in saved)
