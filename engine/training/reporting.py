"""What a run tells the person: log lines (file + events), progress events and TensorBoard scalars.

Only the main process of a multi-process run reports; the others stay silent.
"""

from __future__ import annotations

import traceback
from datetime import datetime
from pathlib import Path

from engine.events import Log, Progress, emit


class RunReporter:
    def __init__(self, on_event):
        self.on_event = on_event
        self.is_main = True
        self.log_path: Path | None = None
        self._log_file = None
        self._writer = None

    def open(self, log_dir: Path, run_name: str, is_main: bool) -> None:
        """Start the plain-text log and the TensorBoard folder `{run_name}_{time}` under `log_dir`."""
        self.is_main = is_main
        log_dir.mkdir(parents=True, exist_ok=True)
        if not is_main:
            return
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        self.log_path = log_dir / f"{run_name}_{stamp}.log"
        self._log_file = open(self.log_path, "a", encoding="utf-8")
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(log_dir / f"{run_name}_{stamp}"))

    def log(self, text: str, level: str = "info") -> None:
        if not self.is_main:
            return
        if self._log_file is not None:
            self._log_file.write(f"{datetime.now():%H:%M:%S} {level}: {text}\n")
            self._log_file.flush()
        emit(self.on_event, Log(text, level))

    def log_exception(self, exc: BaseException) -> None:
        if self._log_file is not None:
            self._log_file.write("".join(traceback.format_exception(exc)))
        self.log(f"{type(exc).__name__}: {exc}", "error")

    def progress(self, phase: str, done: int, total: int, **fields) -> None:
        if self.is_main:
            emit(self.on_event, Progress(phase, done, total, **fields))

    def scalars(self, step: int, **values: float) -> None:
        """TensorBoard scalars; keys use `__` for `/` (loss__current -> loss/current)."""
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(name.replace("__", "/"), value, step)

    def image(self, tag: str, pixels, step: int) -> None:
        """A TensorBoard image (HWC uint8), e.g. a sample image."""
        if self._writer is not None:
            self._writer.add_image(tag, pixels, step, dataformats="HWC")

    def event(self, event) -> None:
        """Any other event for the caller (e.g. SampleImage), from the main process only."""
        if self.is_main:
            emit(self.on_event, event)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
