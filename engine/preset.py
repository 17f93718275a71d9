"""Load, validate and save presets: one flat JSON object keyed by the schema's option keys.

Two inputs are accepted by the same loader:
- our files (`"preset_version": 1`): strict types, as written by `save_preset`;
- kohya_ss GUI configs (no `preset_version`): kohya's quirks (numbers and booleans written
  as strings, empty strings for "unset") are undone, and every such change is reported.
Unknown keys are reported by name, never silently dropped; a wrong type or out-of-range
value is an error naming the key, the value and what is allowed.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.fsutil import atomic_write_text
from engine.kohya_config import KOHYA_DEFAULTS, KOHYA_IGNORED_REASONS, read_kohya_meanings
from engine.names import name_problem
from engine.preset_migrations import upgrade
from engine.schema import KOHYA_SAMPLERS, META_KEYS, OPTIONS, OPTIONS_TABLE, PRESET_VERSION, Option, format_number

FLUXLORA = "fluxlora"
KOHYA_SS = "kohya_ss"
UNSUPPORTED_TITLE = "Changes training in kohya, not supported here"
REINTERPRETED_TITLE = "Reinterpreted (the value FluxLoRA uses)"

class PresetError(ValueError):
    """A preset that cannot be used; `problems` lists every reason, each naming its key."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


@dataclass
class LoadResult:
    values: dict[str, Any]
    format: str  # FLUXLORA or KOHYA_SS
    unknown_keys: list[str] = field(default_factory=list)  # reported, not used
    notes: list[str] = field(default_factory=list)  # every value changed while reading
    defaulted_keys: list[str] = field(default_factory=list)  # missing, schema default used
    # kohya_ss configs: what kohya means that we apply differently, and what we cannot do at all.
    reinterpreted: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)  # option keys set from another kohya key or meaning

    def used_as_is(self) -> list[str]:
        return sorted(key for key in self.values if key not in self.defaulted_keys and key not in self.touched)

    def groups(self) -> list[tuple[str, list[str]]]:
        """The kohya_ss report: (title, lines), the group that changes training first; empty groups left out."""
        not_used = [f"{key} ({KOHYA_IGNORED_REASONS[key]})" if key in KOHYA_IGNORED_REASONS else key
                    for key in self.unknown_keys]
        groups = [(UNSUPPORTED_TITLE, self.unsupported), (REINTERPRETED_TITLE, self.reinterpreted),
                  ("Not used by FluxLoRA (no effect on training)", [", ".join(not_used)] if not_used else [])]
        if self.format == KOHYA_SS:
            used = self.used_as_is()
            groups.append((f"Used as is ({len(used)} key{'s' if len(used) != 1 else ''})", [", ".join(used)]))
        return [(title, lines) for title, lines in groups if lines and any(lines)]

    def report_lines(self) -> list[str]:
        """The groups as indented lines (CLI), then the notes about values read from kohya's text."""
        lines = []
        for title, items in self.groups():
            if title.startswith("Used as is") and self.format != KOHYA_SS:
                continue
            lines.append(f"{title}:")
            lines += [f"  - {item}" for item in items]
        return lines + self.notes

    def warnings(self) -> list[str]:
        """One line per thing the user should know about this file."""
        lines = [f"{UNSUPPORTED_TITLE}: {line}" for line in self.unsupported]
        lines += [f"Reinterpreted: {line}" for line in self.reinterpreted]
        if self.unknown_keys:
            reasons = [
                f"{key} ({KOHYA_IGNORED_REASONS[key]})" if key in KOHYA_IGNORED_REASONS else key
                for key in self.unknown_keys
            ]
            lines.append("Not used by FluxLoRA: " + ", ".join(reasons))
        lines.extend(self.notes)
        return lines


def default_values() -> dict[str, Any]:
    return {option.key: option.default for option in OPTIONS_TABLE}


def load_preset(path: str | Path) -> LoadResult:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise PresetError(str(path), ["file not found"]) from None
    except UnicodeDecodeError as exc:
        raise PresetError(str(path), [f"not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    except OSError as exc:
        raise PresetError(str(path), [f"cannot be read ({exc.strerror})"]) from None
    return parse_preset_text(text, source=str(path))


def parse_preset_text(text: str, source: str = "preset") -> LoadResult:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PresetError(
            source, [f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"]
        ) from None
    return parse_preset(data, source=source)


def parse_preset(data: Any, source: str = "preset") -> LoadResult:
    if not isinstance(data, dict):
        raise PresetError(source, [f"a preset is a JSON object {{...}}, not {type(data).__name__}"])
    problems: list[str] = []
    if "preset_version" in data:
        try:
            data, upgrade_notes = upgrade(data)
        except ValueError as exc:
            raise PresetError(source, [str(exc)]) from None
        result = LoadResult(values={}, format=FLUXLORA, notes=upgrade_notes)
    else:
        result = LoadResult(values={}, format=KOHYA_SS)
        _check_kohya_is_flux(data, problems)
    lenient = result.format == KOHYA_SS

    for key, raw in data.items():
        if key in META_KEYS:
            continue
        option = OPTIONS.get(key)
        if option is None:
            result.unknown_keys.append(key)
            continue
        try:
            value, note = _coerce(option, raw, lenient, KOHYA_DEFAULTS.get(key, option.default))
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if _check_value(option, value):
            problems.append(f"{key}: {raw!r} is not allowed, expected {option.allowed()}")
            continue
        if note:
            result.notes.append(note)
        result.values[key] = value
    result.unknown_keys.sort()
    if lenient:
        problems += read_kohya_meanings(data, result)

    recipe = []
    for option in OPTIONS_TABLE:
        if option.key not in result.values and not _is_problem_key(option.key, problems):
            kohya_default = lenient and option.key in KOHYA_DEFAULTS
            if lenient and option.kohya and not kohya_default:
                recipe.append(f"{option.key} {option.default!r}")
            result.values[option.key] = KOHYA_DEFAULTS[option.key] if kohya_default else option.default
            result.defaulted_keys.append(option.key)
            if kohya_default:
                result.reinterpreted.append(f"{option.key} = {KOHYA_DEFAULTS[option.key]!r}: not in the file; "
                                            "kohya's default (FluxLoRA's recipe would use "
                                            f"{option.default!r})")
    if recipe:
        result.reinterpreted.append("not in the file, FluxLoRA's recipe value used: " + ", ".join(recipe))

    if result.format == KOHYA_SS:
        _kohya_unet_only(data, result)
    if not problems:
        problems = validate_values(result.values)
    if problems:
        raise PresetError(source, problems)
    return result


def _kohya_unet_only(data: dict, result: LoadResult) -> None:
    """sd-scripts trains CLIP-L too unless network_train_unet_only; we say that with text_encoder_lr 0."""
    if "network_train_unet_only" not in data:
        return
    result.unknown_keys.remove("network_train_unet_only")
    if _truthy(data["network_train_unet_only"]) and result.values.get("text_encoder_lr", 0) > 0:
        result.values["text_encoder_lr"] = 0.0
        result.touched.add("text_encoder_lr")
        result.notes.append("network_train_unet_only: true, so text_encoder_lr is 0: the transformer trains alone "
                            "and CLIP-L stays frozen, as sd-scripts trains it")


def _is_problem_key(key: str, problems: list[str]) -> bool:
    return any(problem.startswith(key + ":") for problem in problems)


def _check_kohya_is_flux(data: dict, problems: list[str]) -> None:
    flux_flag = data.get("flux1_checkbox")
    if flux_flag is not None and _truthy(flux_flag) is False:
        problems.append(
            "flux1_checkbox: false means this kohya_ss config is not for FLUX.1; "
            "FluxLoRA trains FLUX.1 LoRAs only (tick Flux.1 in kohya_ss or start from a FLUX preset)"
        )


def _truthy(raw: Any) -> bool | None:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, (int, float)) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, str) and raw.strip().lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        return raw.strip().lower() in ("true", "1", "yes", "on")
    return None


def _coerce(option: Option, raw: Any, lenient: bool, default: Any = None) -> tuple[Any, str | None]:
    """Return (value, note). Strict mode wants JSON types; lenient undoes kohya's quirks."""
    key = option.key
    bad = ValueError(f"{key}: {raw!r} is not allowed, expected {option.allowed()}")

    if option.type == "bool":
        if isinstance(raw, bool):
            return raw, None
        value = _truthy(raw) if lenient else None
        if value is None:
            raise bad
        return value, f"{key}: {raw!r} read as {str(value).lower()}"

    if option.auto and isinstance(raw, str) and raw.strip().lower() == "auto":
        return "auto", None
    if option.type in ("int", "float"):
        if isinstance(raw, bool):
            raise bad
        if lenient and isinstance(raw, str) and raw.strip() == "":
            default = option.default if default is None else default
            return default, f"{key}: empty in the file, the default {default!r} is used"
        number = raw
        if isinstance(raw, str) and lenient:
            try:
                number = float(raw.strip())
            except ValueError:
                raise bad from None
        if not isinstance(number, (int, float)) or not math.isfinite(number):
            raise bad
        if option.type == "int":
            if isinstance(number, float):
                if not number.is_integer() or not (lenient or isinstance(raw, int)):
                    raise bad
                number = int(number)
        else:
            number = float(number)
        note = f"{key}: {raw!r} read as {number!r}" if isinstance(raw, str) else None
        return number, note

    # str, file, dir
    if isinstance(raw, str):
        if lenient and key == "sample_sampler" and raw.strip().lower() in KOHYA_SAMPLERS and raw != "euler":
            return "euler", (f"sample_sampler: {raw!r} read as 'euler' (FLUX samples with flow-matching Euler; "
                             "sd-scripts does the same for FLUX)")
        if lenient and option.choices and raw not in option.choices:
            for choice in option.choices:
                if choice.lower() == raw.strip().lower():
                    return choice, f"{key}: {raw!r} read as {choice!r}"
        return raw, None
    if lenient and isinstance(raw, (int, float)) and not isinstance(raw, bool):
        text = format_number(raw)
        return text, f"{key}: {raw!r} read as the text {text!r}"
    if lenient and raw is None:
        return "", f"{key}: null read as empty"
    raise bad


_RESOLUTION = re.compile(r"^\s*(\d+)\s*(?:,\s*(\d+)\s*)?$")


def parse_resolution(text: str) -> tuple[int, int]:
    """'768,768' or '768' -> (width, height). Raises ValueError with the allowed form."""
    match = _RESOLUTION.match(text)
    if not match:
        raise ValueError(f"max_resolution: {text!r} is not allowed, expected width,height such as '768,768'")
    width = int(match.group(1))
    height = int(match.group(2) or width)
    for side in (width, height):
        if side % 64 or not 64 <= side <= 4096:
            raise ValueError(
                f"max_resolution: {text!r} is not allowed, expected sides from 64 to 4096 "
                "in multiples of 64, such as '768,768'"
            )
    return width, height


def validate_values(values: dict[str, Any]) -> list[str]:
    """Every problem with `values`, each naming key, value and what is allowed."""
    problems: list[str] = []
    bad = set()
    for option in OPTIONS_TABLE:
        if option.key not in values:
            problems.append(f"{option.key}: missing")
            bad.add(option.key)
            continue
        problem = _check_value(option, values[option.key])
        if problem:
            problems.append(problem)
            bad.add(option.key)
    # The checks across fields run for every field that passed its own check: all problems at once.
    if "max_resolution" not in bad:
        try:
            parse_resolution(values["max_resolution"])
        except ValueError as exc:
            problems.append(str(exc))
    if not bad & {"min_bucket_reso", "max_bucket_reso"} and values["min_bucket_reso"] > values["max_bucket_reso"]:
        problems.append(
            f"min_bucket_reso: {values['min_bucket_reso']} is larger than max_bucket_reso "
            f"{values['max_bucket_reso']}, expected min_bucket_reso <= max_bucket_reso"
        )
    extension = values.get("caption_extension")
    if "caption_extension" not in bad and not re.fullmatch(r"\.[A-Za-z0-9_.-]+", extension):
        problems.append(f"caption_extension: {extension!r} is not allowed, expected an extension such as '.txt'")
    name = values.get("output_name")
    name_issue = name_problem(name) if "output_name" not in bad else None
    if name_issue:
        problems.append(f"output_name: {name!r} is not allowed: {name_issue}; expected a file name such as "
                        "'my_flux_lora' (none of < > : \" / \\ | ? *, no device name such as CON or NUL)")
    for word in values["optimizer_args"].split() if "optimizer_args" not in bad else ():
        if "=" not in word or word.startswith("="):
            problems.append(f"optimizer_args: {word!r} is not allowed, expected key=value pairs separated by spaces")
    return problems


def _check_value(option: Option, value: Any) -> str | None:
    if option.auto and value == "auto":
        return None
    expected_type = {"bool": bool, "int": int, "float": (int, float)}.get(option.type, str)
    if isinstance(value, bool) and option.type != "bool" or not isinstance(value, expected_type):
        return f"{option.key}: {value!r} is not allowed, expected {option.allowed()}"
    if option.choices and value not in option.choices:
        return f"{option.key}: {value!r} is not allowed, expected {option.allowed()}"
    if option.minimum is not None and value < option.minimum or (
        option.maximum is not None and value > option.maximum
    ):
        return f"{option.key}: {value!r} is not allowed, expected {option.allowed()}"
    return None


def preset_document(values: dict[str, Any]) -> dict[str, Any]:
    """The JSON object `save_preset` writes: the version plus every option, validated."""
    problems = validate_values(values)
    unknown = sorted(set(values) - set(OPTIONS))
    if unknown:
        problems.append("unknown keys: " + ", ".join(unknown))
    if problems:
        raise PresetError("preset", problems)
    return {"preset_version": PRESET_VERSION, **{key: values[key] for key in OPTIONS}}


def preset_json(values: dict[str, Any]) -> str:
    return json.dumps(preset_document(values), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def save_preset(values: dict[str, Any], path: str | Path) -> None:
    """Write `values` as our preset (sorted keys, indent 2), atomically."""
    atomic_write_text(path, preset_json(values))


def import_kohya(source: str | Path, destination: str | Path) -> LoadResult:
    """Read a kohya_ss GUI config and write it as our preset; the result says what was dropped."""
    result = load_preset(source)
    save_preset(result.values, destination)
    return result
