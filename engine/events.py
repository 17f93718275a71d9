"""What the engine tells its caller while it works: plain dataclasses sent to one callback.

The CLI prints them as a progress bar; the GUI shows them (progress bar, loss plot, log tail).
Every long engine function takes `on_event: Callable[[Event], None] | None`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

# Phases, in the order a run goes through them.
LOADING = "loading"
CACHING_LATENTS = "caching latents"
CACHING_TEXT = "caching text"
TRAINING = "training"
SAVING = "saving"
SAMPLING = "sampling"  # sample images during training; done/total = images
PREPARING = "preparing"  # dataset preparation: copying images
TAGGING = "tagging"  # dataset preparation: WD14 captions


@dataclass(frozen=True)
class Progress:
    """Where a phase stands. For TRAINING, `done`/`total` are cumulative optimizer steps."""

    phase: str
    done: int = 0
    total: int = 0
    epoch: int = 0
    total_epochs: int = 0
    loss: float | None = None
    average_loss: float | None = None
    lr: float | None = None
    steps_per_second: float | None = None
    eta_seconds: float | None = None


@dataclass(frozen=True)
class Log:
    """A line for the run's log; `level` is "info", "warning" or "error"."""

    text: str
    level: str = "info"


@dataclass(frozen=True)
class SampleImage:
    """A sample image written during training (or by `fluxlora sample`)."""

    path: str
    prompt: str
    index: int  # the prompt's position in the list
    step: int
    epoch: int | None  # the finished epoch it shows, None for a mid-epoch sample


@dataclass(frozen=True)
class Finished:
    """The last event of a run, and what `engine.trainer.train` returns.

    `status` is "completed", "stopped" or "failed"; `steps` are cumulative optimizer steps and
    `epoch` the completed epochs, across every run of the LoRA."""

    status: str
    message: str = ""
    lora_path: str = ""
    state_dir: str = ""
    log_path: str = ""
    steps: int = 0
    epoch: int = 0


Event = Union[Progress, Log, SampleImage, Finished]
EventCallback = Callable[[Event], None]


def emit(on_event: EventCallback | None, event: Event) -> None:
    if on_event is not None:
        on_event(event)
