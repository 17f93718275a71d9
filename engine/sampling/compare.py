"""The epoch comparison: the same prompts and seeds through several LoRA files (and the base
model without one), one row per file, saved as one grid image.

Same memory plan as training: the text encoders are loaded only while the prompts are encoded,
the transformer is fp8 and block-swapped as the preset says, and the VAE visits the GPU only to
decode. The transformer gets one adapter at the largest rank of the files; each file's weights
are written into it zero-padded with its alpha/rank scale and the strength folded into lora_up,
so every row computes exactly what its file (at that strength) does.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from engine.events import LOADING, SAMPLING, Log, Progress, SampleImage, emit
from engine.fsutil import atomic_path
from engine.models.errors import ModelFileError
from engine.sampling.generate import SamplingStopped, decode, denoise, visiting
from engine.sampling.grid import BASE_LABEL, make_grid
from engine.sampling.prompts import SamplePrompt, parse_prompt_line, prompt_lines
from engine.sampling.row_weights import file_rank, has_clip_part, set_row_weights

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}


@dataclass
class CompareResult:
    status: str  # "completed" or "stopped"
    grid_path: Path | None = None
    rows: list[str] = field(default_factory=list)
    images: list[list[Image.Image]] = field(default_factory=list)  # [row][prompt], as in the grid
    message: str = ""


def run_lora_files(output_dir: str | Path, output_name: str) -> list[Path]:
    """Every LoRA a run wrote, in training order: per-epoch files, per-step files, then the final one."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    pattern = re.compile(rf"^{re.escape(output_name)}-(\d{{6}}|step\d{{8}})\.safetensors$")
    numbered = []
    for path in folder.iterdir():
        match = pattern.match(path.name)
        if match:
            tag = match.group(1)
            numbered.append((0 if tag.isdigit() else 1, int(tag.removeprefix("step")), path))
    files = [path for *_, path in sorted(numbered)]
    final = folder / f"{output_name}.safetensors"
    return files + ([final] if final.is_file() else [])


def compare_prompts(lines_or_text: str | list[str], seed: int) -> list[SamplePrompt]:
    """Prompt lines in kohya's format (or the sample_prompts value); prompt i without --d gets seed + i."""
    if isinstance(lines_or_text, str):
        lines, where = prompt_lines(lines_or_text)
    else:
        lines, where = [line.strip() for line in lines_or_text if line.strip()], "--prompt"
    if not lines:
        raise ValueError(f"{where}: no prompts; give at least one")
    return [parse_prompt_line(line, index, seed + index, where) for index, line in enumerate(lines)]


def compare_loras(values: dict, loras: list[str | Path], prompts: list[SamplePrompt], *, strength: float = 1.0,
                  include_base: bool = True, out_path: str | Path | None = None, on_event=None,
                  stop: threading.Event | None = None) -> CompareResult:
    """Sample every prompt with every LoRA (rows) and without (first row); write one grid PNG."""
    from engine.sampling.text import encode_with_fresh_encoders

    loras = [Path(p) for p in loras]
    for path in loras:
        if not path.is_file():
            raise ModelFileError(f"--lora: file {path} not found")
    if not loras and not include_base:
        raise ValueError("nothing to compare: give LoRA files, or include the row without a LoRA")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = _DTYPES["no" if device.type == "cpu" and values["mixed_precision"] == "fp16" else values["mixed_precision"]]
    emit(on_event, Progress(LOADING))
    emit(on_event, Log(f"encoding {len(prompts)} prompts"))
    guided = [p for p in prompts if p.cfg_scale != 1.0]  # only true CFG needs the negative prompt
    # A file with a CLIP-L part (text_encoder_lr > 0) changes the pooled prompt too: CLIP-L stays for it.
    clip_kit = None
    texts = encode_with_fresh_encoders(values, [p.prompt for p in prompts] + [p.negative for p in guided], device,
                                       keep_clip=any(has_clip_part(path) for path in loras))
    if isinstance(texts, tuple):
        texts, clip_kit = texts
        from engine.models.te_lora import add_clip_lora

        rank = max(file_rank(path) for path in loras)
        add_clip_lora(clip_kit[1], rank, float(rank))
        clip_kit[1].eval().requires_grad_(False)
    negatives = dict(zip((p.index for p in guided), texts[len(prompts):]))
    conditions = [(texts[i], negatives.get(p.index)) for i, p in enumerate(prompts)]
    transformer = _load_transformer(values, loras, device, dtype, on_event)
    from engine.models.autoencoder import load_autoencoder

    vae = load_autoencoder(values["ae"], torch.bfloat16 if device.type == "cuda" else torch.float32)
    vae.to(device if values["highvram"] else "cpu")
    rows = ([None] if include_base else []) + loras
    images: list[list[Image.Image]] = []
    total, done = len(rows) * len(prompts), 0
    try:
        for row in rows:
            set_row_weights(transformer, clip_kit[1] if clip_kit else None, row, strength)
            images.append([])
            for prompt, (text, negative) in zip(prompts, _with_row_pooled(conditions, prompts, clip_kit, device)):
                emit(on_event, Progress(SAMPLING, done, total))
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    latents = denoise(transformer, prompt, text, negative, device=device, dtype=dtype,
                                      t5_mask=values["apply_t5_attn_mask"], stop=stop)
                with visiting(vae, device, values["highvram"]):
                    images[-1].append(decode(vae, latents, prompt.width, prompt.height))
                done += 1
    except SamplingStopped:
        return CompareResult("stopped", message="stopped; no grid was written")
    emit(on_event, Progress(SAMPLING, total, total))
    labels = [BASE_LABEL if row is None else row_label(row) for row in rows]
    grid = make_grid(images, labels, [p.prompt for p in prompts], strength=strength)
    path = Path(out_path) if out_path else (Path(values["output_dir"]) / "sample" /
                                            f"{values['output_name']}_compare_{time.strftime('%Y%m%d%H%M%S')}.png")
    with atomic_path(path) as temporary:
        grid.save(temporary, format="PNG")
    emit(on_event, SampleImage(str(path), "comparison grid", 0, 0, None))
    return CompareResult("completed", path, labels, images, f"{len(rows)} x {len(prompts)} grid: {path}")


def _with_row_pooled(conditions, prompts: list[SamplePrompt], clip_kit, device):
    """The conditions with CLIP-L's pooled output as this row's CLIP-L LoRA gives it (unchanged without one)."""
    if clip_kit is None:
        return conditions
    from engine.sampling.text import pooled_outputs

    rows = []
    for prompt, (text, negative) in zip(prompts, conditions):
        pooled = pooled_outputs(clip_kit, [prompt.prompt] + ([prompt.negative] if negative is not None else []), device)
        rows.append((dict(text, pooled=pooled[0]), dict(negative, pooled=pooled[1]) if negative is not None else None))
    return rows


def _load_transformer(values: dict, loras: list[Path], device, dtype, on_event):
    from engine.models.flux import load_flux_transformer
    from engine.models.lora import add_lora

    swap = values["blocks_to_swap"] if device.type == "cuda" else 0
    fp8 = values["fp8_base"] or values["fp8_base_unet"]
    emit(on_event, Log(f"loading the transformer{' in fp8' if fp8 else ''}"))
    transformer = load_flux_transformer(values["pretrained_model_name_or_path"], fp8=fp8, compute_dtype=dtype,
                                        device="cpu" if swap else device)
    if loras:
        rank = max(file_rank(path) for path in loras)
        add_lora(transformer, rank, float(rank), "all")  # alpha = rank: scale 1, the files' scales go into lora_up
    if swap:
        from engine.offload import BlockSwapper

        transformer._fluxlora_swapper = BlockSwapper(transformer, swap, device)
        BlockSwapper.move_rest(transformer, device)
    transformer.eval().requires_grad_(False)
    return transformer


def row_label(path: Path) -> str:
    """The file name, with the epoch from its metadata when the name has none (the final file)."""
    from engine.models.safetensors_header import read_header

    if re.search(r"-(\d{6}|step\d{8})$", path.stem):
        return path.stem
    epoch = (read_header(path, "a FLUX.1 LoRA file").metadata or {}).get("ss_epoch")
    return f"{path.stem} (epoch {epoch})" if epoch else path.stem
