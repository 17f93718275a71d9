"""The training panel: Start / Stop / Continue / the numbers and VRAM, status, progress, loss and
learning-rate plots, sample images as they arrive, log, and a TensorBoard button."""

from __future__ import annotations

import time
from dataclasses import dataclass

import gradio as gr

from gui import actions, plots
from gui.parts.page import Page
from gui.widgets import collect

# The page asks for the run's state every second while one is going, every few seconds otherwise (a run
# started from another browser tab shows up within that): a tick costs ~0.1 s of CPU on this page.
TICK_SECONDS, IDLE_TICK_SECONDS = 1.0, 4.0
# Drawing the loss plot again costs the browser ~0.2 s of CPU, so while a run goes the plots are drawn
# at most this often (the status line still moves every second); a run's end is drawn at once.
PLOT_SECONDS = 5.0


@dataclass(frozen=True)
class Shown:
    """What one browser tab shows, so that a tick sends only what changed."""

    revision: int = -1
    interval: float = TICK_SECONDS
    texts: tuple = ()  # status, progress bar, log tail
    plots: tuple = ()  # (run, loss points, learning-rate points) drawn
    plotted_at: float = float("-inf")
    samples: tuple = ()  # (run, images) shown


class TrainingPanel:
    def __init__(self, page: Page):
        self.page = page
        gr.Markdown("### Training")
        with gr.Row():
            self.start_button = gr.Button("Start", variant="primary", elem_id="start")
            self.stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
            self.continue_button = gr.Button("Continue", elem_id="continue")
            self.check_button = gr.Button("Check", elem_id="check")
            self.estimate_button = gr.Button("Numbers & VRAM", elem_id="estimate")
            self.tensorboard_button = gr.Button("TensorBoard", elem_id="tensorboard")
        with gr.Row():  # offered only when Start finds a finished run of the same name
            self.new_name_button = gr.Button("Start under a new name", visible=False, elem_id="start-new-name")
            self.overwrite_button = gr.Button("Overwrite and start", variant="stop", visible=False,
                                              elem_id="overwrite-start")
        self.offered_name = gr.State("")
        # Answers to Start/Stop/Continue; the timer leaves this one alone.
        self.run_message = gr.Markdown(elem_id="run-message")
        self.vram_status = gr.Markdown(elem_id="vram-status")
        self.tensorboard_link = gr.Markdown(elem_id="tensorboard-link")
        self.run_status = gr.Markdown(elem_id="status-box")
        self.progress = gr.HTML(elem_id="progress")
        with gr.Row():
            self.loss_plot = gr.LinePlot(plots.loss_frame([]), x="step", y="loss", color="series",
                                         title="Training loss (smoothed as TensorBoard does)", elem_id="loss-plot",
                                         height=260, x_axis_format="d", color_map={"loss": "#fed7aa",
                                                                                   "smoothed": "#f97316"}, scale=3,
                                         colors_in_legend=["loss", "smoothed"])
            self.lr_plot = gr.LinePlot(plots.lr_frame([]), x="step", y="learning rate", title="Learning rate",
                                       elem_id="lr-plot", height=260, x_axis_format="d", y_axis_format="~e", scale=2)
        self.samples = gr.Gallery(label="Sample images (newest first; files in output folder/sample)", columns=6,
                                  height=300, elem_id="sample-gallery", object_fit="contain", allow_preview=True)
        self.log_tail = gr.Textbox(label="Log (newest last; the full log is in the logging folder)",
                                   lines=actions.LOG_LINES, max_lines=actions.LOG_LINES, interactive=False,
                                   elem_id="log-tail")
        self.timer = gr.Timer(TICK_SECONDS)  # the first tick shows the run's state at once

    def wire(self, demo: gr.Blocks) -> None:
        inputs, runner = self.page.inputs, self.page.runner
        outputs = [self.run_message, self.vram_status, self.offered_name, self.new_name_button,
                   self.overwrite_button, self.page.widgets["output_name"], self.timer]
        self.start_button.click(self._start("start"), inputs=inputs, outputs=outputs)
        self.continue_button.click(self._start("continue"), inputs=inputs, outputs=outputs)
        self.overwrite_button.click(self._start("overwrite"), inputs=inputs, outputs=outputs)
        self.new_name_button.click(self._start("new name"), inputs=[self.offered_name, *inputs], outputs=outputs)
        self.check_button.click(lambda *raw: actions.check(*collect(raw)), inputs=inputs, outputs=self.run_message)
        self.stop_button.click(lambda: runner.stop(), outputs=self.run_message)
        self.estimate_button.click(self._numbers, inputs=inputs, outputs=self.vram_status)
        self.tensorboard_button.click(self._tensorboard, inputs=inputs, outputs=self.tensorboard_link)
        shown = gr.State(Shown())  # per browser tab
        self.timer.tick(self._tick, inputs=shown,
                        outputs=[shown, self.timer, self.run_status, self.progress, self.loss_plot, self.log_tail,
                                 self.lr_plot, self.samples],
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
            return (message, self._numbers(*raw) if started else gr.update(), offer or "",
                    gr.update(visible=shown, value=f"Start as {offer}" if shown else None),
                    gr.update(visible=shown), name if name else gr.update(),
                    gr.Timer(TICK_SECONDS) if started else gr.skip())
        return handler

    def _tick(self, shown: Shown):
        runner = self.page.runner
        running = runner.running  # before the revision: a run's last revision is in place once it stops
        revision, view, now = runner.revision, runner.view, time.monotonic()
        interval = TICK_SECONDS if running else IDLE_TICK_SECONDS
        drawn = (view.started_at, len(view.losses), len(view.rates))
        another_run = drawn[:1] != shown.plots[:1]
        plots_due = drawn != shown.plots and (another_run or not running or now - shown.plotted_at >= PLOT_SECONDS)
        if (revision, interval) == (shown.revision, shown.interval) and not plots_due:
            return [gr.skip()] * 8
        status, bar, loss, log = actions.render(runner)
        samples = (view.started_at, len(view.samples))
        new = Shown(revision, interval, (status, bar, log), drawn if plots_due else shown.plots,
                    now if plots_due else shown.plotted_at, samples)

        def changed(value, before):
            return value if value != before else gr.skip()

        before = shown.texts or (None, None, None)
        return [new, gr.Timer(interval) if interval != shown.interval else gr.skip(),
                changed(status, before[0]), changed(bar, before[1]),
                loss if plots_due else gr.skip(), changed(log, before[2]),
                plots.lr_frame(view.rates) if plots_due else gr.skip(),
                plots.sample_gallery(view.samples) if samples != shown.samples else gr.skip()]

    @staticmethod
    def _numbers(*raw):
        from gui.numbers import plan_text

        values, problems = collect(raw)
        if problems:
            return actions.problem_list("Fix these first", problems)
        return plan_text(values) + "\n\n" + actions.vram_text(values)

    @staticmethod
    def _tensorboard(*raw):
        from engine.training.history import run_log_dir
        from gui.tensorboard import open_tensorboard

        values, _ = collect(raw)
        if not values["logging_dir"].strip() and not values["output_dir"].strip():
            return "Choose the logging folder (or output folder) on the Folders tab first."
        return open_tensorboard(run_log_dir(values))
