"""Console output for the CLI: UTF-8 that never crashes on a non-ASCII file name (Windows consoles
may be cp1252), and engine events as a progress bar."""

from __future__ import annotations

import sys


def use_utf8_console() -> None:
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(encoding="utf-8", errors="replace")
            except (ValueError, OSError):
                pass  # a stream that cannot be reconfigured (already detached) keeps its encoding


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
