"""One training run per output folder: a lock file naming the run that holds it.

The file is created with O_EXCL, so of two runs starting together exactly one gets it. It names
the process (id, start time, computer) so a second run can say who holds the folder, and a lock
whose process is gone (a crash, a power cut) is recognised as stale and replaced.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

LOCK_FILE = ".fluxlora-run.lock"


class FolderBusyError(RuntimeError):
    """Another live run holds the output folder; the message names it."""


@dataclass(frozen=True)
class LockInfo:
    pid: int
    host: str
    started_at: float  # when the run took the lock (seconds since the epoch)
    process_started: float  # the process's own start time, so a reused pid is not mistaken for it
    output_name: str = ""

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_at))
        name = f", training {self.output_name}" if self.output_name else ""
        return f"process {self.pid} on {self.host}, started {when}{name}"


def _process_started(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
        return None


def read_lock(folder: str | Path) -> LockInfo | None:
    return read_lock_file(Path(folder) / LOCK_FILE)


def read_lock_file(path: Path) -> LockInfo | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return LockInfo(**data)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (ValueError, TypeError):
        return LockInfo(0, "", 0.0, 0.0, "unreadable lock file")


def is_stale(info: LockInfo) -> bool:
    """True when the process that wrote the lock is gone (only knowable on this computer)."""
    if info.host != socket.gethostname():
        return info.pid == 0  # an unreadable lock; a lock from another computer may be live
    started = _process_started(info.pid)
    return started is None or abs(started - info.process_started) > 1.0


def holder(folder: str | Path) -> LockInfo | None:
    """The live run holding `folder`, or None (no lock, or a stale one)."""
    info = read_lock(folder)
    return None if info is None or is_stale(info) else info


def busy_message(folder, info: LockInfo) -> str:
    return (f"another training run is writing into {folder} ({info.describe()}); wait for it to finish, "
            f"stop it, or choose another output folder")


class RunLock:
    """`with RunLock(folder, name) as lock:` holds the folder; `lock.replaced` is a stale lock's info."""

    def __init__(self, folder: str | Path, output_name: str = ""):
        self.path = Path(folder) / LOCK_FILE
        self.output_name = output_name
        self.replaced: LockInfo | None = None
        self._held = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        mine = LockInfo(pid, socket.gethostname(), time.time(), _process_started(pid) or 0.0, self.output_name)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                info = read_lock(self.path.parent)
                if info is None:
                    continue  # released in between
                if not is_stale(info):
                    raise FolderBusyError(busy_message(self.path.parent, info)) from None
                self.replaced = info
                self._set_aside(info)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(asdict(mine), handle)
            self._held = True
            return
        raise FolderBusyError(f"{self.path.parent}: could not take the run lock {self.path.name}; try again")

    def _set_aside(self, stale: LockInfo) -> None:
        """Remove the stale lock, and only it: when two runs replace one stale lock at once, the
        second would otherwise delete the lock the first has just written."""
        aside = self.path.with_name(f"{LOCK_FILE}.{os.getpid()}.stale")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        if read_lock_file(aside) != stale:  # another run's fresh lock: put it back
            try:
                os.link(aside, self.path)
            except OSError:
                pass
        aside.unlink(missing_ok=True)

    def release(self) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
