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
            self.check_button = gr.Button("Check", elem_id="check")
            self.estimate_button = gr.Button("Estimate VRAM", elem_id="estimate")
        with gr.Row():  # offered only when Start finds a finished run of the same name
            self.new_name_button = gr.Button("Start under a new name", visible=False, elem_id="start-new-name")
            self.overwrite_button = gr.Button("Overwrite and start", variant="stop", visible=False,
                                              elem_id="overwrite-start")
        self.offered_name = gr.State("")
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
        outputs = [self.run_message, self.vram_status, self.offered_name, self.new_name_button,
                   self.overwrite_button, self.page.widgets["output_name"]]
        self.start_button.click(self._start("start"), inputs=inputs, outputs=outputs)
        self.continue_button.click(self._start("continue"), inputs=inputs, outputs=outputs)
        self.overwrite_button.click(self._start("overwrite"), inputs=inputs, outputs=outputs)
        self.new_name_button.click(self._start("new name"), inputs=[self.offered_name, *inputs], outputs=outputs)
        self.check_button.click(lambda *raw: actions.check(*collect(raw)), inputs=inputs, outputs=self.run_message)
        self.stop_button.click(lambda: runner.stop(), outputs=self.run_message)
        self.estimate_button.click(lambda *raw: actions.vram_text(collect(raw)[0]), inputs=inputs,
                                   outputs=self.vram_status)
        seen_revision = gr.State(-1)  # per browser tab: what it shows
        self.timer.tick(self._tick, inputs=seen_revision,
                        outputs=[seen_revision, self.run_status, self.progress, self.loss_plot, self.log_tail],
                        queue=False, show_progress="hidden")

    def _start(self, mode: str):
        def handler(*raw):
            name = None
            if mode == "new name":
                name, raw = raw[0], raw[1:]
            values, problems = collect(raw)
            if name:
                values["output_name"] = name
            if not problems:
                self.page.working.remember(values)
            message, offer = actions.start(self.page.runner, values, problems, "start" if name else mode)
            shown = offer is not None
            started = message.startswith(("Started", "Continued"))
            return (message, actions.vram_text(values) if started else gr.update(), offer or "",
                    gr.update(visible=shown, value=f"Start as {offer}" if shown else None),
                    gr.update(visible=shown), name if name else gr.update())
        return handler

    def _tick(self, seen):
        revision = self.page.runner.revision
        if revision == seen:
            return [gr.skip()] * 5
        return [revision, *actions.render(self.page.runner)]
