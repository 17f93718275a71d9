"""The FLUX.1 LoRA training run: `check_ready(values)` and `train(values, on_event, stop)`.

One run: load models, cache latents and text-encoder outputs, train the LoRA with accelerate
(mixed precision, gradient accumulation, clipping), save LoRAs and resumable states on the
preset's cadence. Everything is reported through `engine.events`; nothing is printed.
"""

from __future__ import annotations

import threading
from pathlib import Path

from engine.dataset.layout import DatasetError
from engine.events import Finished, Log, emit
from engine.fsutil import sweep_stale_temps
from engine.models.errors import ModelFileError
from engine.preset import PresetError
from engine.train_state import StateError
from engine.training.guard import disk_full_message, output_guard
from engine.training.lock import FolderBusyError

TrainResult = Finished  # the name callers used before the run returned its Finished event


def check_ready(values: dict, overwrite: bool = False) -> list[str]:
    """Every reason `train(values)` could not start, at once; empty = ready (engine.preflight)."""
    from engine.preflight import preflight

    return preflight(values, overwrite=overwrite).problems


def train(values: dict, on_event=None, stop: threading.Event | None = None, overwrite: bool = False) -> Finished:
    """Train; never raises for user-fixable problems: they come back as status "failed".

    The preflight runs first (seconds); a finished run of the same output name is replaced only
    with `overwrite` (its files are deleted first, so two runs never mix)."""
    from engine.training.run import TrainingRun

    problems = _preflight(values, overwrite, on_event)
    if problems:
        result = Finished("failed", message="; ".join(problems))
        emit(on_event, result)
        return result
    run = TrainingRun(values, on_event, stop or threading.Event())
    try:
        with output_guard(values, overwrite, on_event) as main_process:
            for folder in leftover_folders(values) if main_process else []:  # torchrun: rank 0 only
                for line in sweep_stale_temps(folder):
                    emit(on_event, Log(line, "warning"))
            result = run.execute()
    except (ModelFileError, DatasetError, PresetError, StateError, FolderBusyError, ValueError, OSError) as exc:
        message = with_continue_point(values, disk_full_message(exc) or str(exc))
        run.log(message, "error")
        result = run.result("failed", message)
    except Exception as exc:  # a bug or an out-of-memory: still report it in the page, with the log
        run.reporter.log_exception(exc)
        result = run.result("failed", with_continue_point(values, f"{type(exc).__name__}: {exc}"))
    finally:
        run.close()
    emit(on_event, result)
    return result


def leftover_folders(values: dict) -> list[Path]:
    """Where a crashed run may have left temporaries: the output folder and the disk caches."""
    from engine.training.cache import CACHE_FOLDER

    folders = [Path(values["output_dir"])]
    for key in ("train_data_dir", "reg_data_dir"):
        if values[key]:
            folders += [Path(values[key]) / CACHE_FOLDER / kind for kind in ("latents", "text")]
    return folders


def continue_from_latest_state(values: dict) -> dict:
    """`values` resuming from the newest state of this output name (StateError, saying what
    exists instead, when there is none). Engine words: the page shows them too."""
    from engine.train_state import find_latest_state
    from engine.training.outputs import continue_point

    state = find_latest_state(values["output_dir"], values["output_name"])
    if state is None:
        raise StateError(f"nothing to continue: {continue_point(values['output_dir'], values['output_name'])}")
    return dict(values, resume=str(state))


def _preflight(values: dict, overwrite: bool, on_event) -> list[str]:
    from engine.preflight import preflight

    try:
        report = preflight(values, overwrite=overwrite)
    except OSError as exc:  # e.g. a data folder that cannot be listed
        return [str(exc)]
    for line in report.warnings:
        emit(on_event, Log(line, "warning"))
    for line in report.notes:
        emit(on_event, Log(line))
    return report.problems


def with_continue_point(values: dict, message: str) -> str:
    """A failure's message, ending with what exists to continue from."""
    from engine.training.outputs import continue_point

    try:
        return f"{message}; {continue_point(values['output_dir'], values['output_name'])}"
    except OSError:
        return message
