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
                    self.widgets[option.key] = make_widget(option, self.working.values[option.key])
                for _ in range(columns - len(options[first:first + columns])):
                    gr.Column()  # keeps the last row's fields as wide as the others
