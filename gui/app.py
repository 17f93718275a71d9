"""The FluxLoRA page: Configuration bar, the option tabs (built from engine.schema), dataset
preparation, utilities, and the training panel. torch and the training engine are imported
only when a button needs them, so the page is up within seconds."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from engine.schema import ADVANCED, BASIC, FLUX, FOLDERS, MODEL, SAMPLES  # noqa: E402
from gui.parts.compare_tab import CompareTab  # noqa: E402
from gui.parts.config_bar import ConfigBar  # noqa: E402
from gui.parts.dataset_tab import DatasetTab  # noqa: E402
from gui.parts.gallery_tab import GalleryTab  # noqa: E402
from gui.parts.page import Page  # noqa: E402
from gui.parts.paths import wire_path_fields  # noqa: E402
from gui.parts.training_panel import TrainingPanel  # noqa: E402
from gui.parts.utilities_tab import UtilitiesTab  # noqa: E402
from gui.runner import TrainingRunner  # noqa: E402
from gui.store import WorkingPreset  # noqa: E402

CSS = """
#status-box {min-height: 2.5em}
.fluxlora-progress {width: 100%; height: 14px}
.path-about {font-size: 0.85em; opacity: 0.8; padding: 0 0.6em}
"""


def build_app(working: WorkingPreset | None = None, runner: TrainingRunner | None = None) -> gr.Blocks:
    page = Page(working or WorkingPreset(), runner or TrainingRunner())
    with gr.Blocks(title="FluxLoRA") as demo:
        gr.Markdown("## FluxLoRA — FLUX.1 LoRA trainer")
        parts = [ConfigBar(page)]
        with gr.Tabs():
            with gr.Tab("Model", elem_id="tab-model"):
                page.section(MODEL, 2)
            with gr.Tab("Folders", elem_id="tab-folders"):
                page.section(FOLDERS, 2)
            with gr.Tab("Parameters", elem_id="tab-parameters"):
                for title, name, is_open, columns in (("Basic", BASIC, True, 3), ("Flux.1", FLUX, True, 3),
                                                      ("Advanced", ADVANCED, False, 3),
                                                      ("Sample images", SAMPLES, False, 2)):
                    with gr.Accordion(title, open=is_open, elem_id=f"acc-{title.split()[0].lower()}"):
                        page.section(name, columns)
            with gr.Tab("Dataset Preparation", elem_id="tab-dataset"):
                parts.append(DatasetTab(page))
            with gr.Tab("Dataset gallery", elem_id="tab-gallery"):
                parts.append(GalleryTab(page))
            with gr.Tab("Compare epochs", elem_id="tab-compare"):
                parts.append(CompareTab(page))
            with gr.Tab("Utilities", elem_id="tab-utilities"):
                parts.append(UtilitiesTab(page))
        parts.append(TrainingPanel(page))
        for part in parts:  # events need every option widget, so they are wired once all exist
            part.wire(demo)
        wire_path_fields(demo, page.path_fields)
    return demo


# How often Gradio's queue looks for new events when it has none: Gradio's own pace on Windows. On other
# systems Gradio looks every 1 ms (progress every 10 ms), which keeps an idle page's server ~5% of a core busy.
QUEUE_IDLE_PACE = {"sleep_when_free": 0.05, "progress_update_sleep_when_free": 0.1}


def start_queue(demo: gr.Blocks) -> gr.Blocks:
    demo.queue(default_concurrency_limit=4)
    for name, seconds in QUEUE_IDLE_PACE.items():  # no public setting (Gradio 6); tests pin that these exist
        if hasattr(demo._queue, name):
            setattr(demo._queue, name, seconds)
    return demo


def launch(args) -> int:
    local = args.listen in ("127.0.0.1", "localhost", "::1")
    credentials = (args.username, args.password) if args.username and args.password else None
    if (args.username or args.password) and not credentials:
        print("error: give both --username and --password", file=sys.stderr)
        return 1
    if args.share and credentials is None:
        print("error: --share makes a public link anyone can open, and this page can read and write files on "
              "this computer; give --username and --password with --share", file=sys.stderr)
        return 1
    if not local and credentials is None:
        print(f"warning: listening on {args.listen} without --username/--password: anyone on your network "
              "can open this page and start training", file=sys.stderr)
    demo = start_queue(build_app())
    print(f"FluxLoRA is at http://{'127.0.0.1' if local else args.listen}:{args.server_port}", file=sys.stderr)
    demo.launch(server_name=args.listen, server_port=args.server_port, inbrowser=args.inbrowser, share=args.share,
                auth=credentials, quiet=True, css=CSS, show_error=True)
    return 0
