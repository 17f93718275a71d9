"""The training panel: Start / Stop / Continue / Estimate VRAM, status, progress, loss plot, log."""

from __future__ import annotations

import gradio as gr

from gui import actions
from gui.parts.page import Page
from gui.widgets import collect


class TrainingPanel:
    def __init__(self, page: Page):
        self.page = page
        gr.Markdown("### Training")
        with gr.Row():
            self.start_button = gr.Button("Start", variant="primary", elem_id="start")
            self.stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
            self.continue_button = gr.Button("Continue", elem_id="continue")
            self.estimate_button = gr.Button("Estimate VRAM", elem_id="estimate")
        # Answers to Start/Stop/Continue; the timer leaves this one alone.
        self.run_message = gr.Markdown(elem_id="run-message")
        self.vram_status = gr.Markdown(elem_id="vram-status")
        self.run_status = gr.Markdown(elem_id="status-box")
        self.progress = gr.HTML(elem_id="progress")
        self.loss_plot = gr.LinePlot(actions.loss_frame([]), x="step", y="loss", title="Training loss",
                                     elem_id="loss-plot", height=260)
        self.log_tail = gr.Textbox(label="Log (newest last; the full log is in the logging folder)",
                                   lines=actions.LOG_LINES, max_lines=actions.LOG_LINES, interactive=False,
                                   elem_id="log-tail")
        self.timer = gr.Timer(1.0)

    def wire(self, demo: gr.Blocks) -> None:
        inputs, runner = self.page.inputs, self.page.runner
        self.start_button.click(self._start(continuing=False), inputs=inputs,
                                outputs=[self.run_message, self.vram_status])
        self.continue_button.click(self._start(continuing=True), inputs=inputs,
                                   outputs=[self.run_message, self.vram_status])
        self.stop_button.click(lambda: runner.stop(), outputs=self.run_message)
        self.estimate_button.click(lambda *raw: actions.vram_text(collect(raw)[0]), inputs=inputs,
                                   outputs=self.vram_status)
        seen_revision = gr.State(-1)  # per browser tab: what it shows
        self.timer.tick(self._tick, inputs=seen_revision,
                        outputs=[seen_revision, self.run_status, self.progress, self.loss_plot, self.log_tail],
                        queue=False, show_progress="hidden")

    def _start(self, continuing: bool):
        def handler(*raw):
            values, problems = collect(raw)
            if not problems:
                self.page.working.remember(values)
            message = actions.start(self.page.runner, values, problems, continuing)
            return message, actions.vram_text(values) if not problems else gr.update()
        return handler

    def _tick(self, seen):
        revision = self.page.runner.revision
        if revision == seen:
            return [gr.skip()] * 5
        return [revision, *actions.render(self.page.runner)]
