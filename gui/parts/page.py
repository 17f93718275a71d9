"""What every part of the page shares: the working preset, the runner and the option widgets."""

from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr

from engine.schema import OPTIONS_TABLE
from gui.runner import TrainingRunner
from gui.store import WorkingPreset
from gui.widgets import make_widget


@dataclass
class Page:
    working: WorkingPreset
    runner: TrainingRunner
    widgets: dict[str, gr.components.Component] = field(default_factory=dict)
    path_fields: list = field(default_factory=list)  # gui.parts.paths.PathField, wired by the app

    @property
    def inputs(self) -> list[gr.components.Component]:
        """Every option widget in OPTIONS_TABLE order (what gui.widgets.collect reads)."""
        return [self.widgets[option.key] for option in OPTIONS_TABLE]

    def section(self, name: str, columns: int) -> None:
        """The section's options in rows of `columns` (a single long column is hard to scan)."""
        options = [option for option in OPTIONS_TABLE if option.section == name]
        for first in range(0, len(options), columns):
            with gr.Row():
                for option in options[first:first + columns]:
                    value = self.working.values[option.key]
                    if option.type in ("file", "dir"):
                        from gui.parts.paths import build_path_field

                        with gr.Column():
                            self.path_fields.append(build_path_field(option, value, make_widget))
                        self.widgets[option.key] = self.path_fields[-1].box
                    else:
                        self.widgets[option.key] = make_widget(option, value)
                for _ in range(columns - len(options[first:first + columns])):
                    gr.Column()  # keeps the last row's fields as wide as the others
