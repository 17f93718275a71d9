"""The Configuration bar: preset file, the shipped/user preset list, Load, Save, Save as."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from engine.preset import PresetError, load_preset, save_preset, validate_values
from gui import actions
from gui.parts.page import Page
from gui.store import SHIPPED_PRESETS, preset_choices, user_presets_dir
from gui.widgets import collect, left_events, widget_values


def protected_reason(path: str) -> str | None:
    """Why Save must not write over `path`, or None: shipped presets belong to the install, and a
    kohya_ss config would lose every key FluxLoRA does not keep."""
    import json

    if not path or not Path(path).is_file():
        return None
    if Path(path).resolve().parent == SHIPPED_PRESETS.resolve():
        return f"{Path(path).name} is a shipped preset"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return f"{Path(path).name} is not a FluxLoRA preset"
    if isinstance(data, dict) and "preset_version" not in data:
        return f"{Path(path).name} is a kohya_ss config (saving would rewrite it in FluxLoRA's format and drop its other keys)"
    return None


def _md(text: str) -> str:
    return text.replace("_", "\\_")


class ConfigBar:
    def __init__(self, page: Page):
        self.page = page
        gr.Markdown("### Configuration")
        with gr.Row(equal_height=True):
            self.preset_path = gr.Textbox(label="Preset file", value=page.working.preset_path, scale=4, max_lines=1,
                                          elem_id="preset-path",
                                          placeholder="path to a .json preset or kohya_ss config")
            self.preset_pick = gr.Dropdown(label="Presets (shipped and yours)", choices=preset_choices(), value=None,
                                           scale=3, elem_id="preset-pick", allow_custom_value=True,
                                           info=f"Save as puts yours in {user_presets_dir()}")
        with gr.Row(equal_height=True):
            self.load_button = gr.Button("Load", elem_id="load", size="md")
            self.save_button = gr.Button("Save", elem_id="save", size="md")
            self.save_as_name = gr.Textbox(show_label=False, placeholder="name for Save as", max_lines=1,
                                           elem_id="save-as-name", scale=2, container=False)
            self.save_as_button = gr.Button("Save as", elem_id="save-as", size="md")
        self.status = gr.Markdown(elem_id="config-status")
        # Set once the page-load event has put the working copy on screen (browser tests wait on it).
        self.loaded = gr.HTML("", elem_id="page-loaded", padding=False, container=False)

    def wire(self, demo: gr.Blocks) -> None:
        page, inputs = self.page, self.page.inputs
        demo.load(lambda: [page.working.preset_path, gr.update(choices=preset_choices()),
                           *widget_values(page.working.values), '<span data-loaded="1"></span>'],
                  outputs=[self.preset_path, self.preset_pick, *inputs, self.loaded])

        def remember(*raw):
            values, problems = collect(raw)
            if not problems and not validate_values(values):
                page.working.remember(values)

        gr.on(left_events(inputs), remember, inputs=inputs, queue=False, show_progress="hidden")
        load_outputs = [*inputs, self.preset_path, self.status]
        self.load_button.click(self.load, inputs=self.preset_path, outputs=load_outputs)
        self.preset_pick.select(self.load, inputs=self.preset_pick, outputs=load_outputs)
        self.save_button.click(self.save_over, inputs=[self.preset_path, *inputs], outputs=[self.status, self.preset_pick])
        self.save_as_button.click(self.save_as, inputs=[self.save_as_name, *inputs],
                                  outputs=[self.status, self.preset_pick, self.preset_path])

    def load(self, path):
        keep = [gr.update()] * len(self.page.inputs)
        path = (path or "").strip()
        if not path:
            return keep + [path, "**Choose a preset file first.**"]
        try:
            result = load_preset(path)
        except PresetError as exc:
            return keep + [path, actions.problem_list(f"Could not load {path}", exc.problems)]
        self.page.working.remember(result.values, path)
        kind = "kohya_ss config" if result.format == "kohya_ss" else "preset"
        message = f"Loaded {kind} **{Path(path).name}**."
        report = actions.load_report(result)
        if report:
            message += "\n\n" + report
        return [*widget_values(result.values), path, message]

    def save(self, path, *raw):
        path = (path or "").strip()
        if not path:
            return "**Give a preset file path (or use Save as).**", gr.update()
        values, problems = collect(raw)
        problems += validate_values(values) if not problems else []
        if problems:
            return actions.problem_list("Not saved", problems), gr.update()
        try:
            save_preset(values, path)
        except OSError as exc:
            return f"**Not saved:** {path}: {exc.strerror}", gr.update()
        self.page.working.remember(values, path)
        return f"Saved **{path}**.", gr.update(choices=preset_choices())

    def save_over(self, path, *raw):
        """Save writes only over our own presets: a shipped preset or a kohya_ss config becomes Save as."""
        refusal = protected_reason((path or "").strip())
        if refusal:
            return (f"**Not saved:** {_md(refusal)}. Type a name next to **Save as** and press it to keep your "
                    "settings as a preset of your own; the original stays as it is."), gr.update()
        return self.save(path, *raw)

    def save_as(self, name, *raw):
        name = (name or "").strip().removesuffix(".json")
        if not name or any(c in name for c in '<>:"/\\|?*'):
            return "**Give a file name for Save as (no path characters).**", gr.update(), gr.update()
        path = str(user_presets_dir() / f"{name}.json")
        message, choices = self.save(path, *raw)
        return message, choices, path if message.startswith("Saved") else gr.update()
