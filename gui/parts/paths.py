"""Path fields: the box, a button that opens the system's file / folder dialog (the server runs
on the person's own PC), and for model files one line read from the file's header."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from engine.schema import Option

DESCRIBED = ("pretrained_model_name_or_path", "ae", "clip_l", "t5xxl", "network_weights", "resume")


@dataclass
class PathField:
    option: Option
    box: gr.Textbox
    button: gr.Button
    line: gr.Markdown


def build_path_field(option: Option, value, make_widget) -> PathField:
    """Inside the caller's column: the path box and its dialog button in a row, the header line below."""
    with gr.Group():
        with gr.Row(equal_height=True):
            box = make_widget(option, value)
            box.scale = 8
            button = gr.Button("Browse", elem_id=f"pick-{option.key}", scale=0, min_width=80, size="sm")
        line = gr.Markdown(elem_id=f"about-{option.key}", elem_classes=["path-about"],
                           visible=option.key in DESCRIBED)
    return PathField(option, box, button, line)


def about(key: str, path: str) -> str:
    from engine.models.describe import describe_field_file

    if key not in DESCRIBED:
        return ""
    text = describe_field_file(key, path or "")
    return f"↳ {text}" if text else ""


def wire_path_fields(demo: gr.Blocks, fields: list[PathField]) -> None:
    for field in fields:
        key, kind = field.option.key, field.option.type

        def pick(current, key=key, kind=kind):
            from engine.models.describe import strip_path_quotes
            from gui.pick_dialog import pick_path

            chosen, message = pick_path(kind, strip_path_quotes(current or ""))
            if chosen is None:
                return gr.update(), (f"↳ {message}" if message and message != "cancelled" else about(key, current))
            return chosen, about(key, chosen)

        field.button.click(pick, inputs=field.box, outputs=[field.box, field.line])
        if key in DESCRIBED:
            field.box.change(lambda path, key=key: about(key, path), inputs=field.box, outputs=field.line,
                             show_progress="hidden", queue=False)
    described = [f for f in fields if f.option.key in DESCRIBED]
    demo.load(lambda *paths: [about(f.option.key, p) for f, p in zip(described, paths)],
              inputs=[f.box for f in described], outputs=[f.line for f in described])
