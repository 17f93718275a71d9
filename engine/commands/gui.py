"""`fluxlora gui`: starts the Gradio app (the gui package, imported only when asked for)."""

from __future__ import annotations

import importlib

from engine.cli import CommandError


def register(subparsers) -> None:
    parser = subparsers.add_parser("gui", help="open the FluxLoRA page in your browser")
    parser.add_argument("--listen", default="127.0.0.1", metavar="HOST",
                        help="address to bind (default 127.0.0.1: this computer only)")
    parser.add_argument("--server_port", type=int, default=7860, metavar="N")
    parser.add_argument("--inbrowser", action="store_true", help="open a browser tab")
    parser.add_argument("--share", action="store_true", help="make a public Gradio link")
    parser.add_argument("--username", default="", metavar="U")
    parser.add_argument("--password", default="", metavar="P")
    parser.set_defaults(handler=run)


def run(args) -> int:
    try:
        app = importlib.import_module("gui.app")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("gui"):
            raise CommandError("the GUI is not built yet in this version; use the fluxlora CLI") from None
        raise
    return app.launch(args)
