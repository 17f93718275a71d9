"""The one line under each model field, from the file's header."""

import json

import torch
from safetensors.torch import save_file

from engine.models.describe import describe_field_file, strip_path_quotes


def test_right_files_are_named_with_precision_and_size(tiny_model_files, tmp_path):
    v = tiny_model_files.values
    assert describe_field_file("pretrained_model_name_or_path", v["pretrained_model_name_or_path"]) == (
        "FLUX.1-style (width 32, guidance) transformer, bf16, 1 + 1 blocks")
    assert describe_field_file("ae", v["ae"]) == "FLUX VAE, fp32"
    assert describe_field_file("clip_l", v["clip_l"]) == "CLIP text encoder, fp16, 1 layers"
    assert describe_field_file("t5xxl", v["t5xxl"]) == "T5 text encoder, fp16, 1 layers, width 32"


def test_full_size_header_reads_as_flux_dev_fp8(tmp_path):
    """A header-only FLUX.1-dev: the shapes of the real file, no weights allocated."""
    from engine.models.flux import FLUX1_DEV

    w, mlp = FLUX1_DEV.width, FLUX1_DEV.mlp_hidden
    shapes = {"img_in.weight": (w, 64), "txt_in.weight": (w, 4096), "vector_in.in_layer.weight": (w, 768),
              "guidance_in.in_layer.weight": (w, 256), "double_blocks.0.img_mlp.0.weight": (mlp, w),
              "double_blocks.0.img_attn.norm.query_norm.scale": (128,)}
    shapes.update({f"double_blocks.{i}.img_attn.qkv.weight": (3 * w, w) for i in range(19)})
    shapes.update({f"single_blocks.{i}.linear1.weight": (3 * w + mlp, w) for i in range(38)})
    header, offset = {}, 0
    for name, shape in shapes.items():
        dtype = "F8_E4M3" if "blocks." in name and len(shape) == 2 else "BF16"
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset]}
    raw = json.dumps(header).encode()
    path = tmp_path / "flux1-dev-fp8.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw)
    assert describe_field_file("pretrained_model_name_or_path", str(path)) == "FLUX.1-dev transformer, fp8, 19 + 38 blocks"


def test_wrong_missing_and_quoted_files(tiny_model_files, tmp_path):
    v = tiny_model_files.values
    assert describe_field_file("pretrained_model_name_or_path", v["ae"]) == (
        "this is the FLUX VAE (ae.safetensors), not a transformer")
    assert describe_field_file("ae", v["t5xxl"]) == "this is a T5 text encoder, not the VAE"
    assert describe_field_file("t5xxl", str(tmp_path / "nope.safetensors")) == "not found"
    assert describe_field_file("clip_l", f'"{v["clip_l"]}"') == "CLIP text encoder, fp16, 1 layers"
    assert describe_field_file("clip_l", "") == ""
    lora = tmp_path / "l.safetensors"
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(4, 32),
               "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(96, 4)}, str(lora),
              metadata={"ss_epoch": "3", "ss_steps": "18"})
    assert describe_field_file("network_weights", str(lora)) == "FLUX.1 LoRA, rank 4, fp32, epoch 3, 18 steps"
    assert describe_field_file("pretrained_model_name_or_path", str(lora)) == "this is a LoRA, not a transformer"
    (tmp_path / "text.safetensors").write_text("hello, this is a text file")
    assert describe_field_file("ae", str(tmp_path / "text.safetensors")).startswith("not a safetensors file")
    assert strip_path_quotes('  "C:\\My Models\\ae.safetensors" ') == "C:\\My Models\\ae.safetensors"
