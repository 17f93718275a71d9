"""What protects a run's output folder while it runs: the folder lock and the explicit overwrite;
and the words for a full disk."""

from __future__ import annotations

import contextlib
import errno
import os

from engine.events import Log, emit
from engine.fsutil import DiskFullError


def _main_process() -> bool:
    # Under torchrun/accelerate every process runs train(); only rank 0 writes files and holds the lock.
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def output_guard(values: dict, overwrite: bool, on_event=None):
    """Hold the output folder's run lock for the run; with `overwrite`, first delete the previous
    run's files of this output name (never those of other names). Yields whether this is the
    process that writes files (rank 0 under torchrun)."""
    from engine.training.lock import RunLock
    from engine.training.outputs import remove_run_files

    if not _main_process():
        yield False
        return
    with RunLock(values["output_dir"], values["output_name"]) as lock:
        if lock.replaced is not None:
            emit(on_event, Log(f"replaced a stale run lock left by {lock.replaced.describe()}", "warning"))
        if overwrite and not values["resume"]:
            removed = remove_run_files(values["output_dir"], values["output_name"])
            if removed:
                emit(on_event, Log(f"overwrite: deleted the previous run's {len(removed)} files of "
                                   f"{values['output_name']} ({', '.join(p.name for p in removed[:6])}"
                                   f"{', ...' if len(removed) > 6 else ''})", "warning"))
        yield True


def disk_full_message(exc: BaseException) -> str | None:
    if isinstance(exc, DiskFullError) or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC):
        where = exc.filename or "a file"
        return (f"the disk is full: {where} could not be written (nothing half-written was kept); free some "
                "space on that drive")
    return None
