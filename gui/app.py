"""The FluxLoRA page: Configuration bar, the option tabs (built from engine.schema), dataset
preparation, utilities, and the training panel. torch and the training engine are imported
only when a button needs them, so the page is up within seconds."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from engine.preset import PresetError, load_preset, save_preset, validate_values  # noqa: E402
from engine.schema import ADVANCED, BASIC, DATASET, FLUX, FOLDERS, MODEL, OPTIONS_TABLE  # noqa: E402
from gui import actions  # noqa: E402
from gui.runner import TrainingRunner  # noqa: E402
from gui.store import WorkingPreset, preset_choices, user_presets_dir  # noqa: E402
from gui.widgets import collect, make_widget, widget_values  # noqa: E402

CSS = """
#status-box {min-height: 2.5em}
.fluxlora-progress {width: 100%; height: 14px}
"""


def build_app(working: WorkingPreset | None = None, runner: TrainingRunner | None = None) -> gr.Blocks:
    working = working or WorkingPreset()
    runner = runner or TrainingRunner()
    widgets: dict[str, gr.components.Component] = {}

    def section(name: str, columns: int) -> None:
        """The section's options in rows of `columns` (a single long column is hard to scan)."""
        options = [option for option in OPTIONS_TABLE if option.section == name]
        for first in range(0, len(options), columns):
            with gr.Row():
                for option in options[first:first + columns]:
                    widgets[option.key] = make_widget(option, working.values[option.key])
                for _ in range(columns - len(options[first:first + columns])):
                    gr.Column()  # keeps the last row's fields as wide as the others

    with gr.Blocks(title="FluxLoRA") as demo:
        gr.Markdown("## FluxLoRA — FLUX.1 LoRA trainer")
        gr.Markdown("### Configuration")
        with gr.Row(equal_height=True):
            preset_path = gr.Textbox(label="Preset file", value=working.preset_path, scale=4, max_lines=1,
                                     elem_id="preset-path", placeholder="path to a .json preset or kohya_ss config")
            preset_pick = gr.Dropdown(label="Presets (shipped and yours)", choices=preset_choices(), value=None,
                                      scale=3, elem_id="preset-pick", allow_custom_value=True,
                                      info=f"Save as puts yours in {user_presets_dir()}")
        with gr.Row(equal_height=True):
            load_button = gr.Button("Load", elem_id="load", size="md")
            save_button = gr.Button("Save", elem_id="save", size="md")
            save_as_name = gr.Textbox(show_label=False, placeholder="name for Save as", max_lines=1,
                                      elem_id="save-as-name", scale=2, container=False)
            save_as_button = gr.Button("Save as", elem_id="save-as", size="md")
        config_status = gr.Markdown(elem_id="config-status")

        with gr.Tabs():
            with gr.Tab("Model", elem_id="tab-model"):
                section(MODEL, 2)
            with gr.Tab("Folders", elem_id="tab-folders"):
                section(FOLDERS, 2)
            with gr.Tab("Parameters", elem_id="tab-parameters"):
                with gr.Accordion("Basic", open=True):
                    section(BASIC, 3)
                with gr.Accordion("Flux.1", open=True):
                    section(FLUX, 3)
                with gr.Accordion("Advanced", open=False):
                    section(ADVANCED, 3)
            with gr.Tab("Dataset Preparation", elem_id="tab-dataset"):
                section(DATASET, 2)
                overwrite = gr.Checkbox(label="Rebuild an existing destination",
                                        info="Rebuilds img/ and reg/; captions, log/ and model/ are kept.",
                                        elem_id="prep-overwrite")
                with gr.Row():
                    prepare_button = gr.Button("Prepare training data", elem_id="prepare")
                    copy_button = gr.Button("Copy info to respective fields", elem_id="copy-info")
                    one_click = gr.Button("Prepare, tag and fill in", variant="primary", elem_id="one-click")
                prep_status = gr.Markdown(elem_id="prep-status")
            with gr.Tab("Utilities", elem_id="tab-utilities"):
                gr.Markdown("### Repair a kohya_ss `train_state.json`\nkohya_ss/sd-scripts stop counting "
                            "`current_step` cumulatively after a resume; this puts the right count back "
                            "(the original is kept as `train_state.json.bak`). A folder repaired once is left "
                            "alone; Start and Continue repair a kohya state the same way when resuming.")
                fix_dir = gr.Textbox(label="State folder", max_lines=1, elem_id="fix-dir",
                                     placeholder="e.g. C:\\lora\\model\\ohwx-000025-state")
                with gr.Row():
                    fix_steps = gr.Number(label="Steps per epoch", value=0, precision=0, minimum=0, elem_id="fix-steps",
                                          info="0 = count them from the image folder of the preset on screen")
                    fix_true = gr.Number(label="True step", value=0, precision=0, minimum=0, elem_id="fix-true-step",
                                         info="Only when the preview says the file cannot tell; 0 = work it out")
                with gr.Row():
                    fix_preview = gr.Button("Preview", elem_id="fix-preview")
                    fix_apply = gr.Button("Repair", elem_id="fix-apply")
                fix_status = gr.Markdown(elem_id="fix-status")

        gr.Markdown("### Training")
        with gr.Row():
            start_button = gr.Button("Start", variant="primary", elem_id="start")
            stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
            continue_button = gr.Button("Continue", elem_id="continue")
            estimate_button = gr.Button("Estimate VRAM", elem_id="estimate")
        run_message = gr.Markdown(elem_id="run-message")  # answers to Start/Stop/Continue; the timer leaves it alone
        vram_status = gr.Markdown(elem_id="vram-status")
        run_status = gr.Markdown(elem_id="status-box")
        progress = gr.HTML(elem_id="progress")
        loss_plot = gr.LinePlot(actions.loss_frame([]), x="step", y="loss", title="Training loss",
                                elem_id="loss-plot", height=260)
        log_tail = gr.Textbox(label="Log (newest last; the full log is in the logging folder)",
                              lines=actions.LOG_LINES, max_lines=actions.LOG_LINES, interactive=False,
                              elem_id="log-tail")
        timer = gr.Timer(1.0)

        inputs = [widgets[option.key] for option in OPTIONS_TABLE]

        # ---- presets ------------------------------------------------------------------
        def on_page_load():
            return [working.preset_path, *widget_values(working.values)]

        demo.load(on_page_load, outputs=[preset_path, *inputs])

        def remember(*raw):
            values, problems = collect(raw)
            if not problems and not validate_values(values):
                working.remember(values)

        gr.on([widget.change for widget in inputs], remember, inputs=inputs, queue=False, show_progress="hidden")

        def do_load(path):
            path = (path or "").strip()
            if not path:
                return [gr.update()] * len(inputs) + [path, "**Choose a preset file first.**"]
            try:
                result = load_preset(path)
            except PresetError as exc:
                return [gr.update()] * len(inputs) + [path, actions.problem_list(f"Could not load {path}", exc.problems)]
            working.remember(result.values, path)
            kind = "kohya_ss config" if result.format == "kohya_ss" else "preset"
            message = f"Loaded {kind} **{Path(path).name}**."
            report = actions.load_report(result)
            if report:
                message += "\n\n" + report
            return [*widget_values(result.values), path, message]

        load_button.click(do_load, inputs=preset_path, outputs=[*inputs, preset_path, config_status])
        preset_pick.input(do_load, inputs=preset_pick, outputs=[*inputs, preset_path, config_status])

        def do_save(path, *raw):
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
            working.remember(values, path)
            return f"Saved **{path}**.", gr.update(choices=preset_choices())

        save_button.click(do_save, inputs=[preset_path, *inputs], outputs=[config_status, preset_pick])

        def do_save_as(name, *raw):
            name = (name or "").strip().removesuffix(".json")
            if not name or any(c in name for c in '<>:"/\\|?*'):
                return "**Give a file name for Save as (no path characters).**", gr.update(), gr.update()
            path = str(user_presets_dir() / f"{name}.json")
            message, choices = do_save(path, *raw)
            return message, choices, path if message.startswith("Saved") else gr.update()

        save_as_button.click(do_save_as, inputs=[save_as_name, *inputs], outputs=[config_status, preset_pick, preset_path])

        # ---- dataset preparation ------------------------------------------------------
        folder_keys = ["train_data_dir", "reg_data_dir", "output_dir", "logging_dir"]
        folder_outputs = [widgets[key] for key in folder_keys]

        def prep(tag: bool, fill: bool):
            def handler(overwrite_dest, *raw, progress=gr.Progress()):
                values, problems = collect(raw)
                if problems:
                    return [actions.problem_list("Cannot prepare", problems)] + [gr.update()] * 4
                message, copy_info = actions.prepare(values, overwrite_dest, tag, progress)
                if fill and copy_info:
                    values.update(copy_info)
                    working.remember(values)
                    return [message] + [copy_info[key] for key in folder_keys]
                return [message] + [gr.update()] * 4
            return handler

        prepare_button.click(prep(False, False), inputs=[overwrite, *inputs], outputs=[prep_status, *folder_outputs])
        one_click.click(prep(True, True), inputs=[overwrite, *inputs], outputs=[prep_status, *folder_outputs])

        def copy_info(*raw):
            values, _ = collect(raw)
            info, message = actions.copy_info(values)
            if not info:
                return [message] + [gr.update()] * 4
            return [message] + [info[key] for key in folder_keys]

        copy_button.click(copy_info, inputs=inputs, outputs=[prep_status, *folder_outputs])

        # ---- utilities ----------------------------------------------------------------
        def fix(dry_run: bool):
            return lambda folder, steps, true, *raw: actions.fix_state(folder, steps, collect(raw)[0], dry_run, true)

        fix_preview.click(fix(True), inputs=[fix_dir, fix_steps, fix_true, *inputs], outputs=fix_status)
        fix_apply.click(fix(False), inputs=[fix_dir, fix_steps, fix_true, *inputs], outputs=fix_status)

        # ---- training -----------------------------------------------------------------
        def start(continuing: bool):
            def handler(*raw):
                values, problems = collect(raw)
                if not problems:
                    working.remember(values)
                message = actions.start(runner, values, problems, continuing)
                return message, actions.vram_text(values) if not problems else gr.update()
            return handler

        start_button.click(start(False), inputs=inputs, outputs=[run_message, vram_status])
        continue_button.click(start(True), inputs=inputs, outputs=[run_message, vram_status])
        stop_button.click(lambda: runner.stop(), outputs=run_message)
        estimate_button.click(lambda *raw: actions.vram_text(collect(raw)[0]), inputs=inputs, outputs=vram_status)

        seen_revision = gr.State(-1)  # per browser tab: what it shows

        def tick(seen):
            revision = runner.revision
            if revision == seen:
                return [gr.skip()] * 5
            return [revision, *actions.render(runner)]

        timer.tick(tick, inputs=seen_revision, outputs=[seen_revision, run_status, progress, loss_plot, log_tail],
                   queue=False, show_progress="hidden")
    return demo


def launch(args) -> int:
    local = args.listen in ("127.0.0.1", "localhost", "::1")
    credentials = (args.username, args.password) if args.username and args.password else None
    if (args.username or args.password) and not credentials:
        print("error: give both --username and --password", file=sys.stderr)
        return 1
    if not local and credentials is None:
        print(f"warning: listening on {args.listen} without --username/--password: anyone on your network "
              "can open this page and start training", file=sys.stderr)
    demo = build_app()
    demo.queue(default_concurrency_limit=4)
    print(f"FluxLoRA is at http://{'127.0.0.1' if local else args.listen}:{args.server_port}", file=sys.stderr)
    demo.launch(server_name=args.listen, server_port=args.server_port, inbrowser=args.inbrowser, share=args.share,
                auth=credentials, quiet=True, css=CSS, show_error=True)
    return 0
