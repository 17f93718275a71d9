"""Upgrades of older preset files, one function per version step.

When the meaning of a key changes, raise `schema.PRESET_VERSION` from N to N+1 and add
`MIGRATIONS[N]`: a function that takes a version-N file's JSON object and returns it as a
version-(N+1) file says the same thing, with one line per change for the person. Loading applies
the steps in order and reports the lines; saving always writes the current version. No key has
changed its meaning yet, so the table is empty at version 1.
"""

from __future__ import annotations

from typing import Any, Callable

from engine.schema import PRESET_VERSION

Migration = Callable[[dict[str, Any]], tuple[dict[str, Any], list[str]]]
MIGRATIONS: dict[int, Migration] = {}


def upgrade(data: dict[str, Any], current: int = PRESET_VERSION,
            migrations: dict[int, Migration] = MIGRATIONS) -> tuple[dict[str, Any], list[str]]:
    """`data` (a file with "preset_version") brought to `current`, and the notes of what changed.
    Raises ValueError naming preset_version when the file cannot be read by this version."""
    version = data["preset_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1 or version > current:
        newer = isinstance(version, int) and not isinstance(version, bool) and version > current
        hint = " (written by a newer FluxLoRA: update FluxLoRA)" if newer else ""
        allowed = f"{current}" if current == 1 else f"1 to {current}"
        raise ValueError(f"preset_version: {version!r} is not supported, expected {allowed}{hint}")
    notes: list[str] = []
    while version < current:
        if version not in migrations:
            raise ValueError(f"preset_version: {version} files cannot be upgraded (no step to {version + 1})")
        data, changes = migrations[version](dict(data))
        notes += [f"preset version {version} -> {version + 1}: {change}" for change in changes]
        version += 1
        data["preset_version"] = version
    return data, notes
