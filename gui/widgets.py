"""Schema option -> Gradio widget, and widget values -> preset values. No option is declared here."""

from __future__ import annotations

import gradio as gr

from engine.schema import OPTIONS_TABLE, Option


MULTILINE = {"description": 1, "sample_prompts": 4}  # option key -> visible lines


def make_widget(option: Option, value):
    common = dict(label=option.label, info=option.help, value=value, elem_id=f"opt-{option.key}")
    if option.type == "bool":
        return gr.Checkbox(**common)
    if option.choices:
        return gr.Dropdown(choices=list(option.choices), **common)
    if option.auto:  # a number or the word auto
        return gr.Textbox(max_lines=1, placeholder="a number, or auto", **{**common, "value": str(value)})
    if option.type in ("int", "float"):
        # No Gradio minimum/maximum: out-of-range values must reach the schema's own check (one
        # list of every problem, by field), not fail inside Gradio before any handler runs.
        return gr.Number(precision=0 if option.type == "int" else None, **common)
    placeholder = {"file": "path to a file", "dir": "path to a folder"}.get(option.type)
    if option.key in MULTILINE:
        return gr.Textbox(lines=MULTILINE[option.key], max_lines=12, **common)
    return gr.Textbox(placeholder=placeholder, max_lines=1, **common)


def collect(raw_values) -> tuple[dict, list[str]]:
    """Widget values in OPTIONS_TABLE order -> (preset values, problems). A field with a problem
    holds its default, so callers must not keep values that come with problems."""
    values, problems = {}, []
    for option, raw in zip(OPTIONS_TABLE, raw_values):
        if option.auto and str(raw).strip().lower() == "auto":
            values[option.key] = "auto"
        elif option.type in ("int", "float"):
            if raw is None or raw == "":
                problems.append(f"{option.key}: empty, expected {option.allowed()}")
                values[option.key] = option.default  # lets the other checks still run; never saved
                continue
            try:
                number = float(raw)
            except ValueError:  # typed text in a number-or-auto box
                problems.append(f"{option.key}: {raw!r} is not allowed, expected {option.allowed()}")
                values[option.key] = option.default
                continue
            if option.type == "int":
                if not number.is_integer():
                    problems.append(f"{option.key}: {raw!r} is not allowed, expected {option.allowed()}")
                    values[option.key] = option.default
                    continue
                values[option.key] = int(number)
            else:
                values[option.key] = number
        elif option.type == "bool":
            values[option.key] = bool(raw)
        elif option.type in ("file", "dir"):
            from engine.models.describe import strip_path_quotes

            values[option.key] = strip_path_quotes("" if raw is None else str(raw))  # Windows "Copy as path"
        else:
            values[option.key] = "" if raw is None else str(raw)
    return values, problems


def left_events(widgets) -> list:
    """The events that mean "the person is done with this field": leaving a text or number box,
    picking a choice, ticking a box (not every keystroke)."""
    events = []
    for widget in widgets:
        if isinstance(widget, (gr.Textbox, gr.Number)):
            events += [widget.blur, widget.submit]
        else:
            events.append(widget.input)
    return events


def widget_values(values: dict) -> list:
    return [str(values[option.key]) if option.auto else values[option.key] for option in OPTIONS_TABLE]
