"""CLIP-L and T5-XXL single files into transformers models; their tokenizers, offline-first."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.models.errors import ModelFileError
from engine.models.identify import describe
from engine.models.safetensors_header import read_header, read_tensor_into

CLIP_EXPECTED = "the CLIP-L text encoder, clip_l.safetensors"
T5_EXPECTED = "the T5-XXL text encoder, e.g. t5xxl_fp16.safetensors"
STANDARD_TOKENIZERS = {"clip_l": "openai/clip-vit-large-patch14", "t5xxl": "google/t5-v1_1-xxl"}


def _count(shapes, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in shapes if k.startswith(prefix)})


def load_clip_l(path: str | Path, dtype: torch.dtype = torch.float32):
    from safetensors import safe_open
    from transformers import CLIPTextConfig, CLIPTextModel

    path = Path(path)
    shapes = read_header(path, CLIP_EXPECTED).shapes()
    embedding = shapes.get("text_model.embeddings.token_embedding.weight")
    if embedding is None:
        raise ModelFileError(f"{path}: this looks like {describe(shapes)}; expected {CLIP_EXPECTED}")
    vocab, hidden = embedding
    config = CLIPTextConfig(
        vocab_size=vocab, hidden_size=hidden,
        intermediate_size=shapes["text_model.encoder.layers.0.mlp.fc1.weight"][0],
        num_hidden_layers=_count(shapes, "text_model.encoder.layers."),
        num_attention_heads=max(1, hidden // 64),  # CLIP-L: 768 wide, 12 heads of 64
        max_position_embeddings=shapes["text_model.embeddings.position_embedding.weight"][0],
        hidden_act="quick_gelu", bos_token_id=min(vocab - 2, 49406), pad_token_id=vocab - 1,
        eos_token_id=2,  # the legacy rule of clip-vit-large-patch14: pool at the highest token id
        torch_dtype=dtype,
    )
    model = CLIPTextModel(config)
    # The file names tensors text_model.*; the model may or may not use that prefix.
    keep_prefix = any(k.startswith("text_model.") for k in model.state_dict())
    with safe_open(str(path), framework="pt") as handle:
        state = {(k if keep_prefix else k.removeprefix("text_model.")): handle.get_tensor(k).to(dtype)
                 for k in handle.keys() if k.startswith("text_model.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    if missing or unexpected:
        raise ModelFileError(f"{path}: incomplete CLIP-L ({(missing or unexpected)[:3]}); expected {CLIP_EXPECTED}")
    return model.to(dtype).eval().requires_grad_(False)


def load_t5(path: str | Path, dtype: torch.dtype = torch.float32, device="cpu"):
    """T5's encoder, each tensor read into `dtype` and moved to `device` before the next is read,
    so RAM holds one tensor of it at a time when `device` is the GPU."""
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from transformers import T5Config, T5EncoderModel

    path = Path(path)
    header = read_header(path, T5_EXPECTED)
    shapes = header.shapes()
    bias = shapes.get("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    embedding = shapes.get("shared.weight") or shapes.get("encoder.embed_tokens.weight")
    if embedding is None or bias is None:
        raise ModelFileError(f"{path}: this looks like {describe(shapes)}; expected {T5_EXPECTED}")
    if "scaled_fp8" in shapes:
        raise ModelFileError(f"{path}: a 'scaled fp8' T5 (ComfyUI's *_scaled.safetensors) is not supported; "
                             "use t5xxl_fp16.safetensors or t5xxl_fp8_e4m3fn.safetensors")
    vocab, d_model = embedding
    buckets, heads = bias
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in shapes
    wi = "wi_0" if gated else "wi"
    config = T5Config(
        vocab_size=vocab, d_model=d_model, num_heads=heads, relative_attention_num_buckets=buckets,
        d_kv=shapes["encoder.block.0.layer.0.SelfAttention.q.weight"][0] // heads,
        d_ff=shapes[f"encoder.block.0.layer.1.DenseReluDense.{wi}.weight"][0],
        num_layers=_count(shapes, "encoder.block."),
        feed_forward_proj="gated-gelu" if gated else "relu", torch_dtype=dtype,
    )
    # T5-XXL has 4.7 G parameters: build it empty and read each tensor straight into `dtype`,
    # so RAM never holds a randomly initialised fp32 copy (19 GB) next to the weights.
    with init_empty_weights():
        model = T5EncoderModel(config)
    expected = dict(model.named_parameters(remove_duplicate=False))
    loaded = {}
    with open(path, "rb", buffering=0) as handle:
        for name, info in header.tensors.items():
            if name not in expected or tuple(info.shape) != tuple(expected[name].shape):
                if name.startswith(("encoder.", "shared.")):
                    raise ModelFileError(f"{path}: {name} {tuple(info.shape)} does not fit a T5 encoder; "
                                         f"expected {T5_EXPECTED}")
                continue  # a decoder or lm_head in a full T5 checkpoint
            tensor = torch.empty(info.shape, dtype=dtype)
            read_tensor_into(handle, path, header, name, tensor)
            loaded[name] = tensor.to(device)
            del tensor
    # The token embedding is one matrix stored under either or both names.
    for one, other in (("shared.weight", "encoder.embed_tokens.weight"), ("encoder.embed_tokens.weight", "shared.weight")):
        if one in loaded and other in expected:
            loaded.setdefault(other, loaded[one])
    missing = sorted(set(expected) - set(loaded))
    if missing:
        raise ModelFileError(f"{path}: incomplete T5 encoder (missing {missing[:3]}); expected {T5_EXPECTED}")
    for name, tensor in loaded.items():
        set_module_tensor_to_device(model, name, device, value=tensor, dtype=dtype)
    return model.eval().requires_grad_(False)


def load_tokenizers(clip_l_tokenizer_path: str = "", t5xxl_tokenizer_path: str = ""):
    """(CLIP tokenizer, T5 tokenizer): from the given folders, else the standard ones from the
    Hugging Face cache (downloaded when online)."""
    return (_tokenizer("clip_l", clip_l_tokenizer_path, "clip_l_tokenizer_path"),
            _tokenizer("t5xxl", t5xxl_tokenizer_path, "t5xxl_tokenizer_path"))


def _tokenizer(kind: str, folder: str, key: str):
    from transformers import AutoTokenizer

    if folder:
        if not Path(folder).is_dir():
            raise ModelFileError(f"{key}: folder {folder} not found; choose a folder with the tokenizer files or leave it empty")
        try:
            return AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as exc:
            raise ModelFileError(f"{key}: {folder} holds no usable tokenizer ({exc})") from None
    repo = STANDARD_TOKENIZERS[kind]
    try:
        return AutoTokenizer.from_pretrained(repo)
    except OSError:
        raise ModelFileError(
            f"{key}: the standard tokenizer {repo} is not in the Hugging Face cache and cannot be "
            f"downloaded now; connect once to download it, or set {key} to a folder holding it"
        ) from None
