"""Training what sd-scripts trains: expected values derived from sd-scripts' code (read, not copied)."""

import pytest
import torch

from engine.models.flux import load_flux_transformer
from engine.models.lora import add_lora, lora_named_parameters, lora_parameters, lora_state_dict, save_lora, load_lora
from tests.fixtures.models import write_tiny_flux
from tests.test_models import flux_inputs


def tiny_flux(tmp_path):
    path = tmp_path / "flux.safetensors"
    if not path.exists():
        write_tiny_flux(path, num_double=1, num_single=1, dtype=torch.float32)
    return load_flux_transformer(path, compute_dtype=torch.float32)


def random_lora(tmp_path, rank=4, alpha=2.0):
    model = tiny_flux(tmp_path)
    add_lora(model, rank, alpha)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in lora_parameters(model):
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model


def fused_reference(tmp_path, model):
    """The base model with sd-scripts' LoRA math added by hooks: per kohya layer one leaf
    down [r, in] and one leaf up [out, r]; a split diffusers layer adds its rows of up."""
    base = tiny_flux(tmp_path)
    tensors = {name: p.detach().clone().requires_grad_(True) for name, p in lora_named_parameters(model).items()}
    scale = model.get_submodule(next(iter(model._fluxlora_layers.values()))[0]).scaling["default"]
    for name, paths in model._fluxlora_layers.items():
        down, up = tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"]
        start = 0
        for path in paths:
            layer = base.get_submodule(path)
            rows = slice(start, start + layer.out_features)
            start += layer.out_features

            def hook(module, args, output, rows=rows, down=down, up=up):
                return output + (args[0] @ down.T @ up[rows].T) * scale
            layer.register_forward_hook(hook)
    return base, tensors


def adafactor(params):
    from transformers.optimization import Adafactor

    return Adafactor(params, lr=1e-3, relative_step=False, scale_parameter=False, warmup_init=False)


def test_optimizer_sees_one_down_and_one_up_per_fused_layer(tmp_path):
    model = random_lora(tmp_path)
    named = lora_named_parameters(model)
    # sd-scripts (split_qkv off): qkv of width 32 -> up [96, r]; single linear1 -> [3*32 + 4*32, r].
    assert named["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"].shape == (96, 4)
    assert named["lora_unet_double_blocks_0_txt_attn_qkv.lora_up.weight"].shape == (96, 4)
    assert named["lora_unet_single_blocks_0_linear1.lora_up.weight"].shape == (224, 4)
    assert named["lora_unet_single_blocks_0_linear1.lora_down.weight"].shape == (4, 32)
    # 10 layers per double block and 3 per single block, two tensors each, nothing else.
    assert len(lora_parameters(model)) == 2 * (10 + 3)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in lora_parameters(model)}


def test_one_adafactor_step_equals_the_step_on_sd_scripts_fused_tensors(tmp_path):
    model = random_lora(tmp_path)
    reference, tensors = fused_reference(tmp_path, model)
    inputs = flux_inputs()
    ours_optimizer, reference_optimizer = adafactor(lora_parameters(model)), adafactor(list(tensors.values()))
    model(**inputs).sample.square().mean().backward()
    reference(**inputs).sample.square().mean().backward()
    ours_optimizer.step()
    reference_optimizer.step()
    for name, parameter in lora_named_parameters(model).items():
        torch.testing.assert_close(parameter.detach(), tensors[name].detach(), atol=1e-6, rtol=0, msg=name)
    up = lora_named_parameters(model)["lora_unet_single_blocks_0_linear1.lora_up.weight"]
    assert ours_optimizer.state[up]["exp_avg_sq_row"].shape == (224,)  # one factored moment for the whole up


def test_fused_lora_saves_reloads_and_forwards_as_the_file_says(tmp_path):
    model = random_lora(tmp_path)
    path = tmp_path / "lora.safetensors"
    save_lora(model, path, precision="float", mem_eff=True)
    fresh = tiny_flux(tmp_path)
    add_lora(fresh, 4, 2.0)
    load_lora(fresh, path)
    for key, tensor in lora_state_dict(model).items():
        assert torch.equal(lora_state_dict(fresh)[key], tensor), key
    inputs = flux_inputs()
    with torch.no_grad():
        torch.testing.assert_close(fresh(**inputs).sample, model(**inputs).sample, atol=1e-6, rtol=0)


@pytest.mark.parametrize("rank", [4, 8])
def test_network_alpha_0_means_alpha_equals_rank(tmp_path, rank):
    """sd-scripts' LoRAModule: alpha 0 or None -> alpha = lora_dim, scale 1; the file's
    .alpha tensor then holds the rank."""
    model = tiny_flux(tmp_path)
    add_lora(model, rank, 0.0)
    layer = model.get_submodule("transformer_blocks.0.attn.to_q")
    assert layer.scaling["default"] == 1.0
    state = lora_state_dict(model)
    assert float(state["lora_unet_double_blocks_0_img_attn_qkv.alpha"]) == float(rank)
    # A run continued with alpha 0 loads its own file (before: a division by zero).
    with torch.no_grad():
        for parameter in lora_parameters(model):
            parameter.normal_()
    path = tmp_path / "alpha0.safetensors"
    save_lora(model, path, precision="float")
    again = tiny_flux(tmp_path)
    add_lora(again, rank, 0.0)
    load_lora(again, path)
    for key, tensor in lora_state_dict(model).items():
        assert torch.equal(lora_state_dict(again)[key], tensor), key
