import json
from pathlib import Path

import pytest

from engine.preset import (
    KOHYA_SS,
    PresetError,
    default_values,
    load_preset,
    parse_preset,
    parse_preset_text,
    save_preset,
)
from engine.preset_overrides import apply_overrides
from engine.schema import OPTIONS, OPTIONS_TABLE, SECTIONS, TYPES
from tests.fixtures.cli import run_engine

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "presets"

# Every key DESIGN.md says the engine relies on.
DESIGN_KEYS = """pretrained_model_name_or_path ae clip_l t5xxl clip_l_tokenizer_path
t5xxl_tokenizer_path train_data_dir reg_data_dir output_dir logging_dir output_name epoch
max_train_steps train_batch_size save_every_n_epochs save_every_n_steps save_precision
mixed_precision fp8_base fp8_base_unet cache_latents cache_latents_to_disk
flux1_cache_text_encoder_outputs flux1_cache_text_encoder_outputs_to_disk optimizer
optimizer_args lr_scheduler lr_warmup_steps learning_rate unet_lr text_encoder_lr network_dim
network_alpha network_weights max_resolution enable_bucket min_bucket_reso max_bucket_reso
caption_extension seed gradient_checkpointing guidance_scale timestep_sampling
discrete_flow_shift model_prediction_type blocks_to_swap highvram mem_eff_save save_state
save_state_on_train_end resume max_grad_norm gradient_accumulation_steps""".split()


def test_schema_declares_every_design_key():
    missing = [key for key in DESIGN_KEYS if key not in OPTIONS]
    assert missing == []


def test_every_option_is_well_formed_and_its_default_valid():
    for option in OPTIONS_TABLE:
        assert option.type in TYPES and option.section in SECTIONS
        assert option.label and option.help, option.key
        if option.choices:
            assert option.default in option.choices, option.key
            assert len(set(option.choices)) == len(option.choices)
    # The defaults together form a valid preset.
    assert parse_preset(default_values()).values == default_values()


def test_every_section_has_options():
    assert {option.section for option in OPTIONS_TABLE} == set(SECTIONS)


def test_each_declared_choice_is_accepted():
    for option in OPTIONS_TABLE:
        for choice in option.choices or ():
            values = dict(default_values(), **{option.key: choice})
            assert parse_preset(values).values[option.key] == choice


def test_save_load_round_trip_keeps_windows_paths_and_unicode(tmp_path):
    values = dict(default_values(),
                  pretrained_model_name_or_path=r"C:\Models\FLUX dev\flux1-dev.safetensors",
                  train_data_dir=r"D:\Datasets\Zoë\img", epoch=25, learning_rate=3e-5,
                  description="Zoë's 12 GB run")
    path = tmp_path / "sub dir" / "p.json"
    save_preset(values, path)
    loaded = load_preset(path)
    assert loaded.values == values
    assert loaded.unknown_keys == [] and loaded.notes == [] and loaded.defaulted_keys == []
    text = path.read_text(encoding="utf-8")
    data = json.loads(text)
    assert list(data) == sorted(data) and data["preset_version"] == 1
    assert text.startswith('{\n  "LoRA_type"')  # indent 2, sorted keys
    assert list(path.parent.iterdir()) == [path]  # no temp files left


def test_missing_keys_take_defaults_and_are_listed():
    result = parse_preset({"preset_version": 1, "epoch": 3})
    assert result.values == dict(default_values(), epoch=3)
    assert "seed" in result.defaulted_keys and "epoch" not in result.defaulted_keys


def test_unknown_keys_are_reported_by_name():
    result = parse_preset({"preset_version": 1, "epochs": 3, "zzz": True})
    assert result.unknown_keys == ["epochs", "zzz"]
    assert result.warnings() == ["Not used by FluxLoRA: epochs, zzz"]


@pytest.mark.parametrize("key, value, message", [
    ("epoch", "15", "epoch: '15' is not allowed, expected a whole number from 1 to 100000"),
    ("epoch", 0, "epoch: 0 is not allowed, expected a whole number from 1 to 100000"),
    ("epoch", 2.5, "epoch: 2.5 is not allowed, expected a whole number from 1 to 100000"),
    ("fp8_base", "yes", "fp8_base: 'yes' is not allowed, expected true or false"),
    ("learning_rate", -1, "learning_rate: -1 is not allowed, expected a number from 0 to 1"),
    ("optimizer", "Lion", "optimizer: 'Lion' is not allowed, expected one of 'AdamW', "
     "'AdamW8bit', 'Adafactor', 'Prodigy'"),
    ("network_dim", True, "network_dim: True is not allowed, expected a whole number from 1 to 1024"),
    ("max_resolution", "768x768", "max_resolution: '768x768' is not allowed, expected width,height such as '768,768'"),
    ("max_resolution", "700,700", "max_resolution: '700,700' is not allowed, expected sides from 64 "
     "to 4096 in multiples of 64, such as '768,768'"),
    ("caption_extension", "txt", "caption_extension: 'txt' is not allowed, expected an extension such as '.txt'"),
    ("output_name", "a/b", "output_name: 'a/b' is not allowed"),
    ("optimizer_args", "relative_step", "optimizer_args: 'relative_step' is not allowed, expected key=value"),
])
def test_bad_values_name_key_value_and_what_is_allowed(key, value, message):
    with pytest.raises(PresetError) as caught:
        parse_preset({"preset_version": 1, key: value}, source="my.json")
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith(message)
    assert str(caught.value).startswith("my.json: ")


def test_all_problems_are_reported_at_once():
    with pytest.raises(PresetError) as caught:
        parse_preset({"preset_version": 1, "epoch": -1, "seed": "x", "min_bucket_reso": 64})
    assert [p.split(":")[0] for p in caught.value.problems] == ["epoch", "seed"]


def test_bucket_range_is_checked():
    with pytest.raises(PresetError, match="min_bucket_reso: 1024 is larger than max_bucket_reso 512"):
        parse_preset({"preset_version": 1, "min_bucket_reso": 1024, "max_bucket_reso": 512})


def test_malformed_json_reports_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "epoch": 15,\n  "seed": 42,,\n}\n')
    with pytest.raises(PresetError) as caught:
        load_preset(path)
    assert caught.value.problems == ["malformed JSON at line 3, column 14: Expecting property name enclosed in double quotes"]
    assert caught.value.source == str(path)


def test_non_object_and_future_version_are_errors():
    with pytest.raises(PresetError, match="a preset is a JSON object"):
        parse_preset_text("[1, 2]")
    with pytest.raises(PresetError, match="preset_version: 2 is not supported, expected 1 .written by a newer FluxLoRA"):
        parse_preset_text('{"preset_version": 2}')


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"preset_version": 1, "epoch": 4}).encode())
    assert load_preset(path).values["epoch"] == 4


def test_save_refuses_invalid_values_and_leaves_old_file(tmp_path):
    path = tmp_path / "p.json"
    save_preset(default_values(), path)
    before = path.read_bytes()
    with pytest.raises(PresetError, match="epoch: 0 is not allowed"):
        save_preset(dict(default_values(), epoch=0), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json"]


def test_overrides_parse_by_schema_type():
    values = apply_overrides(default_values(), ["epoch=3", "fp8_base=false", "learning_rate=5e-5",
                                                "output_dir=C:\\out dir"])
    assert (values["epoch"], values["fp8_base"], values["learning_rate"], values["output_dir"]) == (
        3, False, 5e-5, "C:\\out dir")
    with pytest.raises(PresetError) as caught:
        apply_overrides(default_values(), ["epochs=3", "seed=abc", "noequals"])
    assert caught.value.problems == [
        "epochs: not a FluxLoRA option (did you mean epoch?)",
        "seed: 'abc' is not allowed, expected a whole number from 0 to 4294967295",
        "'noequals': expected key=value",
    ]


# A kohya_ss GUI config as kohya_ss (v25) saves it for a FLUX LoRA, with its usual quirks.
KOHYA_FLUX_CONFIG = {
    "LoRA_type": "Flux1", "flux1_checkbox": True, "model_list": "custom",
    "pretrained_model_name_or_path": "C:/models/flux1-dev.safetensors",
    "ae": "C:/models/ae.safetensors", "clip_l": "C:/models/clip_l.safetensors",
    "t5xxl": "C:/models/t5xxl_fp16.safetensors",
    "train_data_dir": "C:\\lora\\img", "reg_data_dir": "", "output_dir": "C:\\lora\\model",
    "logging_dir": "C:\\lora\\log", "output_name": "ohwx_flux",
    "optimizer": "Adafactor", "optimizer_args": "relative_step=False scale_parameter=False warmup_init=False",
    "max_resolution": "768,768", "xformers": "sdpa", "epoch": 15, "save_every_n_epochs": 1,
    "fp8_base": True, "fp8_base_unet": True, "network_dim": 64, "network_alpha": 64,
    "learning_rate": 0.0001, "unet_lr": 0.0001, "text_encoder_lr": "0.0001",
    "lr_scheduler": "constant", "lr_warmup": 0, "lr_warmup_steps": 0, "max_train_steps": "0",
    "seed": "", "mixed_precision": "bf16", "save_precision": "fp16", "cache_latents": True,
    "cache_latents_to_disk": True, "flux1_cache_text_encoder_outputs": True,
    "flux1_cache_text_encoder_outputs_to_disk": True, "mem_eff_save": True, "highvram": False,
    "gradient_checkpointing": True, "max_grad_norm": 0, "enable_bucket": True,
    "min_bucket_reso": 256, "max_bucket_reso": 2048, "train_batch_size": 1,
    "timestep_sampling": "sigmoid", "discrete_flow_shift": 3.1582, "model_prediction_type": "raw",
    "guidance_scale": 1, "blocks_to_swap": "16", "caption_extension": ".txt",
    "full_bf16": "False", "save_state": False, "resume": "", "network_weights": "",
    "gradient_accumulation_steps": 1, "sample_prompts": "", "sample_every_n_epochs": 0,
    "noise_offset": 0, "clip_skip": 1, "sdxl": False, "v2": False, "color_aug": False,
    "flip_aug": False, "split_mode": False, "additional_parameters": "",
}


def test_kohya_flux_config_imports_with_values_and_unused_keys(tmp_path):
    source = tmp_path / "kohya config.json"
    source.write_text(json.dumps(KOHYA_FLUX_CONFIG, indent=2))
    result = run_engine("preset", "import-kohya", source, tmp_path / "ours.json")
    assert result.returncode == 0, result.stderr
    imported = load_preset(tmp_path / "ours.json")
    values = imported.values
    assert imported.format != KOHYA_SS and imported.unknown_keys == []
    expected = {key: value for key, value in KOHYA_FLUX_CONFIG.items() if key in OPTIONS}
    expected.update(text_encoder_lr=1e-4, max_train_steps=0, seed=42, blocks_to_swap=16,
                    full_bf16=False, guidance_scale=1.0, network_alpha=64.0, max_grad_norm=0.0,
                    lr_warmup=0.0)
    assert {key: values[key] for key in expected} == expected
    assert type(values["guidance_scale"]) is float and type(values["blocks_to_swap"]) is int
    unused = sorted(set(KOHYA_FLUX_CONFIG) - set(OPTIONS))  # whatever the schema does not declare
    assert {"xformers", "sdxl", "additional_parameters"} <= set(unused)
    assert load_preset(source).unknown_keys == unused
    assert "note: Not used by FluxLoRA (no effect on training):\nnote:   - additional_parameters, clip_skip" in result.stderr
    assert "xformers (FluxLoRA always uses PyTorch SDPA attention)" in result.stderr
    assert "Changes training in kohya" not in result.stderr  # nothing in this config does
    assert ("note: Reinterpreted (the value FluxLoRA uses):\nnote:   - save_state_on_train_end = False: not in the "
            "file; kohya's default (FluxLoRA's recipe would use True)\n") in result.stderr
    assert "note: Used as is (" in result.stderr
    assert "note: seed: empty in the file, the default 42 is used" in result.stderr
    assert "note: blocks_to_swap: '16' read as 16" in result.stderr
    assert "note: full_bf16: 'False' read as false" in result.stderr


def test_kohya_config_missing_keys_take_kohyas_defaults_not_our_recipe():
    result = parse_preset({"LoRA_type": "Flux1", "fp8_base": False, "caption_extension": ""})
    values = result.values
    assert (values["fp8_base"], values["fp8_base_unet"], values["timestep_sampling"], values["model_prediction_type"],
            values["guidance_scale"], values["max_grad_norm"], values["caption_extension"]) == (
        False, False, "sigma", "sigma_scaled", 3.5, 1.0, ".caption")
    assert ("fp8_base_unet = False: not in the file; kohya's default (FluxLoRA's recipe would use True)"
            in result.reinterpreted)
    assert ("caption_extension = '.caption': empty in the file, which sd-scripts reads as its default '.caption'"
            in result.reinterpreted)
    assert "caption_extension" not in result.used_as_is() and "fp8_base" in result.used_as_is()
    # Our own presets keep our defaults for missing keys.
    ours = parse_preset({"preset_version": 1, "fp8_base": False}).values
    assert (ours["fp8_base_unet"], ours["timestep_sampling"]) == (True, "sigmoid")


def test_kohya_keys_that_change_training_are_applied_or_reported():
    config = dict(KOHYA_FLUX_CONFIG, max_train_epochs="20", split_mode=True, blocks_to_swap=0,
                  double_blocks_to_swap=6, single_blocks_to_swap=9, train_t5xxl=True, in_dims="[4,0,0,0,4]",
                  img_attn_dim="8", train_double_block_indices="0-3", noise_offset=0.05,
                  sample_prompts="ohwx man --w 512", loraplus_lr_ratio=0, shuffle_caption=False,
                  prior_loss_weight="1", loss_type="l2", network_dropout="0", flip_aug="False")
    result = parse_preset(config)
    values = result.values
    assert (values["epoch"], values["max_train_steps"], values["train_blocks"], values["blocks_to_swap"]) == (
        20, 0, "single", 11)
    assert result.reinterpreted[:4] == [
        "noise_offset = 0.05: sd-scripts does not apply noise_offset to FLUX; neither does FluxLoRA (same result)",
        "max_train_epochs = 20: epoch 20 and max_train_steps 0 (in sd-scripts max_train_epochs overrides epoch "
        "and max_train_steps)",
        "split_mode = true: train_blocks 'single' (kohya_ss then trains the single blocks only); use "
        "blocks_to_swap to save memory",
        "double_blocks_to_swap = 6, single_blocks_to_swap = 9: blocks_to_swap 11 (about the same memory; the LoRA "
        "is the same)",
    ]
    assert result.reinterpreted[4] == ("save_state_on_train_end = False: not in the file; kohya's default "
                                       "(FluxLoRA's recipe would use True)")
    assert result.reinterpreted[5].startswith("not in the file, FluxLoRA's recipe value used: save_every_n_steps 0, lr_scheduler_num_cycles 1, ")
    assert len(result.reinterpreted) == 6
    assert [line.split(" = ")[0] for line in result.unsupported] == [
        "train_t5xxl", "img_attn_dim", "in_dims", "train_double_block_indices", "sample_prompts"]
    assert result.unsupported[0] == "train_t5xxl = True: kohya trains a T5-XXL LoRA too; FluxLoRA keeps T5 frozen"
    # Set keys are never listed as "not used"; off ones (loraplus 0, shuffle_caption false) are.
    for key in ("max_train_epochs", "split_mode", "train_t5xxl", "in_dims", "noise_offset", "sample_prompts"):
        assert key not in result.unknown_keys
    assert {"loraplus_lr_ratio", "shuffle_caption", "prior_loss_weight", "loss_type", "network_dropout",
            "flip_aug"} <= set(result.unknown_keys)
    assert "epoch" not in result.used_as_is() and "blocks_to_swap" not in result.used_as_is()
    titles = [title for title, _ in result.groups()]
    assert titles[:3] == ["Changes training in kohya, not supported here", "Reinterpreted (the value FluxLoRA uses)",
                          "Not used by FluxLoRA (no effect on training)"]
    assert titles[3].startswith("Used as is (")


def test_kohya_seed_0_is_reported_as_kohya_means_random():
    result = parse_preset(dict(KOHYA_FLUX_CONFIG, seed="0"))
    assert result.values["seed"] == 0 and "seed" not in result.used_as_is()
    assert result.reinterpreted[0].startswith("seed = 0: kohya_ss then lets sd-scripts pick a random seed")


def test_kohya_chroma_config_is_refused():
    with pytest.raises(PresetError, match="model_type: 'chroma' is a FLUX variant FluxLoRA does not train"):
        parse_preset(dict(KOHYA_FLUX_CONFIG, model_type="chroma"))
    assert parse_preset(dict(KOHYA_FLUX_CONFIG, model_type="flux")).unknown_keys.count("model_type") == 1


def test_kohya_config_for_sdxl_is_refused():
    config = dict(KOHYA_FLUX_CONFIG, flux1_checkbox=False, LoRA_type="Standard")
    with pytest.raises(PresetError) as caught:
        parse_preset(config)
    assert caught.value.problems[0].startswith("flux1_checkbox: false means this kohya_ss config is not for FLUX.1")
    assert caught.value.problems[1] == "LoRA_type: 'Standard' is not allowed, expected one of 'Flux1'"


def test_kohya_strings_that_are_not_numbers_are_errors():
    with pytest.raises(PresetError, match="epoch: 'fifteen' is not allowed, expected a whole number"):
        parse_preset(dict(KOHYA_FLUX_CONFIG, epoch="fifteen"))
    with pytest.raises(PresetError, match=r"epoch: '2\.5' is not allowed"):
        parse_preset(dict(KOHYA_FLUX_CONFIG, epoch="2.5"))


RECIPE_12GB = {
    "LoRA_type": "Flux1", "save_precision": "fp16", "epoch": 15, "save_every_n_epochs": 1,
    "cache_latents": True, "cache_latents_to_disk": True, "lr_scheduler": "constant",
    "lr_warmup_steps": 0, "optimizer": "Adafactor",
    "optimizer_args": "relative_step=False scale_parameter=False warmup_init=False",
    "max_grad_norm": 0.0, "max_resolution": "768,768", "enable_bucket": True,
    "learning_rate": 1e-4, "text_encoder_lr": 1e-4, "unet_lr": 1e-4, "network_dim": 64,
    "network_alpha": 64.0, "flux1_cache_text_encoder_outputs": True,
    "flux1_cache_text_encoder_outputs_to_disk": True, "mem_eff_save": True, "fp8_base": True,
    "fp8_base_unet": True, "full_bf16": False, "highvram": False, "gradient_checkpointing": True,
    # sd-scripts advises 16; with the CLIP-L LoRA trained too, 18 is the least swap under 11.5 GiB
    # (issue 13: fluxlora estimate and benchmarks/memory_plan.py).
    "blocks_to_swap": 18,
}


def test_shipped_12gb_preset_is_the_recipe():
    values = load_preset(PRESETS / "flux1-dev-12gb.json").values
    assert {key: values[key] for key in RECIPE_12GB} == RECIPE_12GB


@pytest.mark.parametrize("name", ["flux1-dev-12gb", "flux1-dev-16gb", "flux1-dev-24gb"])
def test_shipped_presets_validate_with_empty_paths(name):
    path = PRESETS / f"{name}.json"
    result = load_preset(path)
    # Keys at their default may be left out; the recipe keys the preset exists for are written.
    assert result.unknown_keys == [] and result.notes == []
    assert not set(RECIPE_12GB) & set(result.defaulted_keys)
    path_keys = [o.key for o in OPTIONS_TABLE if o.type in ("file", "dir")]
    assert all(result.values[key] == "" for key in path_keys)
    assert len(result.values["description"]) > 80
    cli = run_engine("preset", "validate", path)
    assert cli.returncode == 0 and cli.stdout.strip() == f"{path}: valid preset"


def test_larger_card_presets_differ_only_where_described():
    base = load_preset(PRESETS / "flux1-dev-12gb.json").values
    for name in ("flux1-dev-16gb", "flux1-dev-24gb"):
        other = load_preset(PRESETS / f"{name}.json").values
        changed = sorted(k for k in base if base[k] != other[k] and k != "description")
        assert changed, name
        description = other["description"]
        for key in changed:
            words = {"blocks_to_swap": "swap", "max_resolution": "resolution", "optimizer": "AdamW8bit",
                     "optimizer_args": "Adafactor", "max_grad_norm": "clipping", "highvram": "highvram"}
            assert words[key] in description, (name, key)


def test_cli_validate_reports_errors_and_exit_code(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"preset_version": 1, "epoch": 0, "optimizer": "Lion"}))
    result = run_engine("preset", "validate", path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: {path}: epoch: 0 is not allowed, expected a whole number from 1 to 100000",
        f"error: {path}: optimizer: 'Lion' is not allowed, expected one of 'AdamW', 'AdamW8bit', 'Adafactor', 'Prodigy'",
    ]
    missing = run_engine("preset", "validate", tmp_path / "nope.json")
    assert missing.returncode == 1 and "nope.json: file not found" in missing.stderr


def test_older_preset_versions_are_upgraded_step_by_step_with_notes():
    from engine.preset_migrations import upgrade

    def one_to_two(data):  # a key renamed
        data["epoch"] = data.pop("epochs")
        return data, ["epochs is now called epoch"]

    def two_to_three(data):  # a meaning changed: the old number counted something else
        data["blocks_to_swap"] = data["blocks_to_swap"] * 2
        return data, [f"blocks_to_swap now counts half-blocks: {data['blocks_to_swap']}"]

    table = {1: one_to_two, 2: two_to_three}
    data, notes = upgrade({"preset_version": 1, "epochs": 3, "blocks_to_swap": 8}, current=3, migrations=table)
    assert data == {"preset_version": 3, "epoch": 3, "blocks_to_swap": 16}
    assert notes == ["preset version 1 -> 2: epochs is now called epoch",
                     "preset version 2 -> 3: blocks_to_swap now counts half-blocks: 16"]
    assert upgrade({"preset_version": 3, "epoch": 1}, current=3, migrations=table) == (
        {"preset_version": 3, "epoch": 1}, [])
    with pytest.raises(ValueError, match="preset_version: 1 files cannot be upgraded .no step to 2."):
        upgrade({"preset_version": 1}, current=2, migrations={})
    with pytest.raises(ValueError, match=r"preset_version: 4 is not supported, expected 1 to 3 \(written by a newer"):
        upgrade({"preset_version": 4}, current=3, migrations=table)
    with pytest.raises(ValueError, match="preset_version: '1' is not supported"):
        upgrade({"preset_version": "1"}, current=3, migrations=table)
