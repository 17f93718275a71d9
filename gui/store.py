"""Where the GUI keeps things between page loads: the working preset, user presets."""

from __future__ import annotations

import json
import os
from pathlib import Path

from engine.fsutil import atomic_write_text, sweep_stale_temps
from engine.preset import PresetError, default_values, parse_preset

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_PRESETS = ROOT / "presets"


def home() -> Path:
    """~/.fluxlora, or $FLUXLORA_HOME."""
    return Path(os.environ.get("FLUXLORA_HOME") or Path.home() / ".fluxlora")


def user_presets_dir() -> Path:
    return home() / "presets"


def preset_choices() -> list[tuple[str, str]]:
    """(label, path) of the shipped presets, then the user's."""
    shipped = sorted(SHIPPED_PRESETS.glob("*.json"))
    mine = sorted(user_presets_dir().glob("*.json")) if user_presets_dir().is_dir() else []
    return [(f"{path.stem} (shipped)", str(path)) for path in shipped] + [(path.stem, str(path)) for path in mine]


class WorkingPreset:
    """The values on screen, kept server-side so a page reload shows them again."""

    def __init__(self):
        self.path = home() / "working.json"
        for folder in (home(), user_presets_dir()):  # what a crash mid-save left behind
            sweep_stale_temps(folder)
        self.values, self.preset_path = default_values(), ""
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self.values = parse_preset(data["values"]).values
                self.preset_path = data.get("preset_path", "")
            except (ValueError, KeyError, TypeError, PresetError):
                pass  # an unreadable working copy starts from the defaults; presets on disk are untouched

    def remember(self, values: dict, preset_path: str | None = None) -> None:
        preset_path = self.preset_path if preset_path is None else preset_path
        if values == self.values and preset_path == self.preset_path and self.path.is_file():
            return  # a Load fires one change event per field, all with the values just stored
        self.values, self.preset_path = dict(values), preset_path
        atomic_write_text(self.path, json.dumps({"preset_path": self.preset_path, "values": self.values},
                                                indent=2, sort_keys=True))
