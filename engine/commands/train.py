"""`fluxlora train PRESET [--set key=value ...] [--continue]`."""

from __future__ import annotations

import os
import signal
import sys
import threading

from engine.commands import CommandError
from engine.console import ProgressPrinter
from engine.preset import apply_overrides, load_preset


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a LoRA from a preset")
    parser.add_argument("preset", metavar="PRESET")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a preset value (repeatable)")
    parser.add_argument("--continue", dest="continue_run", action="store_true",
                        help="continue from the newest saved state of this output name, up to the preset's epochs")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from engine.train_state import StateError
    from engine.trainer import check_ready, continue_from_latest_state, train

    loaded = load_preset(args.preset)
    for line in loaded.report_lines():
        print(f"note: {line}", file=sys.stderr)
    values = apply_overrides(loaded.values, args.set)
    if args.continue_run:
        try:
            values = continue_from_latest_state(values)
        except StateError as exc:
            raise CommandError(f"--continue: {exc}") from None
    problems = check_ready(values)
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: _request_stop(stop))
    printer = ProgressPrinter()
    try:
        result = train(values, on_event=printer, stop=stop)
    finally:
        signal.signal(signal.SIGINT, previous)
        printer.close()
    if result.status == "failed":
        log = f" (log: {result.log_path})" if result.log_path else ""
        raise CommandError(result.message + log)
    if os.environ.get("RANK", "0") == "0":  # under accelerate/torchrun only the main process reports
        print(result.message)
    return 0


def _request_stop(stop: threading.Event) -> None:
    print("\nstopping at the next step and saving the LoRA; press Ctrl+C again to abort", file=sys.stderr)
    if stop.is_set():
        raise KeyboardInterrupt
    stop.set()
