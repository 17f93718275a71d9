"""How much a run will write (caches, LoRA files, states) against the free space where it goes.

Sizes come from the transformer's header (LoRA layer shapes at the preset's rank), the optimizer's
state per LoRA tensor (engine.vram) and the cache entries' tensor sizes. Approximate by design;
the point is to refuse a run that cannot finish, not to predict to the byte.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

GIB = 1024 ** 3
_SAVE_BYTES = {"fp16": 2, "bf16": 2, "float": 4}
_HEADER_SLACK = 64 * 1024  # safetensors headers and metadata per file


@dataclass
class DiskNeed:
    loras: int = 0
    states: int = 0
    caches: int = 0
    lora_files: int = 0
    state_folders: int = 0

    @property
    def total(self) -> int:
        return self.loras + self.states + self.caches


def saves_in_run(values: dict, start_step: int, total_steps: int, steps_per_epoch: int) -> tuple[int, int, int]:
    """(numbered epoch saves, step saves, epoch states kept) between start_step and total_steps."""
    every_epoch, every_step = values["save_every_n_epochs"], values["save_every_n_steps"]
    first_epoch, last_epoch = start_step // steps_per_epoch, total_steps // steps_per_epoch
    epochs = sum(1 for e in range(first_epoch + 1, last_epoch + 1) if every_epoch and e % every_epoch == 0)
    steps = (total_steps // every_step - start_step // every_step) if every_step else 0
    keep = values.get("save_last_n_epochs_state", 0)
    return epochs, steps, min(epochs, keep) if keep else epochs


def estimate_disk(values: dict, arch, samples, start_step: int, total_steps: int, steps_per_epoch: int) -> DiskNeed:
    from engine.vram import lora_parameter_count, optimizer_state_bytes

    params, shapes = lora_parameter_count(arch, values["network_dim"], values["train_blocks"])
    lora_file = params * _SAVE_BYTES[values["save_precision"]] + _HEADER_SLACK
    adapter = params * 4 + _HEADER_SLACK
    state = adapter + optimizer_state_bytes(values["optimizer"], values["optimizer_args"], shapes, 4) + _HEADER_SLACK
    epochs, steps, epoch_states = saves_in_run(values, start_step, total_steps, steps_per_epoch)
    need = DiskNeed(lora_files=epochs + steps + 1)
    need.loras = need.lora_files * lora_file
    if values["save_state"]:
        need.state_folders = epoch_states + steps
    if values["save_state"] or values["save_state_on_train_end"]:
        need.state_folders += 1
    need.states = need.state_folders * state
    need.caches = _cache_bytes(values, samples)
    return need


def _cache_bytes(values: dict, samples) -> int:
    from engine.training.cache import CACHE_FOLDER

    total = 0
    if values["cache_latents"] and values["cache_latents_to_disk"]:
        total += sum(16 * (s.bucket[0] // 8) * (s.bucket[1] // 8) * 4 + 1024 for s in samples)
    if values["flux1_cache_text_encoder_outputs"] and values["flux1_cache_text_encoder_outputs_to_disk"]:
        tokens = values["t5xxl_max_token_length"]
        captions = len({s.caption for s in samples})
        total += captions * (768 * 4 + tokens * 4096 * 4 + tokens * 8 + 1024)
    existing = folder_bytes(Path(values["train_data_dir"]) / CACHE_FOLDER)
    return max(0, total - existing)  # entries already cached are not written again


def folder_bytes(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(entry.stat().st_size for entry in folder.rglob("*") if entry.is_file())


def free_bytes(folder: str | Path) -> tuple[int, int, Path] | None:
    """(free bytes, device id, the existing folder measured) for `folder` or its nearest parent."""
    path = Path(folder).absolute()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None:
        return None
    return shutil.disk_usage(existing).free, os.stat(existing).st_dev, existing


def disk_findings(values: dict, need: DiskNeed) -> tuple[list[str], list[str]]:
    """(problems, notes): one note with the sizes, a problem for each disk that is too full."""
    outputs = free_bytes(values["output_dir"])
    cache = free_bytes(values["train_data_dir"]) if need.caches else None
    notes = [f"disk: this run writes about {_gib(need.total)} ({need.lora_files} LoRA file(s) {_gib(need.loras)}, "
             f"{need.state_folders} state folder(s) {_gib(need.states)}, caches {_gib(need.caches)})"]
    problems = []
    wanted = {}
    if outputs is not None:
        wanted[outputs[1]] = [outputs, need.loras + need.states, "output_dir"]
    if cache is not None:
        wanted.setdefault(cache[1], [cache, 0, "train_data_dir"])[1] += need.caches
    for (free, _, where), amount, key in wanted.values():
        notes.append(f"disk: {_gib(free)} free on {where.anchor or where}")
        if amount > free:
            problems.append(f"{key}: not enough free disk space on {where.anchor or where}: the run writes about "
                            f"{_gib(amount)} there and {_gib(free)} is free; free some space or choose another "
                            "folder (fewer saved states need less: Keep last N epoch states)")
    return problems, notes


def _gib(amount: int) -> str:
    return f"{amount / GIB:.2f} GB" if amount >= GIB / 100 else f"{amount / 1024 ** 2:.1f} MB"
