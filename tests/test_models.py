import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.models.autoencoder import load_autoencoder
from engine.models.errors import ModelFileError
from engine.models.flux import FLUX1_DEV, infer_flux_architecture, load_flux_transformer
from engine.models.lora import add_lora, build_metadata, load_lora, lora_parameters, lora_state_dict, save_lora
from engine.models.safetensors_header import read_header
from engine.models.text_encoders import load_clip_l, load_t5, load_tokenizers
from engine.preset import default_values
from tests.fixtures.models import (
    write_tiny_ae, write_tiny_clip_l, write_tiny_flux, write_tiny_t5, write_tiny_tokenizers,
)


def flux_inputs(dtype=torch.float32, guidance=True, context_dim=32, pooled_dim=32, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(1, 16, 64, generator=generator).to(dtype),
        encoder_hidden_states=torch.randn(1, 8, context_dim, generator=generator).to(dtype),
        pooled_projections=torch.randn(1, pooled_dim, generator=generator).to(dtype),
        timestep=torch.tensor([0.4], dtype=dtype), img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3),
        guidance=torch.tensor([1.0], dtype=dtype) if guidance else None,
    )


@pytest.mark.parametrize("width, guidance, file_dtype, prefix", [
    (32, True, torch.float32, ""),
    (48, False, torch.bfloat16, "model.diffusion_model."),
    (64, True, torch.float16, "model.diffusion_model."),
])
def test_transformer_loads_and_matches_diffusers_reference(tmp_path, width, guidance, file_dtype, prefix):
    path = tmp_path / "flux.safetensors"
    reference = write_tiny_flux(path, width=width, num_double=2, num_single=3, guidance=guidance,
                                dtype=file_dtype, prefix=prefix)
    arch = infer_flux_architecture(read_header(path).shapes())
    assert (arch.width, arch.num_double, arch.num_single, arch.head_dim, arch.has_guidance) == (
        width, 2, 3, 16, guidance)
    model = load_flux_transformer(path, compute_dtype=torch.float32)
    inputs = flux_inputs(guidance=guidance)
    with torch.no_grad():
        assert torch.equal(model(**inputs).sample, reference(**inputs).sample)


def test_fp8_base_stores_linears_in_fp8_and_keeps_norms_wide(tmp_path):
    path = tmp_path / "flux.safetensors"
    reference = write_tiny_flux(path, dtype=torch.bfloat16)
    model = load_flux_transformer(path, fp8=True, compute_dtype=torch.bfloat16)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert dtypes["transformer_blocks.0.attn.to_q.weight"] == torch.float8_e4m3fn
    assert dtypes["single_transformer_blocks.0.proj_mlp.weight"] == torch.float8_e4m3fn
    assert dtypes["transformer_blocks.0.attn.norm_q.weight"] == torch.bfloat16
    assert dtypes["proj_out.weight"] == torch.bfloat16
    inputs = flux_inputs(torch.bfloat16)
    with torch.no_grad():
        out = model(**inputs).sample.float()
        expected = reference.to(torch.bfloat16)(**inputs).sample.float()
    # fp8 keeps 3 mantissa bits: close to the bf16 model, not equal.
    assert (out - expected).abs().mean() < 0.1 * expected.abs().mean()


def test_fp8_file_loads(tmp_path):
    path = tmp_path / "flux-fp8.safetensors"
    write_tiny_flux(path, dtype=torch.float8_e4m3fn)
    model = load_flux_transformer(path, fp8=True)
    with safe_open(str(path), "pt") as handle:
        stored = handle.get_tensor("double_blocks.0.img_attn.qkv.weight")
    loaded = torch.cat([model.transformer_blocks[0].attn.to_q.weight, model.transformer_blocks[0].attn.to_k.weight,
                        model.transformer_blocks[0].attn.to_v.weight])
    assert torch.equal(loaded.view(torch.uint8), stored.view(torch.uint8))


def test_vae_and_text_encoders_match_their_references(tmp_path):
    vae = write_tiny_ae(tmp_path / "ae.safetensors")
    loaded_vae = load_autoencoder(tmp_path / "ae.safetensors")
    assert (loaded_vae.config.scaling_factor, loaded_vae.config.shift_factor) == (0.3611, 0.1159)
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded_vae.encode(image).latent_dist.mean, vae.encode(image).latent_dist.mean)
    ids = torch.tensor([[0, 5, 6, 91, 91]])
    clip = write_tiny_clip_l(tmp_path / "clip_l.safetensors").half().float()
    t5 = write_tiny_t5(tmp_path / "t5.safetensors").half().float()
    with torch.no_grad():
        assert torch.equal(load_clip_l(tmp_path / "clip_l.safetensors")(ids).pooler_output, clip(ids).pooler_output)
        assert torch.allclose(load_t5(tmp_path / "t5.safetensors")(ids).last_hidden_state,
                              t5(ids).last_hidden_state, atol=1e-5)


def test_tokenizers_from_folders_and_clear_error_offline(tmp_path):
    clip_dir, t5_dir = write_tiny_tokenizers(tmp_path)
    clip_tok, t5_tok = load_tokenizers(str(clip_dir), str(t5_dir))
    assert clip_tok("ohwx man").input_ids == [0, 15, 8, 23, 69, 13, 1, 59, 91]
    assert t5_tok("ohwx").input_ids[-1] == 1  # </s>
    with pytest.raises(ModelFileError, match="t5xxl_tokenizer_path: folder .*nope not found"):
        load_tokenizers(str(clip_dir), str(tmp_path / "nope"))
    with pytest.raises(ModelFileError, match="clip_l_tokenizer_path: the standard tokenizer "
                       "openai/clip-vit-large-patch14 is not in the Hugging Face cache"):
        load_tokenizers("", str(t5_dir))


def write(path, tensors):
    save_file({k: torch.zeros(shape) for k, shape in tensors.items()}, str(path))
    return path


def test_wrong_files_are_named(tmp_path):
    write_tiny_ae(tmp_path / "ae.safetensors")
    write_tiny_t5(tmp_path / "t5.safetensors")
    sdxl = write(tmp_path / "sdxl.safetensors", {"conditioner.embedders.0.x": (2,), "model.diffusion_model.input_blocks.0.0.weight": (2,)})
    sd15 = write(tmp_path / "sd15.safetensors", {"model.diffusion_model.input_blocks.0.0.weight": (2,), "cond_stage_model.x": (2,)})
    lora = write(tmp_path / "lora.safetensors", {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": (2, 2)})
    (tmp_path / "model.ckpt").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    good = tmp_path / "flux.safetensors"
    write_tiny_flux(good)
    (tmp_path / "cut.safetensors").write_bytes(good.read_bytes()[:-1000])
    cases = [
        (lambda: load_flux_transformer(sdxl), "sdxl.safetensors: this looks like an SDXL checkpoint; expected a FLUX.1 transformer"),
        (lambda: load_flux_transformer(sd15), "this looks like a Stable Diffusion 1.x/2.x checkpoint; expected a FLUX.1"),
        (lambda: load_flux_transformer(tmp_path / "ae.safetensors"), "this looks like the FLUX VAE (ae.safetensors); expected a FLUX.1 transformer"),
        (lambda: load_flux_transformer(lora), "this looks like a LoRA, not a base model; expected a FLUX.1 transformer"),
        (lambda: load_flux_transformer(tmp_path / "model.ckpt"), "model.ckpt: not a safetensors file (a .ckpt/.pt pickle? convert it to .safetensors)"),
        (lambda: load_flux_transformer(tmp_path / "cut.safetensors"), "cut.safetensors: truncated: the header describes"),
        (lambda: load_clip_l(tmp_path / "t5.safetensors"), "this looks like a T5 text encoder; expected the CLIP-L text encoder"),
        (lambda: load_autoencoder(good), "this looks like a FLUX.1 transformer; expected the FLUX VAE"),
        (lambda: load_t5(tmp_path / "missing.safetensors"), "missing.safetensors: file not found"),
    ]
    for load, message in cases:
        with pytest.raises(ModelFileError) as caught:
            load()
        assert message in str(caught.value)


def lora_model(tmp_path, rank=4, alpha=2.0, train_blocks="all", seed=0):
    path = tmp_path / "flux.safetensors"
    if not path.exists():
        write_tiny_flux(path, num_double=2, num_single=2, dtype=torch.float32)
    model = load_flux_transformer(path, compute_dtype=torch.float32)
    add_lora(model, rank, alpha, train_blocks)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in lora_parameters(model):
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model


def test_lora_layers_dtype_and_fused_layout(tmp_path):
    model = lora_model(tmp_path)
    params = lora_parameters(model)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in params)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora" not in n)
    state = lora_state_dict(model)
    # 10 layers per double block, 3 per single block, each down/up/alpha.
    assert len(state) == 3 * (2 * 10 + 2 * 3)
    assert state["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"].shape == (4, 32)
    assert state["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"].shape == (96, 4)
    assert state["lora_unet_single_blocks_1_linear1.lora_up.weight"].shape == (3 * 32 + 128, 4)
    assert state["lora_unet_double_blocks_1_txt_mod_lin.lora_up.weight"].shape == (6 * 32, 4)
    assert float(state["lora_unet_single_blocks_0_linear2.alpha"]) == 2.0
    single_only = lora_model(tmp_path, train_blocks="single")
    assert all(key.startswith("lora_unet_single_blocks_") for key in lora_state_dict(single_only))


@pytest.mark.parametrize("mem_eff", [False, True])
def test_saved_lora_reloads_exactly(tmp_path, mem_eff):
    model = lora_model(tmp_path)
    path = tmp_path / "out" / "ohwx.safetensors"
    metadata = build_metadata(dict(default_values(), network_dim=4, network_alpha=2.0), epoch=3, steps=30,
                              started_at=1700000000, finished_at=1700000600)
    save_lora(model, path, precision="float", metadata=metadata, mem_eff=mem_eff)
    assert sorted(p.name for p in path.parent.iterdir()) == ["ohwx.safetensors"]
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata() == metadata
        for key, tensor in lora_state_dict(model).items():
            assert torch.equal(handle.get_tensor(key), tensor), key
    fresh = lora_model(tmp_path, seed=7)
    load_lora(fresh, path)
    inputs = flux_inputs()
    with torch.no_grad():
        torch.testing.assert_close(fresh(**inputs).sample, model(**inputs).sample, atol=1e-6, rtol=0)


def test_metadata_holds_the_sd_scripts_keys_as_strings():
    metadata = build_metadata(default_values(), epoch=2, steps=20, started_at=1700000000)
    for key in ("ss_network_dim", "ss_network_alpha", "ss_network_module", "ss_base_model_version", "ss_output_name",
                "ss_learning_rate", "ss_optimizer", "ss_num_epochs", "ss_epoch", "ss_steps", "ss_max_train_steps",
                "ss_training_started_at", "ss_training_finished_at", "ss_fp8_base", "ss_guidance_scale",
                "ss_timestep_sampling", "ss_discrete_flow_shift", "ss_model_prediction_type"):
        assert isinstance(metadata[key], str), key
    assert (metadata["ss_base_model_version"], metadata["modelspec.architecture"], metadata["ss_network_dim"],
            metadata["ss_epoch"], metadata["ss_steps"]) == ("flux1", "flux-1-dev/lora", "64", "2", "20")


def test_fp16_save_and_mismatched_rank_is_a_clear_error(tmp_path):
    model = lora_model(tmp_path)
    path = tmp_path / "half.safetensors"
    save_lora(model, path, precision="fp16", mem_eff=True)
    with safe_open(str(path), "pt") as handle:
        assert handle.get_tensor("lora_unet_double_blocks_0_img_mlp_0.lora_up.weight").dtype == torch.float16
    other = lora_model(tmp_path, rank=8)
    with pytest.raises(ModelFileError, match="rank 4, but network_dim is 8; set network_dim to 4"):
        load_lora(other, path)


def test_diffusers_peft_layout_loads_exactly(tmp_path):
    model = lora_model(tmp_path)
    from peft.utils import get_peft_model_state_dict

    # diffusers files carry no alpha: their scale is 1, so the alpha/rank scale is baked into B.
    scale = 2.0 / 4
    peft_state = {"transformer." + k: v.clone() * (scale if ".lora_B." in k else 1.0)
                  for k, v in get_peft_model_state_dict(model).items()}
    path = tmp_path / "peft.safetensors"
    save_file(peft_state, str(path))
    fresh = lora_model(tmp_path, seed=3)
    load_lora(fresh, path)
    inputs = flux_inputs()
    with torch.no_grad():
        torch.testing.assert_close(fresh(**inputs).sample, model(**inputs).sample, atol=1e-6, rtol=0)


def test_diffusers_kohya_converter_accepts_our_file_at_flux_dev_width(tmp_path):
    """At FLUX.1-dev's real widths and block counts (rank 1 keeps it small), diffusers'
    own kohya converter maps every key of the file we write."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    with init_empty_weights():
        model = FluxTransformer2DModel.from_config(FLUX1_DEV.diffusers_config())
    add_lora(model, rank=1, alpha=1.0)
    for module in model.modules():  # materialise only the rank-1 adapters
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            for layer in (module.lora_A["default"], module.lora_B["default"]):
                layer.to_empty(device="cpu")
                torch.nn.init.normal_(layer.weight)
    for modules in model._fluxlora_layers.values():  # re-tie after to_empty
        first = model.get_submodule(modules[0])
        for path in modules[1:]:
            model.get_submodule(path).lora_A["default"].weight = first.lora_A["default"].weight
    path = tmp_path / "dev-rank1.safetensors"
    save_lora(model, path, precision="float", mem_eff=True)
    from safetensors.torch import load_file

    ours = load_file(str(path))
    assert len(ours) == 3 * (19 * 10 + 38 * 3)
    converted = _convert_kohya_flux_lora_to_diffusers(dict(ours))
    lora_modules = {k.rsplit(".lora_", 1)[0].removeprefix("transformer.") for k in converted}
    expected = {path for paths in model._fluxlora_layers.values() for path in paths}
    assert lora_modules == expected
    # The split of the fused qkv up matrix lands where our adapters hold it.
    up = ours["lora_unet_double_blocks_3_img_attn_qkv.lora_up.weight"]
    assert torch.equal(converted["transformer.transformer_blocks.3.attn.to_k.lora_B.weight"], up[3072:6144])


def test_header_reader_reads_no_weights(tmp_path):
    path = tmp_path / "flux.safetensors"
    write_tiny_flux(path)
    size = path.stat().st_size
    (length,) = struct.unpack("<Q", path.read_bytes()[:8])
    header = read_header(path)
    assert header.data_bytes == size - 8 - length
    assert header.tensors["img_in.weight"].shape == (32, 64)
