"""`fluxlora train PRESET [--set key=value ...] [--continue]`."""

from __future__ import annotations

import os
import signal
import sys
import threading

from engine.cli import CommandError
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
    from engine.trainer import check_ready, train

    loaded = load_preset(args.preset)
    for line in loaded.report_lines():
        print(f"note: {line}", file=sys.stderr)
    values = apply_overrides(loaded.values, args.set)
    if args.continue_run:
        values = continue_values(values)
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


def continue_values(values: dict) -> dict:
    from engine.train_state import find_latest_state

    state = find_latest_state(values["output_dir"], values["output_name"])
    if state is None:
        raise CommandError(f"--continue: no saved state for {values['output_name']} in {values['output_dir']}; "
                           "train once with save_state or save_state_on_train_end on")
    return dict(values, resume=str(state))


def _request_stop(stop: threading.Event) -> None:
    print("\nstopping at the next step and saving the LoRA; press Ctrl+C again to abort", file=sys.stderr)
    if stop.is_set():
        raise KeyboardInterrupt
    stop.set()


class ProgressPrinter:
    """Engine events -> a tqdm bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self):
        self.bar = None
        self.phase = None

    def __call__(self, event) -> None:
        from tqdm import tqdm

        from engine.events import LOADING, SAVING, Finished, Log, Progress

        if isinstance(event, Log):
            self._write(f"[{event.level}] {event.text}" if event.level != "info" else event.text)
        elif isinstance(event, Progress) and event.total and event.phase not in (SAVING, LOADING):
            if self.phase != event.phase:
                self.close()
                self.phase = event.phase
                self.bar = tqdm(total=event.total, desc=event.phase, file=sys.stderr, dynamic_ncols=True,
                                mininterval=0.5 if sys.stderr.isatty() else 10)
            self.bar.n = event.done
            if event.loss is not None:
                self.bar.set_postfix(epoch=f"{event.epoch}/{event.total_epochs}", loss=f"{event.loss:.4f}",
                                     avg=f"{event.average_loss:.4f}", refresh=False)
            self.bar.refresh()
        elif isinstance(event, Finished):
            self.close()

    def _write(self, text: str) -> None:
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self.phase = None
