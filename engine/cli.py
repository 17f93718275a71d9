"""`fluxlora` command line: parse, call the engine, print. Each subcommand lives in
engine/commands/<name>.py with `register(subparsers)`; the handler it sets returns an exit code.

Failures the user can fix raise `CommandError`, `PresetError` or `ValueError` and are printed
as one line on stderr with exit status 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from engine.console import use_utf8_console
from engine.preset import PresetError

COMMAND_MODULES = ("gui", "preset", "prepare", "tag", "train", "fix_state", "estimate", "sample")


class CommandError(Exception):
    """A failure with a message for the user; exit status 1."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fluxlora", description="Train FLUX.1 LoRAs.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"engine.commands.{name}").register(subparsers)
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
