"""Utilities: repair a kohya_ss train_state.json, with a preview first."""

from __future__ import annotations

import gradio as gr

from gui import actions
from gui.parts.page import Page
from gui.widgets import collect


class UtilitiesTab:
    def __init__(self, page: Page):
        self.page = page
        gr.Markdown("### Repair a kohya_ss `train_state.json`\nkohya_ss/sd-scripts stop counting "
                    "`current_step` cumulatively after a resume; this puts the right count back "
                    "(the original is kept as `train_state.json.bak`). A folder repaired once is left alone; "
                    "Start and Continue repair a kohya state the same way when resuming.")
        self.folder = gr.Textbox(label="State folder", max_lines=1, elem_id="fix-dir",
                                 placeholder="e.g. C:\\lora\\model\\ohwx-000025-state")
        with gr.Row():
            self.steps = gr.Number(label="Steps per epoch", value=0, precision=0, elem_id="fix-steps",
                                   info="0 = count them from the image folder of the preset on screen")
            self.true_step = gr.Number(label="True step", value=0, precision=0, elem_id="fix-true-step",
                                       info="Only when the preview says the file cannot tell; 0 = work it out")
        with gr.Row():
            self.preview = gr.Button("Preview", elem_id="fix-preview")
            self.apply = gr.Button("Repair", elem_id="fix-apply")
        self.status = gr.Markdown(elem_id="fix-status")

    def wire(self, demo: gr.Blocks) -> None:
        inputs = [self.folder, self.steps, self.true_step, *self.page.inputs]
        self.preview.click(self._fix(dry_run=True), inputs=inputs, outputs=self.status)
        self.apply.click(self._fix(dry_run=False), inputs=inputs, outputs=self.status)

    @staticmethod
    def _fix(dry_run: bool):
        return lambda folder, steps, true, *raw: actions.fix_state(folder, steps, collect(raw)[0], dry_run, true)
