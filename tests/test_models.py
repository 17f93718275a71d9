import re
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engine.models.autoencoder import load_autoencoder
from engine.models.errors import ModelFileError
from engine.models.flux import FLUX1_DEV, KEEP_WIDE_IN_FP8, infer_flux_architecture, load_flux_transformer
from engine.models.lora import add_lora, load_lora, lora_parameters, lora_state_dict, save_lora
from engine.models.lora_metadata import build_metadata
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


@pytest.mark.parametrize("width, guidance, prefix", [(32, True, ""), (48, False, "model.diffusion_model.")])
def test_fp8_base_stores_block_linears_in_fp8_and_matches_diffusers_casting(tmp_path, width, guidance, prefix):
    path = tmp_path / "flux.safetensors"
    reference = write_tiny_flux(path, width=width, guidance=guidance, dtype=torch.bfloat16, prefix=prefix)
    model = load_flux_transformer(path, fp8=True, compute_dtype=torch.bfloat16)
    wide = {name for name, p in model.named_parameters() if p.dtype == torch.bfloat16}
    fp8 = {name for name, p in model.named_parameters() if p.dtype == torch.float8_e4m3fn}
    assert len(wide) + len(fp8) == len(list(model.parameters()))
    # Every block Linear is fp8, the modulation ("norm1.linear") included, as in sd-scripts.
    assert {"transformer_blocks.0.attn.to_q.weight", "transformer_blocks.0.norm1.linear.weight",
            "transformer_blocks.0.norm1_context.linear.bias", "single_transformer_blocks.0.norm.linear.weight",
            "single_transformer_blocks.0.proj_mlp.weight", "single_transformer_blocks.0.proj_out.weight"} <= fp8
    assert all(name.startswith(("transformer_blocks.", "single_transformer_blocks.")) for name in fp8)
    block_wide = {name for name in wide if name.startswith(("transformer_blocks.", "single_transformer_blocks."))}
    assert all(".norm_" in name for name in block_wide), block_wide
    assert {"x_embedder.weight", "context_embedder.weight", "proj_out.weight", "norm_out.linear.weight",
            "time_text_embed.timestep_embedder.linear_1.weight"} <= wide
    # The reference: the same weights cast by diffusers' own layer-wise casting.
    from diffusers.hooks import apply_layerwise_casting

    reference = reference.to(torch.bfloat16)
    apply_layerwise_casting(reference, torch.float8_e4m3fn, torch.bfloat16, skip_modules_pattern=KEEP_WIDE_IN_FP8)
    inputs = flux_inputs(torch.bfloat16, guidance=guidance)
    with torch.no_grad():
        assert torch.equal(model(**inputs).sample, reference(**inputs).sample)


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


def per_module_adapters(model):
    """(diffusers module path, its lora_A, its lora_B) as diffusers-layout files hold them:
    fused layers split into their parts, each part with a copy of the shared down."""
    for paths in model._fluxlora_layers.values():
        for module_path in paths:
            module = model.get_submodule(module_path)
            yield (module_path, module.lora_A["default"].weight.detach().clone(),
                   module.lora_B["default"].weight.detach().clone())


def assert_loads_exactly(model, path, tmp_path, **fresh_settings):
    """A fresh model with other random adapters, loaded from `path`, computes what `model` does."""
    fresh = lora_model(tmp_path, **fresh_settings)
    load_lora(fresh, path)
    inputs = flux_inputs()
    with torch.no_grad():
        torch.testing.assert_close(fresh(**inputs).sample, model(**inputs).sample, atol=1e-6, rtol=0)


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
    assert_loads_exactly(model, path, tmp_path, seed=7)


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
    # diffusers files carry no alpha: their scale is 1, so the alpha/rank scale is baked into B.
    # They hold one lora_A/lora_B pair per diffusers module (fused layers split into parts).
    scale = 2.0 / 4
    peft_state = {}
    for module_path, down, up in per_module_adapters(model):
        peft_state[f"transformer.{module_path}.lora_A.weight"] = down
        peft_state[f"transformer.{module_path}.lora_B.weight"] = up * scale
    path = tmp_path / "peft.safetensors"
    save_file(peft_state, str(path))
    assert_loads_exactly(model, path, tmp_path, seed=3)


def test_diffusers_kohya_converter_accepts_our_file_at_flux_dev_width(tmp_path):
    """At FLUX.1-dev's real widths and block counts (rank 1 keeps it small), diffusers'
    own kohya converter maps every key of the file we write."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    with init_empty_weights():
        model = FluxTransformer2DModel.from_config(FLUX1_DEV.diffusers_config())
    add_lora(model, rank=1, alpha=1.0)
    # Materialise only the rank-1 adapters; swapping keeps the shared (fused) parameters shared.
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        for module in model.modules():
            if hasattr(module, "lora_A") and "default" in module.lora_A:
                module.lora_A["default"].to_empty(device="cpu")
                module.lora_B["default"].to_empty(device="cpu")
    finally:
        torch.__future__.set_swap_module_params_on_conversion(False)
    for parameter in lora_parameters(model):
        torch.nn.init.normal_(parameter)
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


def _bfl_layer(kohya_name: str) -> str:
    """lora_unet_double_blocks_0_img_attn_qkv -> double_blocks.0.img_attn.qkv (written out here,
    independent of the loader)."""
    kind, index, rest = re.fullmatch(r"lora_unet_(double|single)_blocks_(\d+)_(.+)", kohya_name).groups()
    for flat, dotted in (("_attn_", "_attn."), ("_mlp_", "_mlp."), ("_mod_lin", "_mod.lin"),
                         ("modulation_lin", "modulation.lin")):
        rest = rest.replace(flat, dotted)
    return f"{kind}_blocks.{index}.{rest}"


def test_bfl_names_with_peft_suffixes_load_exactly(tmp_path):
    model = lora_model(tmp_path)
    bfl = {}
    for key, tensor in lora_state_dict(model).items():
        layer, suffix = key.split(".", 1)
        new_suffix = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight", "alpha": "alpha"}[suffix]
        bfl[f"diffusion_model.{_bfl_layer(layer)}.{new_suffix}"] = tensor
    assert "diffusion_model.single_blocks.1.modulation.lin.lora_A.weight" in bfl
    path = tmp_path / "bfl-peft.safetensors"
    save_file(bfl, str(path))
    assert_loads_exactly(model, path, tmp_path, seed=5)


def test_kohya_suffixes_on_diffusers_names_load_exactly(tmp_path):
    model = lora_model(tmp_path, rank=4, alpha=8.0)
    state = {}
    for module_path, down, up in per_module_adapters(model):
        flat = "lora_transformer_" + module_path.replace(".", "_")
        state[f"{flat}.lora_down.weight"], state[f"{flat}.lora_up.weight"] = down, up
        state[f"{flat}.alpha"] = torch.tensor(8.0)
    path = tmp_path / "lora-transformer.safetensors"
    save_file(state, str(path))
    assert_loads_exactly(model, path, tmp_path, rank=4, alpha=1.0, seed=9)  # a different alpha is folded into lora_up


def test_lora_of_fewer_blocks_loads_with_the_rest_adding_nothing(tmp_path):
    single_only = lora_model(tmp_path, train_blocks="single")
    path = tmp_path / "single.safetensors"
    save_lora(single_only, path, precision="float")
    everything = lora_model(tmp_path, train_blocks="all", seed=4)
    load_lora(everything, path)
    state = lora_state_dict(everything)
    assert not state["lora_unet_double_blocks_1_img_mlp_2.lora_up.weight"].any()
    inputs = flux_inputs()
    with torch.no_grad():
        torch.testing.assert_close(everything(**inputs).sample, single_only(**inputs).sample, atol=1e-6, rtol=0)
    # The other way round the file has layers the adapters lack: an error, not a silent drop.
    double_only = lora_model(tmp_path, train_blocks="double")
    with pytest.raises(ModelFileError, match="single.safetensors: has layers this model lacks or does not train"):
        load_lora(double_only, path)


def test_lora_files_that_cannot_be_continued_are_named(tmp_path):
    model = lora_model(tmp_path)
    state = lora_state_dict(model)
    cases = {
        "te.safetensors": (dict(state, **{"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.ones(4, 32)}),
                           "also holds a CLIP-L LoRA (lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight); "
                           "set the text encoder learning rate above 0"),
        "t5.safetensors": (dict(state, **{"lora_te3_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight":
                                          torch.ones(4, 32)}),
                           "has a text-encoder part FluxLoRA does not train (lora_te3_encoder_block_0_layer_0"),
        "extra.safetensors": (dict(state, **{"lora_unet_double_blocks_0_img_attn_qkv.dora_scale": torch.ones(96, 1)}),
                              "tensors of no FLUX.1 LoRA layer (['lora_unet_double_blocks_0_img_attn_qkv.dora_scale'])"),
        "base.safetensors": ({"double_blocks.0.img_attn.qkv.weight": torch.ones(2, 2), "single_blocks.0.linear1.weight": torch.ones(2, 2)},
                             "this looks like a FLUX.1 transformer; expected a FLUX.1 LoRA"),
        "wide.safetensors": ({"lora_unet_single_blocks_0_linear2.lora_down.weight": torch.ones(4, 3072),
                              "lora_unet_single_blocks_0_linear2.lora_up.weight": torch.ones(3072, 4)},
                             "lora_unet_single_blocks_0_linear2 has shapes (4, 3072)/(3072, 4), which do not fit this model"),
    }
    for name, (tensors, message) in cases.items():
        save_file(tensors, str(tmp_path / name))
        with pytest.raises(ModelFileError) as caught:
            load_lora(model, tmp_path / name)
        assert str(caught.value).startswith(str(tmp_path / name)) and message in str(caught.value), str(caught.value)


def test_damaged_headers_and_folders_are_named(tmp_path):
    good = tmp_path / "flux.safetensors"
    write_tiny_flux(good)
    raw = good.read_bytes()
    (tmp_path / "cut head.safetensors").write_bytes(raw[:50])
    (length,) = struct.unpack("<Q", raw[:8])
    damaged = raw[8:8 + length].replace(b'"shape"', b'"shapf"', 1)
    (tmp_path / "damaged.safetensors").write_bytes(raw[:8] + damaged + raw[8 + length:])
    (tmp_path / "notes.safetensors").write_text("just some text, not a model at all", encoding="utf-8")
    (tmp_path / "a folder.safetensors").mkdir()
    cases = {
        "cut head.safetensors": "truncated inside its header (50 bytes); download it again",
        "damaged.safetensors": "damaged safetensors header (entry ",
        "notes.safetensors": "not a safetensors file; expected a FLUX.1 transformer",
        "a folder.safetensors": "is a folder; choose the .safetensors file itself",
    }
    for name, message in cases.items():
        with pytest.raises(ModelFileError) as caught:
            load_flux_transformer(tmp_path / name)
        assert str(caught.value).startswith(str(tmp_path / name)) and message in str(caught.value), str(caught.value)


def test_all_in_one_checkpoint_loads_the_transformer_part(tmp_path):
    path = tmp_path / "flux all in one.safetensors"
    reference = write_tiny_flux(path, dtype=torch.float32, prefix="model.diffusion_model.")
    tensors = load_file(str(path))
    tensors["vae.encoder.conv_in.weight"] = torch.ones(4, 3, 3, 3)
    tensors["text_encoders.clip_l.transformer.text_model.final_layer_norm.weight"] = torch.ones(32)
    save_file(tensors, str(path))
    model = load_flux_transformer(path, compute_dtype=torch.float32)
    inputs = flux_inputs()
    with torch.no_grad():
        assert torch.equal(model(**inputs).sample, reference(**inputs).sample)
    tensors["model.diffusion_model.scaled_fp8"] = torch.zeros(1)
    save_file(tensors, str(path))
    with pytest.raises(ModelFileError, match="a 'scaled fp8' checkpoint .* is not supported"):
        load_flux_transformer(path)


def test_t5_variants_fp8_file_embedding_name_and_full_checkpoint(tmp_path):
    reference = write_tiny_t5(tmp_path / "t5.safetensors")
    tensors = load_file(str(tmp_path / "t5.safetensors"))
    ids = torch.tensor([[5, 6, 7, 1]])
    # float8_e4m3fn file (t5xxl_fp8_e4m3fn.safetensors): loads as the fp8 values, widened.
    save_file({k: v.to(torch.float8_e4m3fn) for k, v in tensors.items()}, str(tmp_path / "t5 fp8.safetensors"))
    fp8 = load_t5(tmp_path / "t5 fp8.safetensors", torch.float32)
    assert torch.equal(fp8.encoder.block[0].layer[0].SelfAttention.q.weight,
                       tensors["encoder.block.0.layer.0.SelfAttention.q.weight"].to(torch.float8_e4m3fn).float())
    # The embedding under encoder.embed_tokens only, plus a decoder and lm_head (a full T5).
    full = {("encoder.embed_tokens.weight" if k == "shared.weight" else k): v for k, v in tensors.items()}
    full["decoder.block.0.layer.0.SelfAttention.q.weight"] = torch.ones(32, 32, dtype=torch.float16)
    full["lm_head.weight"] = torch.ones(4, 32, dtype=torch.float16)
    save_file(full, str(tmp_path / "t5 full.safetensors"))
    model = load_t5(tmp_path / "t5 full.safetensors", torch.float32)
    assert model.shared.weight.data_ptr() == model.encoder.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        assert torch.equal(model(ids).last_hidden_state, load_t5(tmp_path / "t5.safetensors")(ids).last_hidden_state)
        assert torch.allclose(model(ids).last_hidden_state, reference.half().float()(ids).last_hidden_state, atol=1e-5)
    save_file(dict(tensors, scaled_fp8=torch.zeros(1)), str(tmp_path / "t5xxl_fp8_scaled.safetensors"))
    with pytest.raises(ModelFileError, match="t5xxl_fp8_scaled.safetensors: a 'scaled fp8' T5"):
        load_t5(tmp_path / "t5xxl_fp8_scaled.safetensors")
