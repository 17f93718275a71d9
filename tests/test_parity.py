"""Training what sd-scripts trains: expected values derived from sd-scripts' code (read, not copied)."""

from pathlib import Path

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


# ---- Adafactor's arguments, as sd-scripts' get_optimizer / get_scheduler_fix read them ----------
def preset(**changes):
    from engine.preset import default_values

    values = default_values()
    values.update(changes)
    return values


def test_adafactor_without_arguments_takes_its_relative_step_and_schedule():
    from transformers.optimization import AdafactorSchedule

    from engine.training.optim import create_optimizer, create_scheduler, optimizer_problems

    values = preset(optimizer="Adafactor", optimizer_args="", learning_rate=3e-4, unet_lr=1e-4, lr_scheduler="cosine")
    assert optimizer_problems(values) == []
    parameter = torch.nn.Parameter(torch.full((4, 4), 0.5))
    optimizer = create_optimizer(values, [parameter])
    group = optimizer.param_groups[0]
    # transformers' defaults except relative_step forced on: lr None, scale_parameter True.
    assert (group["lr"], group["relative_step"], group["scale_parameter"], group["warmup_init"]) == (
        None, True, True, False)
    scheduler = create_scheduler(values, optimizer, total_steps=10)
    assert isinstance(scheduler, AdafactorSchedule)
    assert scheduler.get_last_lr() == [3e-4]  # learning_rate as initial_lr (not unet_lr), until the first step
    parameter.grad = torch.ones(4, 4)
    optimizer.step()
    scheduler.step()
    # Step 1: min(1e-2, 1/sqrt(1)) times the parameter's RMS (0.5), as scale_parameter=True.
    assert scheduler.get_last_lr() == [pytest.approx(5e-3)]


def test_adafactor_fixed_lr_and_warmup_init_as_sd_scripts_reads_them():
    from engine.training.optim import create_optimizer, optimizer_arguments

    fixed = preset(optimizer="Adafactor", optimizer_args="relative_step=False scale_parameter=False warmup_init=False",
                   unet_lr=2e-4)
    group = create_optimizer(fixed, [torch.nn.Parameter(torch.zeros(2, 2))]).param_groups[0]
    assert (group["lr"], group["relative_step"], group["scale_parameter"]) == (2e-4, False, False)
    # warmup_init=True switches relative_step on (sd-scripts does, transformers requires it).
    assert optimizer_arguments(preset(optimizer="Adafactor", optimizer_args="relative_step=False warmup_init=True")) == {
        "relative_step": True, "warmup_init": True}


@pytest.mark.parametrize("changes, message", [
    (dict(optimizer_args="relative_stp=False"), "optimizer_args: 'relative_stp' is not an argument of Adafactor"),
    (dict(optimizer_args="lr=1e-3"), "optimizer_args: 'lr' is not an argument of Adafactor; set the learning rate"),
    (dict(optimizer_args="relative_step=false"), "optimizer_args: relative_step='false' is not allowed"),
    (dict(optimizer_args="", lr_warmup_steps=10), "lr_warmup_steps: Adafactor with relative_step=True"),
    (dict(optimizer_args="relative_step=False", lr_scheduler="adafactor"), "lr_scheduler: 'adafactor' is Adafactor's"),
    (dict(optimizer="AdamW", optimizer_args="relative_step=False"), "optimizer_args: 'relative_step' is not an argument of AdamW"),
    (dict(optimizer="Prodigy", optimizer_args="", text_encoder_lr=1e-4, unet_lr=1.0),
     "text_encoder_lr: Prodigy needs one learning rate for every group"),
])
def test_optimizer_argument_problems_are_named_before_anything_loads(changes, message):
    from engine.trainer import check_ready

    values = preset(**{"optimizer": "Adafactor", **changes})
    problems = check_ready(values)  # model files are missing too: every problem is listed at once
    assert any(problem.startswith(message) for problem in problems), problems


# ---- kohya's buckets ------------------------------------------------------------------------------
# Expected values worked out from sd-scripts' BucketManager (library/train_util.py) and
# make_bucket_resolutions (library/model_util.py) for the recipe: max_resolution 768,768,
# buckets 256..2048 in 64-pixel steps. Entries: image size -> (bucket, size before the crop).
NO_UPSCALE = {  # bucket_no_upscale on (kohya_ss's default)
    # over the 768x768 area: scaled to it (853x640 from rounding the height: aspect error 0.033
    # against 0.111 for rounding the width to 832 and flooring 624 to 576), then floored to steps
    (1024, 768): ((832, 640), (853, 640)),
    (768, 1024): ((640, 832), (640, 853)),
    (1920, 1080): ((1024, 576), (1024, 576)),
    (1080, 1920): ((576, 1024), (576, 1024)),
    (3000, 2000): ((832, 576), (864, 576)),
    (2000, 3000): ((576, 896), (597, 896)),
    (896, 1593): ((576, 1024), (576, 1024)),  # the example: 512x1024 before
    (1008, 627): ((896, 576), (926, 576)),
    (4000, 500): ((2048, 256), (2048, 256)),  # min/max bucket sides do not apply here
    (1000, 1000): ((768, 768), (768, 768)),
    # within the area: never resized, only cropped to the steps
    (640, 480): ((640, 448), (640, 480)),
    (300, 300): ((256, 256), (300, 300)),
    (768, 768): ((768, 768), (768, 768)),
    (100, 80): ((64, 64), (100, 80)),
}
UPSCALE = {  # bucket_no_upscale off: the predefined bucket of the nearest aspect ratio, covered
    (1024, 768): ((896, 640), (896, 672)),
    (768, 1024): ((640, 896), (672, 896)),
    (1920, 1080): ((1024, 576), (1024, 576)),
    (1080, 1920): ((576, 1024), (576, 1024)),
    (3000, 2000): ((896, 640), (960, 640)),
    (2000, 3000): ((640, 896), (640, 960)),
    (896, 1593): ((576, 1024), (576, 1024)),
    (1008, 627): ((960, 576), (960, 597)),
    (4000, 500): ((2048, 256), (2048, 256)),
    (640, 480): ((896, 640), (896, 672)),  # upscaled
    (300, 300): ((768, 768), (768, 768)),
    (512, 512): ((768, 768), (768, 768)),
}


@pytest.mark.parametrize("no_upscale, table", [(True, NO_UPSCALE), (False, UPSCALE)])
def test_buckets_follow_kohyas_rules(no_upscale, table):
    from engine.training.buckets import fit_image

    values = preset(bucket_no_upscale=no_upscale)
    assert values["max_resolution"] == "768,768" and values["bucket_reso_steps"] == 64
    got = {size: tuple(vars(fit_image(*size, values)).values()) for size in table}
    assert got == table


def test_bucket_list_and_buckets_off():
    from engine.training.buckets import bucket_resolutions, fit_image

    # 512x512 max area, sides 256..1024: width w pairs with the tallest h <= 262144 / w (in 64s).
    # w = 256..1024 gives h = 1024, 768, 640, 576, 512, 448, 384, 320, 320, 256, 256, 256, 256; both ways round.
    assert bucket_resolutions(512, 512, 256, 1024, 64) == [
        (256, 832), (256, 896), (256, 960), (256, 1024), (320, 704), (320, 768), (384, 640), (448, 576),
        (512, 512), (576, 448), (640, 384), (704, 320), (768, 320), (832, 256), (896, 256), (960, 256),
        (1024, 256)]
    # Buckets off: every image covers max_resolution and is centre-cropped, whatever bucket_no_upscale says.
    assert fit_image(1024, 512, preset(enable_bucket=False)) == fit_image(1024, 512, preset(
        enable_bucket=False, bucket_no_upscale=False))
    assert vars(fit_image(1024, 512, preset(enable_bucket=False))) == {"bucket": (768, 768), "resized": (1536, 768)}


def test_bucket_settings_kohya_refuses_are_named():
    from engine.trainer import check_ready

    problems = check_ready(preset(min_bucket_reso=1024, max_resolution="768,768"))
    assert any(p.startswith("min_bucket_reso: 1024 is larger than the smaller side of max_resolution") for p in problems)
    problems = check_ready(preset(max_bucket_reso=512, min_bucket_reso=256, max_resolution="768,768"))
    assert any(p.startswith("max_bucket_reso: 512 is smaller than the larger side") for p in problems)


def test_no_upscale_crops_a_small_image_without_resizing(tmp_path):
    from PIL import Image

    from engine.training.data import fit_to_bucket

    image = Image.new("L", (300, 300))
    image.putdata([x for y in range(300) for x in range(300)][:300 * 300])
    image = image.point(lambda v: v % 256)
    fitted = fit_to_bucket(image, (256, 256), (300, 300))
    assert fitted.size == (256, 256)
    assert fitted.getpixel((0, 0)) == 22  # column 22: (300 - 256) // 2 cut from the left, no resampling


# ---- captions as sd-scripts reads them ------------------------------------------------------------
def test_captions_are_the_first_line_and_an_empty_caption_file_is_named(tmp_path):
    from PIL import Image

    from engine.dataset.layout import DatasetError, scan_train_dir

    folder = tmp_path / "img" / "10_ohwx man"
    folder.mkdir(parents=True)
    for name in ("a", "b", "c"):
        Image.new("RGB", (8, 8)).save(folder / f"{name}.png")
    (folder / "a.txt").write_bytes("\ufeffohwx man, smiling\r\nnotes for me\r\n".encode("utf-8"))
    items = scan_train_dir(tmp_path / "img", ".txt")
    # a: the first line only; b, c: no caption file -> the folder's class tokens
    assert [item.caption for item in items] == ["ohwx man, smiling", "ohwx man", "ohwx man"]
    (folder / "b.txt").write_bytes(b"")
    (folder / "c.txt").write_bytes(b"  \r\nsecond line\r\n")  # first line blank: nothing to train on
    with pytest.raises(DatasetError) as caught:
        scan_train_dir(tmp_path / "img", ".txt")
    message = str(caught.value)
    assert message.startswith(f"train_data_dir: empty caption files {folder / 'b.txt'}; {folder / 'c.txt'}.")


# ---- apply_t5_attn_mask ---------------------------------------------------------------------------
def text_encoding(model_files, **changes):
    import threading

    from engine.training.placement import EncoderPlacement
    from engine.training.reporting import RunReporter
    from engine.training.text import TextEncoding

    values = dict(preset(**model_files.values, text_encoder_lr=0.0), flux1_cache_text_encoder_outputs=False,
                  flux1_cache_text_encoder_outputs_to_disk=False, train_data_dir="", **changes)
    encoding = TextEncoding(values, EncoderPlacement(torch.device("cpu"), False), RunReporter(None), threading.Event())
    encoding.prepare([])
    return encoding


def test_t5_mask_goes_into_t5_itself_and_into_the_cache_key(tiny_model_files):
    masked = text_encoding(tiny_model_files, apply_t5_attn_mask=True)
    plain = text_encoding(tiny_model_files, apply_t5_attn_mask=False)
    caption = "ohwx man"  # a few tokens, the rest of the sequence is padding
    out, reference = masked.encode([caption]), plain.encode([caption])
    tokens = masked.t5_tokenizer([caption], padding="max_length", max_length=masked.t5_length, truncation=True,
                                 return_tensors="pt")
    assert 0 < int(tokens.attention_mask.sum()) < masked.t5_length
    with torch.no_grad():
        expected = masked.t5(tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state.float()
    torch.testing.assert_close(out["t5"], expected, atol=0, rtol=0)
    assert not torch.allclose(out["t5"], reference["t5"])  # padding no longer leaks into the real tokens
    torch.testing.assert_close(out["pooled"], reference["pooled"], atol=0, rtol=0)  # CLIP takes no mask
    assert masked._key(caption) != plain._key(caption)


# ---- CLIP-L LoRA when the text encoder learning rate is not 0 -------------------------------------
def test_recipe_run_trains_clip_l_too_and_its_file_loads_back(tiny_model_files, tmp_path):
    from safetensors import safe_open

    from engine.models.te_lora import add_clip_lora
    from engine.models.text_encoders import load_clip_l
    from engine.trainer import train
    from tests.fixtures.datasets import tiny_training_values

    values = tiny_training_values(tiny_model_files, tmp_path, epoch=1, text_encoder_lr=1e-3)
    assert values["flux1_cache_text_encoder_outputs"] and values["flux1_cache_text_encoder_outputs_to_disk"]
    result = train(values)
    assert result.status == "completed", result.message
    with safe_open(result.lora_path, "pt") as handle:
        keys, metadata = set(handle.keys()), handle.metadata()
        clip_up = handle.get_tensor("lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight")
    clip = load_clip_l(values["clip_l"], torch.float32)
    layers = len(clip.encoder.layers)  # transformers 5: no text_model level
    expected_te = {f"lora_te1_text_model_encoder_layers_{i}_{name}.{part}" for i in range(layers)
                   for name in ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj",
                                "mlp_fc1", "mlp_fc2") for part in ("lora_down.weight", "lora_up.weight", "alpha")}
    assert {k for k in keys if k.startswith("lora_te")} == expected_te  # no T5 (lora_te3_) part
    assert any(k.startswith("lora_unet_double_blocks_0_img_attn_qkv") for k in keys)
    assert clip_up.abs().max() > 0  # it trained
    assert (metadata["ss_network_train_unet_only"], metadata["ss_text_encoder_lr"]) == ("False", "0.001")
    # The text cache holds T5 only: CLIP-L ran live.
    entries = list((Path(values["train_data_dir"]) / ".fluxlora-cache" / "text").glob("*.safetensors"))
    with safe_open(str(entries[0]), "pt") as handle:
        assert set(handle.keys()) == {"t5", "mask"}
    # It loads back into our engine and round-trips its keys and values.
    transformer = tiny_flux(tmp_path)
    add_lora(transformer, values["network_dim"], values["network_alpha"])
    add_clip_lora(clip, values["network_dim"], values["network_alpha"])
    load_lora((transformer, clip), result.lora_path)
    again = tmp_path / "again.safetensors"
    save_lora((transformer, clip), again, precision=values["save_precision"])
    with safe_open(str(again), "pt") as copy, safe_open(result.lora_path, "pt") as original:
        assert set(copy.keys()) == keys
        for key in keys:
            assert torch.equal(copy.get_tensor(key), original.get_tensor(key)), key
    # A transformer-only run cannot silently drop the CLIP-L part.
    from engine.models.errors import ModelFileError

    only = tiny_flux(tmp_path)
    add_lora(only, values["network_dim"], values["network_alpha"])
    with pytest.raises(ModelFileError, match="also holds a CLIP-L LoRA .*set the text encoder learning rate above 0"):
        load_lora(only, result.lora_path)


def test_vram_estimate_counts_the_clip_l_lora_as_built():
    """At CLIP-L's real size (on the meta device), the estimate's CLIP-L LoRA has the tensors
    add_clip_lora makes; with text encoder lr 0 the estimate has no CLIP-L part."""
    from accelerate import init_empty_weights
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.models.te_lora import add_clip_lora
    from engine.preset import load_preset
    from engine.vram import clip_lora_shapes, estimate_vram

    with init_empty_weights():
        clip = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                            num_attention_heads=12, projection_dim=768))
        params = add_clip_lora(clip, 4, 4.0)
    assert sorted(tuple(p.shape) for p in params) == sorted(clip_lora_shapes(4))
    values = load_preset(Path(__file__).parents[1] / "presets" / "flux1-dev-12gb.json").values
    assert values["text_encoder_lr"] == 1e-4
    with_clip = estimate_vram(values)
    without = estimate_vram(dict(values, text_encoder_lr=0.0))
    assert "CLIP-L with its LoRA (trained)" not in without.parts
    assert with_clip.parts["CLIP-L with its LoRA (trained)"] > 246_144_352  # CLIP-L's bf16 weights and more


def test_kohya_import_trains_clip_l_unless_the_config_says_unet_only():
    from engine.preset import parse_preset
    from tests.test_preset import KOHYA_FLUX_CONFIG

    config = dict(KOHYA_FLUX_CONFIG, text_encoder_lr=0.0001)
    assert parse_preset(config).values["text_encoder_lr"] == 1e-4  # sd-scripts trains CLIP-L too
    result = parse_preset(dict(config, network_train_unet_only=True))
    assert result.values["text_encoder_lr"] == 0.0
    assert "network_train_unet_only" not in result.unknown_keys
    assert any(note.startswith("network_train_unet_only: true, so text_encoder_lr is 0") for note in result.notes)
    assert parse_preset(dict(config, network_train_unet_only=False)).values["text_encoder_lr"] == 1e-4


def test_vram_estimate_builds_its_meta_model_without_touching_other_threads():
    """The GUI estimates at Start while the run builds CLIP-L in its own thread: a module built
    in another thread during the estimate is a real (CPU) module."""
    import threading

    from diffusers import FluxTransformer2DModel  # noqa: F401  (imported here, not while timing the threads)

    import engine.vram as vram
    from engine.models.flux import FLUX1_DEV

    vram.stored_weight_bytes.cache_clear()
    inside, done, built = threading.Event(), threading.Event(), {}
    original = torch.nn.Module.register_parameter

    def pausing_register(module, name, param):  # the estimate waits, mid-build, for the other thread
        if threading.current_thread().name == "estimate" and not inside.is_set():
            inside.set()
            done.wait(60)
        return original(module, name, param)

    def other_thread():
        assert inside.wait(60)
        built["layer"] = torch.nn.Linear(4, 4)
        done.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    torch.nn.Module.register_parameter = pausing_register
    try:
        estimate = threading.Thread(target=vram.stored_weight_bytes, args=(FLUX1_DEV, True, 2), name="estimate")
        estimate.start()
        worker.join(30)
        estimate.join(60)
    finally:
        torch.nn.Module.register_parameter = original
    assert built["layer"].weight.device.type == "cpu"
