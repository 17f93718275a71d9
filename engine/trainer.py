"""The FLUX.1 LoRA training run: `check_ready(values)` and `train(values, on_event, stop)`.

One run: load models, cache latents and text-encoder outputs, train the LoRA with accelerate
(mixed precision, gradient accumulation, clipping), save LoRAs and resumable states on the
preset's cadence. Everything is reported through `engine.events`; nothing is printed.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from engine.dataset.layout import DatasetError, scan_train_dir
from engine.events import Finished, Log, emit
from engine.fsutil import sweep_stale_temps
from engine.models.errors import ModelFileError
from engine.names import CACHE_TAIL, OUTPUT_TAIL, path_length_problem
from engine.preset import PresetError, validate_values
from engine.train_state import StateError

MODEL_FILES = (
    ("pretrained_model_name_or_path", "FLUX.1 model file"),
    ("ae", "autoencoder file (ae.safetensors)"),
    ("clip_l", "CLIP-L file"),
    ("t5xxl", "T5-XXL file"),
)


TrainResult = Finished  # the name callers used before the run returned its Finished event


def check_ready(values: dict) -> list[str]:
    """Every reason `train(values)` could not start, at once; empty = ready."""
    problems = validate_values(values)
    if problems:
        return problems
    from engine.training.buckets import bucket_problems
    from engine.training.optim import optimizer_problems

    problems += optimizer_problems(values) + bucket_problems(values)
    if values["bucket_reso_steps"] % 16:
        problems.append(f"bucket_reso_steps: {values['bucket_reso_steps']} is not allowed; use a multiple of 16 "
                        "(FLUX packs 2x2 latents of 8 pixels), such as 64")
    for key, label in MODEL_FILES:
        if not values[key].strip():
            problems.append(f"{key}: empty; choose the {label}")
        elif not Path(values[key]).is_file():
            problems.append(f"{key}: file {values[key]} not found")
    for key in ("clip_l_tokenizer_path", "t5xxl_tokenizer_path"):
        if values[key] and not Path(values[key]).is_dir():
            problems.append(f"{key}: folder {values[key]} not found")
    try:
        scan_train_dir(values["train_data_dir"], values["caption_extension"])
    except DatasetError as exc:
        problems.append(str(exc))
    if values["reg_data_dir"]:
        try:
            scan_train_dir(values["reg_data_dir"], values["caption_extension"], key="reg_data_dir")
        except DatasetError as exc:
            problems.append(str(exc))
    if not values["output_dir"].strip():
        problems.append("output_dir: empty; choose where the LoRA files go")
    else:
        problems += _folder_problems("output_dir", values["output_dir"])
    problems += _path_length_problems(values)
    if values["logging_dir"].strip():
        problems += _folder_problems("logging_dir", values["logging_dir"])
    if values["network_weights"] and not Path(values["network_weights"]).is_file():
        problems.append(f"network_weights: file {values['network_weights']} not found")
    if values["resume"] and not (Path(values["resume"]) / "train_state.json").is_file():
        problems.append(f"resume: {values['resume']} is not a state folder (no train_state.json in it)")
    if values["blocks_to_swap"] == "auto" and not problems:
        problems += _auto_swap_problems(values)
    return problems


def _auto_swap_problems(values: dict) -> list[str]:
    """blocks_to_swap auto on a GPU where even the most swapping does not fit: refused before loading."""
    from engine.vram import SwapChoiceError, free_device_bytes, resolve_auto_swap

    try:
        resolve_auto_swap(values, free_device_bytes())
    except SwapChoiceError as exc:
        return [str(exc)]
    return []


def continue_from_latest_state(values: dict) -> dict:
    """`values` resuming from the newest state of this output name (StateError when there is none)."""
    from engine.train_state import find_latest_state

    state = find_latest_state(values["output_dir"], values["output_name"])
    if state is None:
        raise StateError(f"no saved state for {values['output_name']} in {values['output_dir']} to continue from; "
                         "train once with save_state or save_state_on_train_end on")
    return dict(values, resume=str(state))


def _folder_problems(key: str, folder: str) -> list[str]:
    """Why files could not be written in `folder` (created on demand), if anything stops it."""
    path = Path(folder)
    if path.is_file():
        return [f"{key}: {folder} is a file, not a folder"]
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        blocker = existing if existing is not None else path.anchor or folder
        return [f"{key}: {folder} cannot be created ({blocker} is not a folder); choose another folder"]
    if not os.access(existing, os.W_OK):
        return [f"{key}: no permission to write in {existing}; choose a folder you can write to"]
    return []


def _path_length_problems(values: dict) -> list[str]:
    checks = [("output_dir", values["output_dir"], len(values["output_name"]) + OUTPUT_TAIL)]
    if values["cache_latents_to_disk"] or values["flux1_cache_text_encoder_outputs_to_disk"]:
        checks += [(key, values[key], CACHE_TAIL) for key in ("train_data_dir", "reg_data_dir") if values[key]]
    found = (path_length_problem(key, folder, tail) for key, folder, tail in checks if folder.strip())
    return [problem for problem in found if problem]


def leftover_folders(values: dict) -> list[Path]:
    """Where a crashed run may have left temporaries: the output folder and the disk caches."""
    from engine.training.cache import CACHE_FOLDER

    folders = [Path(values["output_dir"])]
    for key in ("train_data_dir", "reg_data_dir"):
        if values[key]:
            folders += [Path(values[key]) / CACHE_FOLDER / kind for kind in ("latents", "text")]
    return folders


def train(values: dict, on_event=None, stop: threading.Event | None = None) -> Finished:
    """Train; never raises for user-fixable problems: they come back as status "failed"."""
    from engine.training.run import TrainingRun

    try:
        problems = check_ready(values)
    except OSError as exc:  # e.g. a data folder that cannot be listed
        problems = [str(exc)]
    if problems:
        message = "; ".join(problems)
        result = Finished("failed", message=message)
        emit(on_event, result)
        return result
    for folder in leftover_folders(values) if os.environ.get("RANK", "0") == "0" else []:  # torchrun: rank 0
        for line in sweep_stale_temps(folder):
            emit(on_event, Log(line, "warning"))
    run = TrainingRun(values, on_event, stop or threading.Event())
    try:
        result = run.execute()
    except (ModelFileError, DatasetError, PresetError, StateError, ValueError, OSError) as exc:
        run.log(str(exc), "error")
        result = run.result("failed", str(exc))
    except Exception as exc:  # a bug or an out-of-memory: still report it in the page, with the log
        run.reporter.log_exception(exc)
        result = run.result("failed", f"{type(exc).__name__}: {exc}")
    finally:
        run.close()
    emit(on_event, result)
    return result
