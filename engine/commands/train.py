"""`fluxlora train PRESET [--set key=value ...] [--continue] [--overwrite]`."""

from __future__ import annotations

import os
import signal
import sys
import threading

from engine.commands import CommandError
from engine.console import ProgressPrinter
from engine.preset import load_preset
from engine.preset_overrides import apply_overrides


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a LoRA from a preset")
    parser.add_argument("preset", metavar="PRESET")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a preset value (repeatable)")
    parser.add_argument("--continue", dest="continue_run", action="store_true",
                        help="continue from the newest saved state of this output name, up to the preset's epochs")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a finished run of the same output name (its LoRA files and states are deleted)")
    parser.add_argument("--check", action="store_true",
                        help="only run the preflight checks (seconds) and print what they find")
    parser.set_defaults(handler=run)


STOPPED_EXIT = 130  # like a shell's Ctrl+C: a stopped run is not a finished one


def run(args) -> int:
    from engine.preflight import preflight
    from engine.train_state import StateError
    from engine.trainer import continue_from_latest_state, train

    loaded = load_preset(args.preset)
    for line in loaded.report_lines():
        print(f"note: {line}", file=sys.stderr)
    values = apply_overrides(loaded.values, args.set)
    if args.continue_run:
        try:
            values = continue_from_latest_state(values)
        except StateError as exc:
            raise CommandError(f"--continue: {exc}") from None
    report = preflight(values, overwrite=args.overwrite)
    if report.problems or args.check:
        print_report(report, values)
        return 1 if report.problems else 0
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: _request_stop(stop))
    printer = ProgressPrinter()
    try:
        result = train(values, on_event=printer, stop=stop, overwrite=args.overwrite)
    finally:
        signal.signal(signal.SIGINT, previous)
        printer.close()
    if result.status == "failed":
        log = f" (log: {result.log_path})" if result.log_path else ""
        raise CommandError(result.message + log)
    if os.environ.get("RANK", "0") == "0":  # under accelerate/torchrun only the main process reports
        print(result.message)
    return STOPPED_EXIT if result.status == "stopped" else 0


def print_report(report, values: dict) -> None:
    for line in report.notes:
        print(line, file=sys.stderr)
    for line in report.warnings:
        print(f"warning: {line}", file=sys.stderr)
    for problem in report.problems:
        print(f"error: {problem}", file=sys.stderr)
    if report.existing_run is not None:
        from engine.training.outputs import free_name

        print(f"error: to keep it: --continue to train it further, --set output_name="
              f"{free_name(values['output_dir'], values['output_name'])} for a new run beside it, or --overwrite "
              "to delete its files and start again", file=sys.stderr)
    if not report.problems:
        print("ready: no problems found", file=sys.stderr)


def _request_stop(stop: threading.Event) -> None:
    print("\nstopping at the next step and saving the LoRA; press Ctrl+C again to abort", file=sys.stderr)
    if stop.is_set():
        raise KeyboardInterrupt
    stop.set()
