"""Compare epochs: the same prompts and seeds through every LoRA of a run (and without one), as one grid."""

from __future__ import annotations

import threading

import gradio as gr

from gui.parts.page import Page
from gui.widgets import collect


class CompareTab:
    def __init__(self, page: Page):
        self.page = page
        gr.Markdown("Draw the same prompts with every epoch's LoRA side by side, to pick the one between "
                    "underfitting and overfitting. Uses the models and memory settings of the preset on screen.")
        with gr.Row(equal_height=True):
            self.loras = gr.CheckboxGroup(label="LoRA files (this run's, in training order)", choices=[],
                                          elem_id="compare-loras", scale=4)
            self.list_button = gr.Button("List this run's files", elem_id="compare-list", scale=1)
        self.extra = gr.Textbox(label="More LoRA files", lines=1, max_lines=6, elem_id="compare-extra",
                                info="Other .safetensors paths, one per line (quotes from Copy as path are fine).")
        self.prompts = gr.Textbox(label="Prompts", lines=3, max_lines=10, elem_id="compare-prompts",
                                  info="One per line with kohya's options (--w --h --s --d --g --l --n); empty: the "
                                       "preset's sample prompts.")
        with gr.Row():
            self.seed = gr.Number(label="Seed", value=page.working.values["seed"], precision=0, minimum=0,
                                  elem_id="compare-seed", info="Prompt i without --d uses seed + i, as training samples do.")
            self.strength = gr.Slider(0, 2, value=1.0, step=0.05, label="LoRA strength", elem_id="compare-strength")
            self.base = gr.Checkbox(value=True, label="Include the row without a LoRA", elem_id="compare-base")
        with gr.Row():
            self.run_button = gr.Button("Make the grid", variant="primary", elem_id="compare-run", scale=3)
            self.stop_button = gr.Button("Stop", variant="stop", elem_id="compare-stop", scale=1)
        self.status = gr.Markdown(elem_id="compare-status")
        self.grid = gr.Image(label="Comparison grid", type="pil", interactive=False, elem_id="compare-grid")
        self.stop = threading.Event()

    def wire(self, demo: gr.Blocks) -> None:
        inputs = self.page.inputs
        self.list_button.click(self._list, inputs=inputs, outputs=[self.loras, self.status])
        self.run_button.click(self._run, inputs=[self.loras, self.extra, self.prompts, self.seed, self.strength,
                                                 self.base, *inputs], outputs=[self.grid, self.status])
        self.stop_button.click(lambda: self.stop.set() or "Stopping after the current denoising step.",
                               outputs=self.status, queue=False)

    @staticmethod
    def _list(*raw):
        from engine.sampling.compare import run_lora_files

        values, _ = collect(raw)
        files = [str(path) for path in run_lora_files(values["output_dir"], values["output_name"])]
        if not files:
            return gr.update(choices=[], value=[]), (f"No LoRA files of **{values['output_name']}** in "
                                                     f"`{values['output_dir'] or '(no output folder)'}` yet.")
        choices = [(path.rsplit("/", 1)[-1].rsplit("\\", 1)[-1], path) for path in files]
        return gr.update(choices=choices, value=files), f"{len(files)} LoRA files found."

    def _run(self, loras, extra, prompts, seed, strength, base, *raw, progress=gr.Progress()):
        from engine.events import Progress
        from engine.models.describe import strip_path_quotes
        from engine.models.errors import ModelFileError
        from engine.sampling.compare import compare_loras, compare_prompts
        from engine.sampling.prompts import SamplePromptError
        from engine.trainer import MODEL_FILES

        if self.page.runner.running:
            return None, "**Training is running;** make the grid when it has finished (both need the GPU)."
        values, problems = collect(raw)
        problems += [f"{key}: choose the {label} on the Model tab" for key, label in MODEL_FILES if not values[key]]
        if problems:
            from gui.actions import problem_list

            return None, problem_list("Fix these first", problems)
        self.stop.clear()
        files = list(loras or []) + [strip_path_quotes(line) for line in (extra or "").splitlines() if line.strip()]

        def report(event):
            if isinstance(event, Progress) and event.total:
                progress((event.done, event.total), desc="sampling")

        try:
            chosen = compare_prompts(prompts if (prompts or "").strip() else values["sample_prompts"], int(seed or 0))
            result = compare_loras(values, files, chosen, strength=float(strength), include_base=bool(base),
                                   on_event=report, stop=self.stop)
        except (ModelFileError, SamplePromptError, ValueError, OSError) as exc:
            return None, f"**Cannot make the grid:** {exc}"
        if result.status != "completed":
            return None, "Stopped; no grid was written."
        from PIL import Image

        with Image.open(result.grid_path) as grid:  # closed at once: Windows keeps open files from being replaced
            grid.load()
            shown = grid.copy()
        return shown, f"{len(result.rows)} rows x {len(chosen)} prompts, saved as `{result.grid_path}`"
