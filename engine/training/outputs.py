"""What a run writes into its output folder, by name, and what is already there.

Names (the DESIGN.md contract): `{name}.safetensors` and `{name}-state` at the end,
`{name}-{epoch:06d}` every save_every_n_epochs (the last epoch of a run too), and
`{name}-step{step:08d}` every save_every_n_steps, each LoRA with an optional `-state` folder.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from engine.train_state import StateError, find_latest_state, read_train_state


def epoch_stem(name: str, epoch: int) -> str:
    return f"{name}-{epoch:06d}"


def step_stem(name: str, step: int) -> str:
    return f"{name}-step{step:08d}"


def _pattern(name: str) -> re.Pattern:
    return re.compile(re.escape(name) + r"(-\d{6}|-step\d{8})?(\.safetensors|-state)$")


def run_files(output_dir: str | Path, name: str) -> list[Path]:
    """Every LoRA file and state folder of output name `name` in `output_dir`, sorted."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    pattern = _pattern(name)
    return sorted(path for path in folder.iterdir() if pattern.fullmatch(path.name))


@dataclass
class ExistingRun:
    """A finished (or stopped) run of the same output name, found before a fresh Start."""

    output_dir: Path
    name: str
    files: list[Path] = field(default_factory=list)
    latest_state: Path | None = None
    state_step: int = 0
    state_epoch: int = 0

    def summary(self) -> str:
        loras = [p for p in self.files if p.suffix == ".safetensors"]
        states = [p for p in self.files if p.name.endswith("-state")]
        parts = [f"{len(loras)} LoRA file{'s' if len(loras) != 1 else ''}"]
        if states:
            parts.append(f"{len(states)} state folder{'s' if len(states) != 1 else ''}")
        if self.latest_state is not None:
            parts.append(f"newest state {self.latest_state.name} at epoch {self.state_epoch}, step {self.state_step}")
        return ", ".join(parts)

    def message(self) -> str:
        """Engine words; the CLI and the page add how to continue, rename or overwrite."""
        return (f"{self.output_dir} already holds a run named {self.name} ({self.summary()}); starting again "
                "would replace its files")


def existing_run(output_dir: str | Path, name: str) -> ExistingRun | None:
    files = run_files(output_dir, name)
    if not files:
        return None
    found = ExistingRun(Path(output_dir), name, files)
    state = find_latest_state(output_dir, name)
    if state is not None:
        saved = read_train_state(state)
        found.latest_state, found.state_step, found.state_epoch = state, saved.current_step, saved.current_epoch
    return found


def free_name(output_dir: str | Path, name: str) -> str:
    """`name-2`, `name-3`, ...: the first output name with no files in `output_dir`."""
    base = re.sub(r"-\d+$", "", name) or name
    number = 2
    while run_files(output_dir, f"{base}-{number}"):
        number += 1
    return f"{base}-{number}"


def remove_run_files(output_dir: str | Path, name: str) -> list[Path]:
    """The explicit overwrite: delete the previous run's files of `name`, so no two runs mix."""
    removed = run_files(output_dir, name)
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed


def link_tree(source: Path, destination: Path) -> None:
    """Fill `destination` with `source`'s files as hard links (no second copy on disk; either name
    can later be replaced or deleted alone), copying where the file system has no hard links."""
    for item in source.rglob("*"):
        target = destination / item.relative_to(source)
        if item.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(item, target)
        except OSError:
            shutil.copy2(item, target)


def prune_epoch_states(output_dir: str | Path, name: str, keep: int) -> list[Path]:
    """Keep the newest `keep` numbered epoch states of `name` (kohya's save_last_n_epochs_state);
    0 keeps all. The end-of-run `{name}-state` and step states are never removed here."""
    if keep <= 0:
        return []
    pattern = re.compile(re.escape(name) + r"-(\d{6})-state$")
    numbered = sorted((int(match.group(1)), path) for path in Path(output_dir).iterdir()
                      if path.is_dir() and (match := pattern.fullmatch(path.name)))
    removed = [path for _, path in numbered[:-keep]]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def state_adapter_file(folder: str | Path) -> Path | None:
    """The LoRA weights inside a state folder: ours (adapter.safetensors) or kohya's (model.safetensors)."""
    for name in ("adapter.safetensors", "model.safetensors"):
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def continue_point(output_dir: str | Path, name: str) -> str:
    """One sentence saying what exists to continue from (for failures, stops and crashes)."""
    state = find_latest_state(output_dir, name)
    if state is not None:
        try:
            saved = read_train_state(state)
            return f"to continue from: state {state} (epoch {saved.current_epoch}, step {saved.current_step})"
        except StateError:
            pass
    loras = [p for p in run_files(output_dir, name) if p.suffix == ".safetensors"]
    if loras:
        newest = max(loras, key=lambda p: p.stat().st_mtime)
        return (f"no saved state to continue from; the newest LoRA is {newest} (it can be the "
                "starting LoRA of a new run)")
    return f"no state and no LoRA of {name} in {output_dir} yet"
