"""The loss and learning-rate history of an output name across all its runs (Continue included),
read back from the TensorBoard event files the runs wrote under the logging folder."""

from __future__ import annotations

from pathlib import Path


def run_log_dir(values: dict) -> Path:
    return Path(values["logging_dir"] or Path(values["output_dir"]) / "log")


def loss_history(log_dir: str | Path, output_name: str, before_step: int | None = None) -> list[tuple[int, float, float]]:
    """(step, loss, lr) by step, oldest run first; a later run's value wins at a step both logged
    (a run continued from an earlier state logs those steps again)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = Path(log_dir)
    if not folder.is_dir():
        return []
    runs = sorted(path for path in folder.glob(f"{output_name}_*") if path.is_dir() and _is_run(path.name, output_name))
    by_step: dict[int, list[float]] = {}
    for run in runs:
        accumulator = EventAccumulator(str(run), size_guidance={"scalars": 0})
        accumulator.Reload()
        tags = accumulator.Tags().get("scalars", [])
        if "loss/current" not in tags:
            continue
        rates = {e.step: e.value for e in accumulator.Scalars("lr/unet")} if "lr/unet" in tags else {}
        for event in accumulator.Scalars("loss/current"):
            by_step[event.step] = [event.value, rates.get(event.step, float("nan"))]
    return [(step, loss, lr) for step, (loss, lr) in sorted(by_step.items())
            if before_step is None or step <= before_step]


def _is_run(folder_name: str, output_name: str) -> bool:
    """`{output_name}_YYYYmmdd-HHMMSS`, not another output name that starts the same."""
    stamp = folder_name[len(output_name) + 1:]
    return len(stamp) == 15 and stamp[8] == "-" and stamp.replace("-", "").isdigit()


def smoothed(values: list[float], weight: float = 0.9) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average, debiased at the start."""
    out, average = [], 0.0
    for count, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight ** count))
    return out
