"""What the training panel draws: the loss (raw and smoothed), the learning rate, sample previews."""

from __future__ import annotations

import tempfile
from pathlib import Path

SMOOTHING = 0.9  # TensorBoard's default look


def loss_frame(losses: list[tuple[int, float]]):
    """Long format for gr.LinePlot(color="series"): every step's loss and its smoothed line."""
    import pandas as pd

    from engine.training.history import smoothed

    if not losses:  # one empty point per series, so the legend knows its two names before any step
        return pd.DataFrame({"step": [0, 0], "loss": [float("nan")] * 2, "series": ["loss", "smoothed"]})
    steps = [int(step) for step, _ in losses]
    values = [float(loss) for _, loss in losses]
    frame = pd.DataFrame({"step": steps * 2, "loss": values + smoothed(values, SMOOTHING),
                          "series": ["loss"] * len(steps) + ["smoothed"] * len(steps)})
    return frame.astype({"step": "int64", "loss": "float64"})


def lr_frame(rates: list[tuple[int, float]]):
    import pandas as pd

    return pd.DataFrame(rates, columns=["step", "learning rate"]).astype({"step": "int64", "learning rate": "float64"})


def preview_dir() -> Path:
    """Previews live in the system temp folder, which Gradio may serve (the dataset and output
    folders it may not)."""
    return Path(tempfile.gettempdir()) / "fluxlora-previews"


def sample_gallery(samples: list[tuple[str, str]], newest: int = 48) -> list[tuple[str, str]]:
    """(preview path, label) of the newest sample images, newest first."""
    from engine.dataset.thumbnails import thumbnail

    shown = []
    for path, label in reversed(samples[-newest:]):
        if Path(path).is_file():
            shown.append((str(thumbnail(path, preview_dir(), side=512)), label))
    return shown
