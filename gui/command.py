"""`fluxlora gui`: starts the Gradio app. The gui package plugs this command into the engine's CLI
through the `fluxlora.commands` entry point (pyproject.toml), so the engine never imports gui."""

from __future__ import annotations


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
    from gui.app import launch  # gradio is imported only when the page is asked for

    return launch(args)
