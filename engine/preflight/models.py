"""Model files checked from their headers only: is each file what its field asks for, whole, and
do the four fit together; tokenizers resolvable without loading anything large."""

from __future__ import annotations

import os
from pathlib import Path

from engine.models.errors import ModelFileError
from engine.models.identify import describe, kind
from engine.models.safetensors_header import Header, read_header
from engine.schema import OPTIONS

FIELDS = {  # key -> (kind, what the field needs)
    "pretrained_model_name_or_path": ("flux", "a FLUX.1 transformer such as flux1-dev.safetensors"),
    "ae": ("vae", "the FLUX VAE, ae.safetensors"),
    "clip_l": ("clip", "the CLIP-L text encoder, clip_l.safetensors"),
    "t5xxl": ("t5", "the T5-XXL text encoder, e.g. t5xxl_fp16.safetensors"),
}
_HOME_OF_KIND = {kind_: key for key, (kind_, _) in FIELDS.items()} | {"lora": "network_weights"}


def check_model_files(values: dict) -> tuple[list[str], dict[str, Header]]:
    """(problems, header of each usable file by key)."""
    problems, headers = [], {}
    for key, (wanted, expected) in FIELDS.items():
        text = values.get(key, "")
        if not text.strip():
            problems.append(f"{key}: empty; choose {expected}")
            continue
        try:
            header = read_header(text, expected)
        except ModelFileError as exc:
            problems.append(f"{key}: {exc}")
            continue
        problem = _kind_problem(key, Path(text), header, wanted, expected)
        if problem:
            problems.append(problem)
        else:
            headers[key] = header
    problems += _fit_problems(headers)
    return problems, headers


def _kind_problem(key: str, path: Path, header: Header, wanted: str, expected: str) -> str | None:
    shapes = header.shapes()
    found = kind(shapes)
    if found != wanted:
        home = _HOME_OF_KIND.get(found)
        where = f" (it belongs in {OPTIONS[home].label})" if home and home != key else ""
        what = describe(shapes).removesuffix(", not a base model")
        return f"{key}: {path.name} is {what}, not {expected}{where}"
    try:
        if wanted == "flux":
            from engine.models.flux import infer_flux_architecture

            infer_flux_architecture(shapes, source=path.name)
        elif wanted == "vae":
            from engine.models.autoencoder import infer_vae_config

            infer_vae_config(shapes, path.name)
    except ModelFileError as exc:
        return f"{key}: {exc}"
    if wanted == "t5" and "scaled_fp8" in shapes:
        return (f"{key}: {path.name} is a 'scaled fp8' T5 (ComfyUI's *_scaled.safetensors), which FluxLoRA "
                "cannot use; choose t5xxl_fp16.safetensors or t5xxl_fp8_e4m3fn.safetensors")
    if wanted == "clip" and "text_model.embeddings.token_embedding.weight" not in shapes:
        return f"{key}: {path.name} is a CLIP text encoder without its token embedding; expected {expected}"
    return None


def _fit_problems(headers: dict[str, Header]) -> list[str]:
    """Widths the transformer expects from the text encoders (a tiny or foreign encoder shows here)."""
    if "pretrained_model_name_or_path" not in headers:
        return []
    from engine.models.flux import infer_flux_architecture

    arch = infer_flux_architecture(headers["pretrained_model_name_or_path"].shapes())
    problems = []
    t5 = headers.get("t5xxl")
    if t5 is not None:
        shapes = t5.shapes()
        embedding = shapes.get("shared.weight") or shapes.get("encoder.embed_tokens.weight")
        if embedding and embedding[1] != arch.context_dim:
            problems.append(f"t5xxl: this T5 is {embedding[1]} wide, but the FLUX.1 model file expects "
                            f"{arch.context_dim}; choose the T5-XXL that belongs to it")
    clip = headers.get("clip_l")
    if clip is not None:
        embedding = clip.shapes().get("text_model.embeddings.token_embedding.weight")
        if embedding and embedding[1] != arch.pooled_dim:
            problems.append(f"clip_l: this CLIP is {embedding[1]} wide, but the FLUX.1 model file expects "
                            f"{arch.pooled_dim}; choose CLIP-L (clip_l.safetensors)")
    return problems


def lora_rank(header: Header) -> int | None:
    for name, info in header.tensors.items():
        if name.endswith((".lora_down.weight", ".lora_A.weight")) and info.shape:
            return info.shape[0]
    return None


def check_lora_file(key: str, path: str | Path, network_dim: int, what: str) -> list[str]:
    """A LoRA to start or continue from: a LoRA at all, whole, and of the rank being trained."""
    path = Path(path)
    try:
        header = read_header(path, "a FLUX.1 LoRA file")
    except ModelFileError as exc:
        return [f"{key}: {exc}"]
    if kind(header.shapes()) != "lora":
        return [f"{key}: {path.name} is {describe(header.shapes())}, not a LoRA"]
    from engine.models.lora_ranks import per_layer_ranks

    if per_layer_ranks(path) is not None:
        return []  # a rank per layer: the file decides the layers and ranks (sd-scripts' dim_from_weights)
    rank = lora_rank(header)
    if rank is not None and rank != network_dim:
        return [f"network_dim: {what} is a rank {rank} LoRA, but Network rank (dim) is {network_dim}; "
                f"set it to {rank} to continue from it"]
    return []


# ---- tokenizers ---------------------------------------------------------------------------
_TOKENIZER_FILES = {"clip_l": (("tokenizer.json",), ("vocab.json", "merges.txt")),
                    "t5xxl": (("tokenizer.json",), ("spiece.model",))}


def check_tokenizers(values: dict) -> list[str]:
    from engine.models.text_encoders import STANDARD_TOKENIZERS

    problems = []
    for kind_, key in (("clip_l", "clip_l_tokenizer_path"), ("t5xxl", "t5xxl_tokenizer_path")):
        folder = values.get(key, "")
        if folder:
            problems += _folder_tokenizer(key, Path(folder), _TOKENIZER_FILES[kind_])
        else:
            problems += _standard_tokenizer(key, STANDARD_TOKENIZERS[kind_], _TOKENIZER_FILES[kind_])
    return problems


def _folder_tokenizer(key: str, folder: Path, alternatives) -> list[str]:
    if not folder.is_dir():
        return [f"{key}: folder {folder} not found; choose a folder with the tokenizer files or leave it empty"]
    if not any(all((folder / name).is_file() for name in group) for group in alternatives):
        wanted = " or ".join(" + ".join(group) for group in alternatives)
        return [f"{key}: {folder} holds no tokenizer (expected {wanted}); choose the tokenizer folder itself"]
    return []


def _standard_tokenizer(key: str, repo: str, alternatives) -> list[str]:
    from huggingface_hub import try_to_load_from_cache

    def cached(name: str) -> bool:
        return isinstance(try_to_load_from_cache(repo, name), str)

    if any(all(cached(name) for name in group) for group in alternatives):
        return []
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or os.environ.get("TRANSFORMERS_OFFLINE", "0") not in ("0", "", "false"):
        return [f"{key}: the standard tokenizer {repo} is not in the Hugging Face cache and this computer is set "
                f"to work offline; connect once to download it, or set {OPTIONS[key].label} to a folder holding it"]
    try:  # small files: fetch them now rather than fail minutes later
        from engine.models.text_encoders import _tokenizer

        _tokenizer("clip_l" if key.startswith("clip") else "t5xxl", "", key)
    except ModelFileError as exc:
        return [str(exc)]
    return []
