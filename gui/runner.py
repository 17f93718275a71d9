"""Runs the engine's training on a worker thread of the GUI process, one run at a time, and
keeps what the page shows (phase, progress, losses, log tail, result) for the timer to read."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field


@dataclass
class RunView:
    """What the page shows of the current (or last) run, kept as the engine's own events."""

    running: bool = False
    latest: object | None = None  # engine.events.Progress: the newest of any phase
    training: object | None = None  # engine.events.Progress: the newest training step (epoch, rate, ETA)
    losses: list[tuple[int, float]] = field(default_factory=list)
    rates: list[tuple[int, float]] = field(default_factory=list)  # (step, learning rate)
    samples: list[tuple[str, str]] = field(default_factory=list)  # (image path, label), oldest first
    history_until: int = 0  # steps before this came from earlier runs (Continue)
    log: deque = field(default_factory=lambda: deque(maxlen=200))
    finished: object | None = None  # engine.events.Finished
    started_at: float = 0.0

    @property
    def phase(self) -> str:
        """"" before any run; "starting", an engine phase, then the finished status."""
        if self.finished is not None:
            return self.finished.status
        if self.latest is not None:
            return self.latest.phase
        return "starting" if self.running else ""


class TrainingRunner:
    def __init__(self):
        self.view = RunView()
        self.revision = 0  # bumped on every change, so the page re-renders only when something happened
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, values: dict, overwrite: bool = False, history: list[tuple[int, float, float]] = ()) -> str | None:
        """Start a run; returns a refusal message instead when one is already running.
        `overwrite`: replace a finished run of the same name; `history`: (step, loss, lr) of the
        earlier runs this one continues, for the plot."""
        with self._lock:
            if self.running:
                return "A training run is already going; stop it first or wait for it to finish."
            self.view = RunView(running=True, started_at=time.time(),
                                losses=[(step, loss) for step, loss, _ in history],
                                rates=[(step, lr) for step, _, lr in history],
                                history_until=history[-1][0] if history else 0)
            self.revision += 1
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, args=(dict(values), overwrite), name="fluxlora-train", daemon=True)
            self._thread.start()
        return None

    def stop(self) -> str:
        if not self.running:
            return "Nothing is training."
        self._stop.set()
        return "Stopping at the next step; the LoRA (and the state, when state saving is on) will be saved."

    def _run(self, values: dict, overwrite: bool = False) -> None:
        from engine.trainer import train

        try:
            train(values, on_event=self._on_event, stop=self._stop, overwrite=overwrite)
        except Exception as exc:  # never leave the page stuck in "running"
            from engine.events import Finished

            self._on_event(Finished("failed", message=f"{type(exc).__name__}: {exc}"))
        finally:
            self.view.running = False
            self.revision += 1

    def _on_event(self, event) -> None:
        from engine.events import Finished, Log, Progress, SampleImage

        view = self.view
        if isinstance(event, Progress):
            view.latest = event
            if event.phase == "training":
                view.training = event
                if event.loss is not None:
                    view.losses.append((event.done, event.loss))
                if event.lr is not None:
                    view.rates.append((event.done, event.lr))
        elif isinstance(event, SampleImage):
            when = f"epoch {event.epoch}" if event.epoch is not None else f"step {event.step}"
            view.samples.append((event.path, f"{when} · prompt {event.index + 1}: {event.prompt}"))
        elif isinstance(event, Log):
            view.log.append(f"{time.strftime('%H:%M:%S')} {event.level}: {event.text}")
        elif isinstance(event, Finished):
            view.finished = event
        self.revision += 1
