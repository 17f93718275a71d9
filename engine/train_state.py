"""`train_state.json`: where a saved state stands, and the repair of kohya's files.

What sd-scripts writes (read from its loop): `current_epoch` is the epoch IN PROGRESS, 1-based,
set when an epoch starts, and `current_step` counts the optimizer steps of the run that wrote
the file only. A resumed sd-scripts run restarts at an epoch boundary and counts from 0 again,
so after a second run `current_step` is no longer cumulative (kohya_ss issue 2771).

From one such file the true step follows without any history: the writing run did
`ceil(current_step / steps_per_epoch)` epochs (its last one maybe unfinished), so it started
after `current_epoch` minus that many completed epochs. A file that is already cumulative gives
0 there and keeps its step. Where the file cannot tell (steps per epoch unknown, step 0,
numbers that do not fit), the caller gives the value: `AmbiguousState` says which.

Our own files add `steps_per_epoch` and a history of runs; a file we repaired keeps the
original numbers in `repaired_from`, so it is never repaired twice.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.fsutil import atomic_write_text

TRAIN_STATE_FILE = "train_state.json"
BACKUP_SUFFIX = ".bak"
ASK_FOR_STEP = ("give the true step (fluxlora fix-state FOLDER --step N, or \"True step\" in the "
                "Utilities tab)")


class StateError(ValueError):
    """A state folder that cannot be used; the message names the folder and what to do."""


class AmbiguousState(StateError):
    """The file cannot tell its true step by itself; the message says which value to give."""


@dataclass
class RunRecord:
    start_step: int
    end_step: int
    started_at: str = ""
    finished_at: str = ""
    preset_fingerprint: str = ""


@dataclass
class TrainState:
    current_epoch: int  # ours: completed epochs; kohya's files: the epoch in progress (1-based)
    current_step: int  # ours: optimizer steps, cumulative over all runs; kohya's: the last run's
    steps_per_epoch: int | None = None  # None in kohya-written files
    step_in_epoch: int = 0  # optimizer steps already done inside epoch current_epoch + 1
    runs: list[RunRecord] = field(default_factory=list)
    repaired_from: dict | None = None  # kohya's original numbers, in a file we repaired
    extra: dict = field(default_factory=dict)  # keys we do not know, kept as they were

    def to_json(self) -> str:
        data = {**self.extra, **asdict(self)}
        data.pop("extra")
        for key in ("steps_per_epoch", "repaired_from"):
            if data[key] is None:
                data.pop(key)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @property
    def is_ours(self) -> bool:
        """Written (or repaired) by FluxLoRA: current_step is cumulative."""
        return self.repaired_from is not None or (self.steps_per_epoch is not None and bool(self.runs))

    @property
    def is_kohya(self) -> bool:
        """As sd-scripts writes it: the two numbers and nothing of ours."""
        return self.steps_per_epoch is None and self.repaired_from is None and not self.runs


def read_train_state(state_dir: str | Path, file_name: str = TRAIN_STATE_FILE) -> TrainState:
    path = Path(state_dir) / file_name
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise StateError(f"{state_dir}: no {file_name} here; pick a folder ending in -state") from None
    except json.JSONDecodeError as exc:
        raise StateError(f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}") from None
    if not isinstance(data, dict):
        raise StateError(f"{path}: not a JSON object")
    problems = [key for key in ("current_epoch", "current_step")
                if not isinstance(data.get(key), int) or isinstance(data.get(key), bool) or data[key] < 0]
    if problems:
        raise StateError(f"{path}: {', '.join(problems)} missing or not a whole number >= 0")
    known = {"current_epoch", "current_step", "steps_per_epoch", "step_in_epoch", "runs", "repaired_from"}
    return TrainState(
        current_epoch=data["current_epoch"],
        current_step=data["current_step"],
        steps_per_epoch=data.get("steps_per_epoch"),
        step_in_epoch=data.get("step_in_epoch", 0),
        runs=[RunRecord(**run) for run in data.get("runs", [])],
        repaired_from=data.get("repaired_from"),
        extra={key: value for key, value in data.items() if key not in known},
    )


def write_train_state(state_dir: str | Path, state: TrainState) -> None:
    atomic_write_text(Path(state_dir) / TRAIN_STATE_FILE, state.to_json())


# ---- the true step of a state ------------------------------------------------------------
@dataclass
class StepReading:
    step: int  # the true cumulative step
    steps_per_epoch: int | None
    kind: str  # "ours", "kohya", "earlier repair" (rewritten wrongly by an older FluxLoRA), "given"
    reason: str
    original: TrainState  # the numbers the step was read from (kohya's, where known)


def kohya_true_step(epoch: int, step: int, steps_per_epoch: int, folder_name: str = "") -> tuple[int, str]:
    """The cumulative step of a file sd-scripts wrote, and why; AmbiguousState where it cannot tell."""
    if steps_per_epoch < 1:
        raise StateError(f"steps per epoch must be at least 1, got {steps_per_epoch}")
    if step == 0:
        raise AmbiguousState(f"current_step is 0 (current_epoch {epoch}): sd-scripts never writes that after a "
                             f"step, so the file does not say where training stood; {ASK_FOR_STEP}")
    run_epochs = -(-step // steps_per_epoch)  # epochs the writing run touched, the last maybe unfinished
    before = epoch - run_epochs
    if before < 0:
        raise AmbiguousState(
            f"current_step {step} needs {run_epochs} epochs at {steps_per_epoch} steps per epoch, but "
            f"current_epoch is {epoch}: the steps per epoch do not match this state (did the dataset, repeats, "
            f"batch size or gradient accumulation change?) or the file was edited; {ASK_FOR_STEP}")
    epoch_end = re.search(r"-(\d{6})-state$", folder_name)
    if epoch_end and (int(epoch_end.group(1)) != epoch or step % steps_per_epoch):
        raise AmbiguousState(
            f"the folder name says the end of epoch {int(epoch_end.group(1))}, but current_step {step} at "
            f"{steps_per_epoch} steps per epoch with current_epoch {epoch} is not an epoch end: the steps per "
            f"epoch do not match this state; {ASK_FOR_STEP}")
    true = before * steps_per_epoch + step
    if before == 0:
        return true, (f"current_step {step} is already the count since the first run "
                      f"(epoch {epoch} in progress at {steps_per_epoch} steps per epoch)")
    return true, (f"kohya's current_step {step} counts only the run that wrote it, which started after epoch "
                  f"{before}: {before} x {steps_per_epoch} + {step} = {true} steps since the first run")


def read_true_step(state_dir: str | Path, steps_per_epoch: int | None = None,
                   given_step: int | None = None) -> StepReading:
    """Where this state really stands; raises AmbiguousState when the caller must give a value."""
    state_dir = Path(state_dir)
    state = read_train_state(state_dir)
    if given_step is not None:
        if given_step < 1:
            raise StateError(f"the true step must be at least 1, got {given_step}")
        return StepReading(given_step, steps_per_epoch or state.steps_per_epoch, "given",
                           f"step {given_step} as you gave it", _original(state_dir, state))
    if state.steps_per_epoch is not None and steps_per_epoch is not None and state.steps_per_epoch != steps_per_epoch:
        raise StateError(
            f"{state_dir.name} was trained at {state.steps_per_epoch} steps per epoch, this preset gives "
            f"{steps_per_epoch}; the dataset, repeats, batch size or gradient accumulation changed. Restore them, "
            "or start a new run")
    if state.is_ours:
        reason = f"current_step {state.current_step} is cumulative (written by FluxLoRA)"
        if state.repaired_from is not None:
            reason = (f"already repaired: current_step {state.current_step} is cumulative (kohya wrote "
                      f"{state.repaired_from.get('current_epoch')}, {state.repaired_from.get('current_step')})")
        return StepReading(state.current_step, state.steps_per_epoch, "ours", reason, state)
    original, kind = state, "kohya"
    if not state.is_kohya:  # an earlier FluxLoRA rewrote kohya's numbers with a wrong count
        original, kind = _original(state_dir, state), "earlier repair"
        if original is state:
            raise AmbiguousState(
                f"{state_dir}: an earlier FluxLoRA rewrote this kohya file (current_step {state.current_step}, "
                f"possibly wrong) and the original {TRAIN_STATE_FILE}{BACKUP_SUFFIX} is gone; {ASK_FOR_STEP}")
        steps_per_epoch = steps_per_epoch or state.steps_per_epoch
    if steps_per_epoch is None:
        raise AmbiguousState(
            f"{state_dir}: kohya's file does not say how many steps an epoch has (current_epoch "
            f"{original.current_epoch}, current_step {original.current_step}); give the steps per epoch "
            f"(--steps-per-epoch N or --preset FILE) or the true step (--step N)")
    try:
        step, reason = kohya_true_step(original.current_epoch, original.current_step, steps_per_epoch,
                                       state_dir.name)
    except AmbiguousState as exc:
        raise AmbiguousState(f"{state_dir}: {exc}") from None
    if kind == "earlier repair":
        reason = (f"an earlier FluxLoRA wrote {state.current_step} here; from kohya's original "
                  f"({original.current_epoch}, {original.current_step}) in {TRAIN_STATE_FILE}{BACKUP_SUFFIX}: {reason}")
    return StepReading(step, steps_per_epoch, kind, reason, original)


def _original(state_dir: Path, state: TrainState) -> TrainState:
    """kohya's numbers before any rewrite: the backup when it holds a kohya file, else `state`."""
    if (state_dir / (TRAIN_STATE_FILE + BACKUP_SUFFIX)).is_file():
        try:
            backup = read_train_state(state_dir, TRAIN_STATE_FILE + BACKUP_SUFFIX)
        except StateError:
            return state
        if backup.is_kohya:
            return backup
    return state


# ---- the repair ---------------------------------------------------------------------------
@dataclass
class FixReport:
    state_dir: Path
    before: TrainState
    after: TrainState
    changed: bool
    reason: str  # why it changed, or why it is already right
    kind: str = "kohya"

    def summary(self) -> str:
        if not self.changed:
            return f"{self.state_dir}: nothing to repair: {self.reason}"
        return (f"{self.state_dir}: current_step {self.before.current_step} -> "
                f"{self.after.current_step}: {self.reason}")


def fix_train_state(state_dir: str | Path, steps_per_epoch: int | None = None, dry_run: bool = False,
                    step: int | None = None) -> FixReport:
    """Make `current_step` cumulative; the very first original is kept as train_state.json.bak."""
    state_dir = Path(state_dir)
    before = read_train_state(state_dir)
    reading = read_true_step(state_dir, steps_per_epoch, step)
    if reading.kind == "ours" or (reading.kind == "kohya" and reading.step == before.current_step):
        return FixReport(state_dir, before, before, False, reading.reason, reading.kind)
    spe = reading.steps_per_epoch
    after = copy.deepcopy(before)
    after.current_step = reading.step
    after.steps_per_epoch = spe
    after.current_epoch = reading.step // spe if spe else before.current_epoch
    after.step_in_epoch = reading.step % spe if spe else 0
    after.runs = before.runs if before.is_ours else []  # an earlier wrong repair recorded no real runs
    original = reading.original
    after.repaired_from = {"current_epoch": original.current_epoch, "current_step": original.current_step}
    if not dry_run:
        path = state_dir / TRAIN_STATE_FILE
        backup = path.with_name(TRAIN_STATE_FILE + BACKUP_SUFFIX)
        if not backup.exists():  # keep the very first original
            shutil.copy2(path, backup)
        write_train_state(state_dir, after)
    return FixReport(state_dir, before, after, True, reading.reason, reading.kind)


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
