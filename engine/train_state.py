"""`train_state.json`: where a saved state stands, and the repair of kohya's non-cumulative step.

sd-scripts reads only `current_step` on resume, restarts its counter at 0 and then writes this
run's steps only, so after a second resume `current_step` is no longer cumulative (kohya_ss
issue 2771). `current_epoch` stays right at epoch boundaries, which is what the repair uses:
a run resumed by sd-scripts always starts at an epoch boundary, so the true step is
`current_epoch * steps_per_epoch` plus the run-local step's offset inside the epoch.

Our own files add `steps_per_epoch` and a history of runs so the check needs no guessing.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.fsutil import atomic_write_text

TRAIN_STATE_FILE = "train_state.json"
BACKUP_SUFFIX = ".bak"


class StateError(ValueError):
    """A state folder that cannot be used; the message names the folder and what to do."""


@dataclass
class RunRecord:
    start_step: int
    end_step: int
    started_at: str = ""
    finished_at: str = ""
    preset_fingerprint: str = ""


@dataclass
class TrainState:
    current_epoch: int  # completed epochs, cumulative over all runs
    current_step: int  # optimizer steps, cumulative over all runs
    steps_per_epoch: int | None = None  # None in kohya-written files
    step_in_epoch: int = 0  # optimizer steps already done inside epoch current_epoch + 1
    runs: list[RunRecord] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # keys we do not know, kept as they were

    def to_json(self) -> str:
        data = {**self.extra, **asdict(self)}
        data.pop("extra")
        if self.steps_per_epoch is None:
            data.pop("steps_per_epoch")
        return json.dumps(data, indent=2, sort_keys=True) + "\n"


def read_train_state(state_dir: str | Path) -> TrainState:
    path = Path(state_dir) / TRAIN_STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise StateError(f"{state_dir}: no {TRAIN_STATE_FILE} here; pick a folder ending in -state") from None
    except json.JSONDecodeError as exc:
        raise StateError(f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}") from None
    problems = [key for key in ("current_epoch", "current_step")
                if not isinstance(data.get(key), int) or isinstance(data.get(key), bool) or data[key] < 0]
    if problems:
        raise StateError(f"{path}: {', '.join(problems)} missing or not a whole number >= 0")
    known = {"current_epoch", "current_step", "steps_per_epoch", "step_in_epoch", "runs"}
    return TrainState(
        current_epoch=data["current_epoch"],
        current_step=data["current_step"],
        steps_per_epoch=data.get("steps_per_epoch"),
        step_in_epoch=data.get("step_in_epoch", 0),
        runs=[RunRecord(**run) for run in data.get("runs", [])],
        extra={key: value for key, value in data.items() if key not in known},
    )


def write_train_state(state_dir: str | Path, state: TrainState) -> None:
    atomic_write_text(Path(state_dir) / TRAIN_STATE_FILE, state.to_json())


@dataclass
class FixReport:
    state_dir: Path
    before: TrainState
    after: TrainState
    changed: bool
    reason: str  # why it changed, or why it is already right

    def summary(self) -> str:
        if not self.changed:
            return f"{self.state_dir}: {self.reason}"
        return (f"{self.state_dir}: current_step {self.before.current_step} -> "
                f"{self.after.current_step}: {self.reason}")


def expected_step(state: TrainState, steps_per_epoch: int) -> tuple[int, str]:
    """The cumulative step this state should hold, and why."""
    if steps_per_epoch < 1:
        raise StateError(f"steps per epoch must be at least 1, got {steps_per_epoch}")
    epoch, step = state.current_epoch, state.current_step
    lowest, highest = epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch - 1
    if lowest <= step <= highest:
        return step, (f"current_step {step} is cumulative (epoch {epoch} at "
                      f"{steps_per_epoch} steps per epoch)")
    if step < lowest:
        fixed = lowest + step % steps_per_epoch
        return fixed, (f"current_step {step} counts only the last run; {epoch} completed epochs "
                       f"x {steps_per_epoch} steps per epoch + {step % steps_per_epoch} "
                       f"= {fixed} cumulative steps")
    raise StateError(
        f"current_step {step} is beyond epoch {epoch + 1} at {steps_per_epoch} steps per epoch: "
        "the steps per epoch do not match this state (did the dataset, repeats, batch size or "
        "gradient accumulation change?)"
    )


def fix_train_state(state_dir: str | Path, steps_per_epoch: int, dry_run: bool = False) -> FixReport:
    """Make `current_step` cumulative; the original goes to train_state.json.bak."""
    state_dir = Path(state_dir)
    before = read_train_state(state_dir)
    if before.steps_per_epoch is not None and before.steps_per_epoch != steps_per_epoch:
        raise StateError(
            f"{state_dir}: this state was trained at {before.steps_per_epoch} steps per epoch, "
            f"not {steps_per_epoch}; the dataset, repeats, batch size or accumulation changed"
        )
    step, reason = expected_step(before, steps_per_epoch)
    after = copy.deepcopy(before)
    after.current_step = step
    after.steps_per_epoch = steps_per_epoch
    after.step_in_epoch = step - before.current_epoch * steps_per_epoch
    changed = step != before.current_step
    if changed and after.runs:
        # kohya-style runs recorded local steps; shift the last one to the cumulative count.
        offset = step - before.current_step
        after.runs[-1].end_step += offset
    if changed and not dry_run:
        path = state_dir / TRAIN_STATE_FILE
        backup = path.with_name(TRAIN_STATE_FILE + BACKUP_SUFFIX)
        if not backup.exists():  # keep the very first original
            shutil.copy2(path, backup)
        write_train_state(state_dir, after)
    return FixReport(state_dir, before, after, changed, reason)


def find_latest_state(output_dir: str | Path, output_name: str) -> Path | None:
    """The newest complete state folder for `output_name` (most steps, then newest file)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    best: tuple[int, float, Path] | None = None
    for folder in output_dir.iterdir():
        name = folder.name
        if not (folder.is_dir() and name.startswith(output_name) and name.endswith("-state")):
            continue
        middle = name[len(output_name):-len("-state")]
        if middle and not (middle.startswith("-") and (middle[1:].isdigit() or middle[1:5] == "step")):
            continue  # another output name that shares our prefix
        try:
            state = read_train_state(folder)
        except StateError:
            continue
        key = (state.current_step, (folder / TRAIN_STATE_FILE).stat().st_mtime, folder)
        if best is None or key[:2] > best[:2]:
            best = key
    return best[2] if best else None
