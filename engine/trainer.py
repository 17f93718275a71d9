"""The FLUX.1 LoRA training run: `check_ready(values)` and `train(values, on_event, stop)`.

One run: load models, cache latents and text-encoder outputs, train the LoRA with accelerate
(mixed precision, gradient accumulation, clipping), save LoRAs and resumable states on the
preset's cadence. Everything is reported through `engine.events`; nothing is printed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from engine.dataset.layout import DatasetError
from engine.events import Finished, Log, emit
from engine.models.errors import ModelFileError
from engine.preset import PresetError
from engine.train_state import StateError
from engine.training.guard import disk_full_message, output_guard
from engine.training.lock import FolderBusyError


@dataclass
class TrainResult:
    status: str  # "completed", "stopped" or "failed"
    lora_path: str = ""
    state_dir: str = ""
    steps: int = 0  # cumulative optimizer steps
    epoch: int = 0  # completed epochs, cumulative
    log_path: str = ""
    message: str = ""


def check_ready(values: dict, overwrite: bool = False) -> list[str]:
    """Every reason `train(values)` could not start, at once; empty = ready (engine.preflight)."""
    from engine.preflight import preflight

    return preflight(values, overwrite=overwrite).problems


def train(values: dict, on_event=None, stop: threading.Event | None = None, overwrite: bool = False) -> TrainResult:
    """Train; never raises for user-fixable problems: they come back as status "failed".

    The preflight runs first (seconds); a finished run of the same output name is replaced only
    with `overwrite` (its files are deleted first, so two runs never mix)."""
    from engine.preflight import preflight
    from engine.training.run import TrainingRun

    try:
        report = preflight(values, overwrite=overwrite)
    except OSError as exc:  # e.g. a data folder that cannot be listed
        report = None
        problems = [str(exc)]
    else:
        problems = report.problems
        for line in report.warnings:
            emit(on_event, Log(line, "warning"))
        for line in report.notes:
            emit(on_event, Log(line))
    if problems:
        message = "; ".join(problems)
        emit(on_event, Finished("failed", message=message))
        return TrainResult("failed", message=message)
    run = TrainingRun(values, on_event, stop or threading.Event())
    try:
        with output_guard(values, overwrite, on_event):
            result = run.execute()
    except (ModelFileError, DatasetError, PresetError, StateError, FolderBusyError, ValueError, OSError) as exc:
        result = _failed(run, values, str(disk_full_message(exc) or exc), log=lambda text: run.log(text, "error"))
    except Exception as exc:  # a bug or an out-of-memory: still report it in the page, with the log
        run.log_exception(exc)
        result = _failed(run, values, f"{type(exc).__name__}: {exc}")
    finally:
        run.close()
    emit(on_event, Finished(result.status, message=result.message, lora_path=result.lora_path,
                            state_dir=result.state_dir, log_path=result.log_path))
    return result


def _failed(run, values: dict, message: str, log=None) -> TrainResult:
    """A failed run's result; the message ends with what exists to continue from."""
    from engine.training.outputs import continue_point

    try:
        message = f"{message}; {continue_point(values['output_dir'], values['output_name'])}"
    except OSError:
        pass
    if log is not None:
        log(message)
    return TrainResult("failed", message=message, log_path=str(run.log_path or ""), steps=run.step,
                       epoch=run.completed_epochs)
