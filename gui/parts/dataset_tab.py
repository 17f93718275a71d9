"""Dataset Preparation: build the `N_name` layout, tag with WD14, fill in the folders."""

from __future__ import annotations

import gradio as gr

from engine.schema import DATASET
from gui import actions
from gui.parts.page import Page
from gui.widgets import collect

FOLDER_KEYS = ["train_data_dir", "reg_data_dir", "output_dir", "logging_dir"]


class DatasetTab:
    def __init__(self, page: Page):
        self.page = page
        page.section(DATASET, 2)
        self.overwrite = gr.Checkbox(label="Rebuild an existing destination",
                                     info="Rebuilds img/ and reg/; captions, log/ and model/ are kept.",
                                     elem_id="prep-overwrite")
        with gr.Row():
            self.prepare_button = gr.Button("Prepare training data", elem_id="prepare")
            self.copy_button = gr.Button("Copy info to respective fields", elem_id="copy-info")
            self.one_click = gr.Button("Prepare, tag and fill in", variant="primary", elem_id="one-click")
        self.status = gr.Markdown(elem_id="prep-status")

    def wire(self, demo: gr.Blocks) -> None:
        inputs = self.page.inputs
        outputs = [self.status, *(self.page.widgets[key] for key in FOLDER_KEYS)]
        self.prepare_button.click(self._prepare(tag=False, fill=False), inputs=[self.overwrite, *inputs],
                                  outputs=outputs)
        self.one_click.click(self._prepare(tag=True, fill=True), inputs=[self.overwrite, *inputs], outputs=outputs)
        self.copy_button.click(self.copy_info, inputs=inputs, outputs=outputs)

    def _prepare(self, tag: bool, fill: bool):
        def handler(overwrite_dest, *raw, progress=gr.Progress()):
            values, problems = collect(raw)
            if problems:
                return [actions.problem_list("Cannot prepare", problems)] + [gr.update()] * len(FOLDER_KEYS)
            message, copy_info = actions.prepare(values, overwrite_dest, tag, progress)
            if fill and copy_info:
                values.update(copy_info)
                self.page.working.remember(values)
                return [message] + [copy_info[key] for key in FOLDER_KEYS]
            return [message] + [gr.update()] * len(FOLDER_KEYS)
        return handler

    def copy_info(self, *raw):
        values, _ = collect(raw)
        info, message = actions.copy_info(values)
        if not info:
            return [message] + [gr.update()] * len(FOLDER_KEYS)
        return [message] + [info[key] for key in FOLDER_KEYS]
