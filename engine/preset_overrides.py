"""Option values typed as text: `fluxlora ... --set key=value` and the GUI's text boxes."""

from __future__ import annotations

import difflib
from typing import Any, Iterable

from engine.preset import PresetError, _check_value, _coerce, validate_values
from engine.schema import OPTIONS


def parse_option_text(key: str, text: str) -> Any:
    """Parse a value typed as text (CLI `--set`, GUI text boxes) by the option's type."""
    option = OPTIONS.get(key)
    if option is None:
        close = difflib.get_close_matches(key, OPTIONS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"{key}: not a FluxLoRA option{hint}")
    value, _ = _coerce(option, text, lenient=True)
    problem = _check_value(option, value)
    if problem:
        raise ValueError(problem)
    return value


def apply_overrides(values: dict[str, Any], assignments: Iterable[str]) -> dict[str, Any]:
    """Apply `key=value` strings; every bad one is reported at once."""
    updated = dict(values)
    problems = []
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep:
            problems.append(f"{assignment!r}: expected key=value")
            continue
        try:
            updated[key.strip()] = parse_option_text(key.strip(), text)
        except ValueError as exc:
            problems.append(str(exc))
    if not problems:
        problems = validate_values(updated)
    if problems:
        raise PresetError("--set", problems)
    return updated
