"""`fluxlora` command line: parse, call the engine, print. Each subcommand lives in
engine/commands/<name>.py with `register(subparsers)`; the handler it sets returns an exit code.
Front ends outside the engine (the GUI) add their commands through the `fluxlora.commands`
entry point group, so the engine never imports them.

Failures the user can fix raise `CommandError`, `PresetError` or `ValueError` and are printed
as one line on stderr with exit status 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

from engine.commands import CommandError, estimate, fix_state, prepare, preset, sample, tag, train
from engine.console import use_utf8_console
from engine.preset import PresetError

ENGINE_COMMANDS = (preset, prepare, tag, train, fix_state, estimate, sample)
PLUGIN_GROUP = "fluxlora.commands"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fluxlora", description="Train FLUX.1 LoRAs.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for plugin in sorted(entry_points(group=PLUGIN_GROUP), key=lambda point: point.name):
        plugin.load()(subparsers)
    for module in ENGINE_COMMANDS:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    use_utf8_console()
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except PresetError as exc:
        for problem in exc.problems:
            print(f"error: {exc.source}: {problem}", file=sys.stderr)
        return 1
    except (CommandError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
