"""kohya's files coming in: a kohya_ss config trained as kohya reads it, sd-scripts' LoRAs and states."""

import json
from pathlib import Path

import pytest
import torch

from safetensors import safe_open

from engine.events import Log
from engine.preset import load_preset
from engine.train_state import StateError
from engine.trainer import train
from tests.fixtures.datasets import tiny_training_values


def kohya_ss_config(values: dict, **keys) -> dict:
    """A config as the kohya_ss GUI writes it: its key names, its quirks, no preset_version."""
    config = {key: values[key] for key in (
        "pretrained_model_name_or_path", "ae", "clip_l", "t5xxl", "clip_l_tokenizer_path", "t5xxl_tokenizer_path",
        "train_data_dir", "output_dir", "logging_dir", "output_name", "max_resolution", "min_bucket_reso",
        "learning_rate", "unet_lr", "network_dim", "network_alpha", "optimizer", "optimizer_args",
        "caption_extension", "seed")}
    config.update(LoRA_type="Flux1", flux1_checkbox=True, epoch="1", max_train_steps="2", mixed_precision="no",
                  train_batch_size="1", save_every_n_epochs="0", xformers="sdpa", **keys)
    return config


def test_kohya_config_with_fp8_base_off_and_no_fp8_base_unet_trains_without_fp8(tiny_model_files, tmp_path):
    values = tiny_training_values(tiny_model_files, tmp_path)
    path = tmp_path / "kohya config.json"
    path.write_text(json.dumps(kohya_ss_config(values, fp8_base=False)), encoding="utf-8")
    loaded = load_preset(path)
    assert (loaded.format, loaded.values["fp8_base"], loaded.values["fp8_base_unet"]) == ("kohya_ss", False, False)
    events = []
    result = train(loaded.values, on_event=events.append)
    assert (result.status, result.steps) == ("completed", 2), result.message
    logged = [e.text for e in events if isinstance(e, Log)]
    assert "loading the transformer" in logged and "loading the transformer in fp8" not in logged
    with safe_open(str(Path(values["output_dir"]) / "tiny.safetensors"), "pt") as handle:
        metadata = handle.metadata()
    assert (metadata["ss_fp8_base"], metadata["ss_fp8_base_unet"]) == ("False", "False")
    # kohya's other defaults for keys the file lacks went into the run too.
    assert (metadata["ss_timestep_sampling"], metadata["ss_model_prediction_type"],
            metadata["ss_guidance_scale"]) == ("sigma", "sigma_scaled", "3.5")


# ---- a state folder as sd-scripts writes it ------------------------------------------------
class _Modulation(torch.nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.lin = _linear(shape)


class _SelfAttention(torch.nn.Module):
    def __init__(self, qkv, proj):
        super().__init__()
        self.qkv, self.norm, self.proj = _linear(qkv), torch.nn.Identity(), _linear(proj)


class _DoubleStreamBlock(torch.nn.Module):
    """The attribute order of sd-scripts' flux_models.DoubleStreamBlock (its named_modules walk)."""

    def __init__(self, shapes, i):
        super().__init__()
        def s(name):
            return shapes[f"double_blocks.{i}.{name}.weight"]
        self.img_mod = _Modulation(s("img_mod.lin"))
        self.img_norm1 = torch.nn.Identity()
        self.img_attn = _SelfAttention(s("img_attn.qkv"), s("img_attn.proj"))
        self.img_norm2 = torch.nn.Identity()
        self.img_mlp = torch.nn.Sequential(_linear(s("img_mlp.0")), torch.nn.GELU(), _linear(s("img_mlp.2")))
        self.txt_mod = _Modulation(s("txt_mod.lin"))
        self.txt_norm1 = torch.nn.Identity()
        self.txt_attn = _SelfAttention(s("txt_attn.qkv"), s("txt_attn.proj"))
        self.txt_norm2 = torch.nn.Identity()
        self.txt_mlp = torch.nn.Sequential(_linear(s("txt_mlp.0")), torch.nn.GELU(), _linear(s("txt_mlp.2")))


class _SingleStreamBlock(torch.nn.Module):
    def __init__(self, shapes, i):
        super().__init__()
        self.linear1 = _linear(shapes[f"single_blocks.{i}.linear1.weight"])
        self.linear2 = _linear(shapes[f"single_blocks.{i}.linear2.weight"])
        self.norm, self.pre_norm, self.mlp_act = torch.nn.Identity(), torch.nn.Identity(), torch.nn.GELU()
        self.modulation = _Modulation(shapes[f"single_blocks.{i}.modulation.lin.weight"])


def _linear(shape):
    return torch.nn.Linear(shape[1], shape[0], bias=False, device="meta")


class _LoRAModule(torch.nn.Module):
    def __init__(self, base: torch.nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.lora_down = torch.nn.Linear(base.in_features, rank, bias=False)
        self.lora_up = torch.nn.Linear(rank, base.out_features, bias=False)
        torch.nn.init.normal_(self.lora_up.weight, std=0.01)
        self.register_buffer("alpha", torch.tensor(float(alpha)))


def sd_scripts_lora_network(model_file, rank, alpha):
    """sd-scripts' LoRANetwork on the tiny model: one LoRAModule per Linear of each block, found by walking
    the blocks' modules in their definition order, registered under kohya's names."""
    from safetensors import safe_open

    with safe_open(str(model_file), "pt") as handle:
        shapes = {key: handle.get_slice(key).get_shape() for key in handle.keys()}
    double = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("double_blocks."))
    single = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("single_blocks."))
    flux = torch.nn.Module()
    flux.double_blocks = torch.nn.ModuleList(_DoubleStreamBlock(shapes, i) for i in range(double))
    flux.single_blocks = torch.nn.ModuleList(_SingleStreamBlock(shapes, i) for i in range(single))
    network = torch.nn.Module()
    for name, block in flux.named_modules():
        if isinstance(block, (_DoubleStreamBlock, _SingleStreamBlock)):
            for child_name, child in block.named_modules():
                if isinstance(child, torch.nn.Linear):
                    network.add_module(f"lora_unet_{name}.{child_name}".replace(".", "_"),
                                       _LoRAModule(child, rank, alpha))
    return network


def add_sd_scripts_clip_loras(network, clip, rank, alpha):
    """sd-scripts' text-encoder LoRAs: the Linears of each CLIPAttention / CLIPMLP in walk order."""
    loras = torch.nn.Module()
    for name, module in clip.named_modules():
        if type(module).__name__ in ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP"):
            for child_name, child in module.named_modules():
                if isinstance(child, torch.nn.Linear):
                    path = f"{name}.{child_name}" if name.startswith("text_model.") else f"text_model.{name}.{child_name}"
                    loras.add_module("lora_te1_" + path.replace(".", "_"), _LoRAModule(child, rank, alpha))
    for lora_name, lora in loras.named_children():
        network.add_module(lora_name, lora)
    return [p for lora in loras.children() for p in lora.parameters()]


def write_sd_scripts_state(folder, model_file, epoch, step, rank=4, alpha=4.0, lr=1e-3, clip_file=None):
    """Train sd-scripts' network three AdamW steps, then accelerate's save_state as sd-scripts calls it.
    With `clip_file` it trains a CLIP-L LoRA too, in its own parameter group first, as sd-scripts does."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from diffusers.optimization import get_scheduler

    from engine.models.text_encoders import load_clip_l

    AcceleratorState._reset_state()
    GradientState._reset_state()
    torch.manual_seed(7)
    network = sd_scripts_lora_network(model_file, rank, alpha)
    params = [p for module in network.children() for p in module.parameters()]
    groups = [{"params": params, "lr": lr}]
    if clip_file is not None:
        groups.insert(0, {"params": add_sd_scripts_clip_loras(network, load_clip_l(clip_file), rank, alpha),
                          "lr": lr / 2})
    params = [p for group in groups for p in group["params"]]
    optimizer = torch.optim.AdamW(groups)
    scheduler = get_scheduler("constant", optimizer)
    accelerator = Accelerator(cpu=True)
    network, optimizer, scheduler = accelerator.prepare(network, optimizer, scheduler)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    accelerator.save_state(str(folder))
    (folder / "train_state.json").write_text(json.dumps({"current_epoch": epoch, "current_step": step}))
    return {name: optimizer.state[p] for name, p in network.named_parameters()}


def test_sd_scripts_optimizer_state_lands_on_our_tensors_by_name(tiny_model_files, tmp_path):
    from engine.models.lora import add_lora, lora_named_parameters
    from engine.models.flux import load_flux_transformer
    from engine.training.kohya_resume import load_kohya_optimizer
    from engine.training.optim import create_optimizer

    folder = tmp_path / "ohwx-step00000014-state"
    expected = write_sd_scripts_state(folder, tiny_model_files.values["pretrained_model_name_or_path"], 2, 14)
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "optimizer.bin", "random_states_0.pkl",
                                                        "scheduler.bin", "train_state.json"]
    transformer = load_flux_transformer(tiny_model_files.values["pretrained_model_name_or_path"], fp8=False,
                                        compute_dtype=torch.float32, device="cpu")
    add_lora(transformer, 4, 4.0)
    named = lora_named_parameters(transformer)
    values = tiny_training_values(tiny_model_files, tmp_path)
    optimizer = create_optimizer(values, list(named.values()))
    load_kohya_optimizer(optimizer, [named], folder / "optimizer.bin")
    assert list(named) != list(expected)  # our order differs from sd-scripts': the mapping is by name
    assert set(named) == set(expected)
    other = create_optimizer(dict(values, optimizer="Adafactor", optimizer_args="relative_step=False"), list(named.values()))
    with pytest.raises(StateError, match="optimizer.bin: written by another optimizer .its settings: amsgrad, betas"):
        load_kohya_optimizer(other, [named], folder / "optimizer.bin")
    for name, parameter in named.items():
        ours = optimizer.state[parameter]
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(ours[key], expected[name][key]), (name, key)


def test_resume_from_an_sd_scripts_state_folder_loads_its_optimizer_and_continues_at_the_true_step(
        tiny_model_files, tmp_path):
    values = tiny_training_values(tiny_model_files, tmp_path, images=5, repeats=2, epoch=2, save_every_n_epochs=0,
                                  text_encoder_lr=0.0)  # kohya's run trained the transformer only
    # run 2 of sd-scripts (resumed after epoch 1 at 10 steps per epoch) saved at its step 4: (2, 4) is step 14.
    folder = tmp_path / "kohya" / "run2-step00000004-state"
    write_sd_scripts_state(folder, values["pretrained_model_name_or_path"], 2, 4)
    events = []
    result = train(dict(values, resume=str(folder)), on_event=events.append)
    assert (result.status, result.steps) == ("completed", 20), result.message
    logged = [e.text for e in events if isinstance(e, Log)]
    assert ("kohya's state run2-step00000004-state: optimizer, schedule (sd-scripts counted 3 steps), random states "
            "loaded; continuing at step 14") in logged
    assert not any("fresh optimizer" in text for text in logged)
    assert [e.done for e in events if getattr(e, "phase", None) == "training"] == list(range(15, 21))


# ---- LoRA files with a rank per layer type, and input-layer LoRAs ---------------------------
def write_per_type_rank_lora(tiny_model_files, path):
    """What sd-scripts writes with img_attn_dim=8, txt_mod_dim=0 and in_dims=[2,2,0,0,2] at network_dim 4."""
    from safetensors.torch import save_file

    from engine.models.flux import load_flux_transformer
    from engine.models.lora import add_lora, lora_state_dict

    transformer = load_flux_transformer(tiny_model_files.values["pretrained_model_name_or_path"], fp8=False,
                                        compute_dtype=torch.float32, device="cpu")
    add_lora(transformer, 4, 4.0)
    generator = torch.Generator().manual_seed(3)
    tensors = {}
    for key, tensor in lora_state_dict(transformer).items():
        name = key.split(".")[0]
        if "_txt_mod_" in name:
            continue  # rank 0: sd-scripts makes no LoRA there
        rank = 8 if "_img_attn_" in name else 4
        if key.endswith(".alpha"):
            tensors[key] = torch.tensor(float(rank) / 2)
        else:
            shape = (rank, tensor.shape[1]) if key.endswith("lora_down.weight") else (tensor.shape[0], rank)
            tensors[key] = torch.randn(shape, generator=generator) * 0.1
    shapes = {"lora_unet_img_in": transformer.x_embedder, "lora_unet_txt_in": transformer.context_embedder,
              "lora_unet_time_in_in_layer": transformer.time_text_embed.timestep_embedder.linear_1,
              "lora_unet_time_in_out_layer": transformer.time_text_embed.timestep_embedder.linear_2}
    for name, linear in shapes.items():
        tensors[f"{name}.lora_down.weight"] = torch.randn(2, linear.in_features, generator=generator) * 0.1
        tensors[f"{name}.lora_up.weight"] = torch.randn(linear.out_features, 2, generator=generator) * 0.1
        tensors[f"{name}.alpha"] = torch.tensor(2.0)
    save_file(tensors, str(path))
    return tensors


def test_per_type_rank_and_in_dims_lora_loads_with_its_ranks_and_computes_as_the_file(tiny_model_files, tmp_path):
    from engine.models.flux import load_flux_transformer
    from engine.models.lora import add_lora, load_lora, lora_state_dict
    from engine.models.lora_ranks import describe_ranks, per_layer_ranks

    path = tmp_path / "per type.safetensors"
    written = write_per_type_rank_lora(tiny_model_files, path)
    ranks = per_layer_ranks(path)
    assert describe_ranks(ranks) == "img_attn 8, img_mlp 4, img_mod 4, txt_attn 4, txt_mlp 4, in 2, single 4, single_mod 4"
    transformer = load_flux_transformer(tiny_model_files.values["pretrained_model_name_or_path"], fp8=False,
                                        compute_dtype=torch.float32, device="cpu")
    add_lora(transformer, 64, 64.0, ranks=ranks)  # network_dim does not matter: the file decides
    load_lora(transformer, path)
    back = lora_state_dict(transformer)
    assert set(back) == set(written)
    for key, tensor in written.items():
        assert torch.allclose(back[key], tensor), key
    # The input-layer LoRA acts on its layer: out = W x + alpha / rank * up down x.
    linear = transformer.x_embedder
    x = torch.randn(3, linear.in_features)
    base = torch.nn.functional.linear(x, linear.base_layer.weight, linear.base_layer.bias)
    delta = x @ written["lora_unet_img_in.lora_down.weight"].T @ written["lora_unet_img_in.lora_up.weight"].T
    assert torch.allclose(linear(x), base + delta * (2.0 / 2), atol=1e-6)


def test_training_from_a_per_type_rank_lora_keeps_its_layers_and_ranks(tiny_model_files, tmp_path):
    from safetensors.torch import load_file

    path = tmp_path / "per type.safetensors"
    written = write_per_type_rank_lora(tiny_model_files, path)
    values = tiny_training_values(tiny_model_files, tmp_path, max_train_steps=1, network_weights=str(path),
                                  fp8_base=True, text_encoder_lr=0.0)  # on the fp8 base, as users train
    events = []
    result = train(values, on_event=events.append)
    assert result.status == "completed", result.message
    logged = [e.text for e in events if isinstance(e, Log)]
    assert any(text.startswith("per type.safetensors has its own rank per layer (img_attn 8, img_mlp 4") and
               text.endswith("network_dim is not used") for text in logged)
    trained = load_file(str(Path(values["output_dir"]) / "tiny.safetensors"))
    assert {k: tuple(v.shape) for k, v in trained.items()} == {k: tuple(v.shape) for k, v in written.items()}


def test_sd_scripts_optimizer_state_with_a_clip_l_lora_maps_group_by_group(tiny_model_files, tmp_path):
    from engine.models.flux import load_flux_transformer
    from engine.models.lora import add_lora, lora_named_parameters
    from engine.models.te_lora import add_clip_lora
    from engine.models.text_encoders import load_clip_l
    from engine.training.kohya_resume import load_kohya_optimizer
    from engine.training.optim import create_optimizer

    files = tiny_model_files.values
    folder = tmp_path / "with-te-state"
    expected = write_sd_scripts_state(folder, files["pretrained_model_name_or_path"], 1, 3, clip_file=files["clip_l"])
    transformer = load_flux_transformer(files["pretrained_model_name_or_path"], fp8=False,
                                        compute_dtype=torch.float32, device="cpu")
    add_lora(transformer, 4, 4.0)
    clip = load_clip_l(files["clip_l"])
    add_clip_lora(clip, 4, 4.0)
    named = [lora_named_parameters(clip), lora_named_parameters(transformer)]
    values = tiny_training_values(tiny_model_files, tmp_path)
    optimizer = create_optimizer(values, [{"params": list(group.values()), "lr": 1e-3} for group in named])
    load_kohya_optimizer(optimizer, named, folder / "optimizer.bin")
    assert list(named[0])[:6] != [n for n in expected if n.startswith("lora_te1_")][:6]  # q,k,v vs k,v,q
    for group in named:
        for name, parameter in group.items():
            assert torch.equal(optimizer.state[parameter]["exp_avg"], expected[name]["exp_avg"]), name
    with pytest.raises(StateError, match="holds 38 tensors in 2 parameter group.s., this LoRA trains 26 in 1"):
        load_kohya_optimizer(create_optimizer(values, list(named[1].values())), [named[1]], folder / "optimizer.bin")
