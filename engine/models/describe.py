"""One line about a model field's file, read from its header only: what the file is, its
precision and size, or why it is the wrong file. For the page, under each path field."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from engine.models.errors import ModelFileError
from engine.models.identify import describe
from engine.models.safetensors_header import Header, read_header

_PRECISION = {"F8_E4M3": "fp8", "F8_E5M2": "fp8 (e5m2)", "BF16": "bf16", "F16": "fp16", "F32": "fp32"}
# field -> (what it must be, the identify.describe() wording of a right file)
FIELDS = {
    "pretrained_model_name_or_path": ("a transformer", "a FLUX.1 transformer"),
    "ae": ("the VAE", "the FLUX VAE (ae.safetensors)"),
    "clip_l": ("the CLIP-L text encoder", "a CLIP text encoder"),
    "t5xxl": ("the T5 text encoder", "a T5 text encoder"),
    "network_weights": ("a LoRA", "a LoRA, not a base model"),
}


def strip_path_quotes(text: str) -> str:
    """Windows "Copy as path" gives "C:\\...\\file.safetensors" with the quotes; they are not part of it."""
    text = (text or "").strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def describe_field_file(key: str, path: str) -> str:
    """E.g. "FLUX.1-dev transformer, fp8, 19 + 38 blocks", "this is the FLUX VAE (ae.safetensors), not
    a transformer", "not found". Empty text for an empty field."""
    path = strip_path_quotes(path)
    if not path:
        return ""
    file = Path(path)
    if key == "resume":
        return _describe_state(file)
    if not file.exists():
        return "not found"
    if file.is_dir():
        return "a folder; choose the .safetensors file itself"
    try:
        header = read_header(file)
    except ModelFileError as exc:
        return str(exc).removeprefix(f"{file}: ")
    kind = describe(header.shapes())
    wanted, right = FIELDS[key]
    if kind != right:
        return f"this is {kind.removesuffix(', not a base model')}, not {wanted}"
    return {"pretrained_model_name_or_path": _transformer, "ae": _vae, "clip_l": _clip, "t5xxl": _t5,
            "network_weights": _lora}[key](header)


def _precision(header: Header, fragment: str = "") -> str:
    counts = Counter(info.dtype for name, info in header.tensors.items() if fragment in name and len(info.shape) == 2)
    if not counts:
        counts = Counter(info.dtype for info in header.tensors.values())
    return _PRECISION.get(counts.most_common(1)[0][0], counts.most_common(1)[0][0].lower())


def _transformer(header: Header) -> str:
    from engine.models.flux import FLUX1_DEV, infer_flux_architecture

    try:
        arch = infer_flux_architecture(header.shapes())
    except ModelFileError as exc:
        return str(exc).split("; ", 1)[-1]
    full = (arch.width, arch.num_double, arch.num_single) == (FLUX1_DEV.width, FLUX1_DEV.num_double, FLUX1_DEV.num_single)
    name = ("FLUX.1-dev" if arch.has_guidance else "FLUX.1-schnell-style") if full else \
        f"FLUX.1-style (width {arch.width}{', guidance' if arch.has_guidance else ', no guidance'})"
    return f"{name} transformer, {_precision(header, 'blocks.')}, {arch.num_double} + {arch.num_single} blocks"


def _vae(header: Header) -> str:
    return f"FLUX VAE, {_precision(header)}"


def _clip(header: Header) -> str:
    layers = len({n.split(".")[3] for n in header.tensors if n.startswith("text_model.encoder.layers.")})
    width = header.tensors.get("text_model.embeddings.token_embedding.weight")
    label = "CLIP-L" if width is not None and width.shape[1] == 768 else "CLIP"
    return f"{label} text encoder, {_precision(header)}, {layers} layers"


def _t5(header: Header) -> str:
    layers = len({n.split(".")[2] for n in header.tensors if n.startswith("encoder.block.")})
    width = next((info.shape[1] for n, info in header.tensors.items() if n.endswith("SelfAttention.q.weight")), 0)
    label = "T5-XXL" if width == 4096 and layers == 24 else "T5"
    return f"{label} text encoder, {_precision(header, 'encoder.block.')}, {layers} layers, width {width}"


def _lora(header: Header) -> str:
    ranks = [info.shape[0] for n, info in header.tensors.items() if n.endswith((".lora_down.weight", ".lora_A.weight"))]
    meta = header.metadata
    parts = [f"FLUX.1 LoRA, rank {max(ranks) if ranks else '?'}", _precision(header)]
    if meta.get("ss_epoch"):
        parts.append(f"epoch {meta['ss_epoch']}")
    if meta.get("ss_steps"):
        parts.append(f"{meta['ss_steps']} steps")
    return ", ".join(parts)


def _describe_state(folder: Path) -> str:
    from engine.train_state import StateError, read_train_state

    if not folder.exists():
        return "not found"
    if not (folder / "train_state.json").is_file():
        return "not a state folder (no train_state.json in it)"
    try:
        state = read_train_state(folder)
    except StateError as exc:
        return str(exc)
    return f"state at step {state.current_step} (epoch {state.current_epoch})"
