"""Writing files and folders so that a crash never leaves a half-written one behind.

Written for Windows' rules, which are stricter than POSIX's: `os.fsync` needs a handle opened
for writing, and a file that any program holds open (an antivirus scan, the search indexer,
ComfyUI reading last epoch's LoRA) cannot be replaced for a moment, so a replace is retried
briefly before it fails with a message naming the file.

Temporary entries are named `NAME.fluxlora-PID-XXXXXXXX.tmp` next to NAME: visible (dot-names
are not hidden on Windows), recognisably temporary, and removable by `sweep_stale_temps` once
the process that wrote them is gone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

# tempfile creates private (0600/0700) entries; finished files get the usual permissions.
_UMASK = os.umask(0o022)
os.umask(_UMASK)

_TEMP = re.compile(r"^(?P<target>.+)\.fluxlora-(?P<pid>\d+)-[a-z0-9_]+(?P<old>\.old)?\.tmp$")
STALE_AFTER_S = 24 * 3600  # past this, even a live PID is taken to be another process by now
REPLACE_RETRY_S = 5.0  # how long a replace waits for another program to let go of a file


class DiskFullError(OSError):
    """The disk filled up while writing `filename` (the final path; its temporary file is gone)."""


_FULL_MARKERS = ("No space left", "StorageFull", "os error 28", "code: 28", "file write failed",
                 "There is not enough space")


def _raise_if_disk_full(exc: BaseException, path: Path) -> None:
    """Re-raise a write failure caused by a full disk as DiskFullError naming `path`. torch and
    safetensors wrap the OS error in their own exception types, so their text is checked too."""
    if isinstance(exc, DiskFullError):
        return
    full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
    if not full and any(marker in str(exc) for marker in _FULL_MARKERS):
        try:
            full = shutil.disk_usage(path.parent).free < 64 * 1024 * 1024 or "28" in str(exc) or "space" in str(exc)
        except OSError:
            full = True
    if full:
        raise DiskFullError(errno.ENOSPC, "No space left on device", str(path)) from exc


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text (no BOM, `\\n` line ends) via a temp file and rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def temp_prefix(path: Path) -> str:
    return f"{path.name}.fluxlora-{os.getpid()}-"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to `path`; on success it replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        replace(tmp, path)
    except Exception as exc:
        _raise_if_disk_full(exc, path)
        raise
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; on success it becomes `path`.

    An existing `path` is replaced only after the new folder is complete, so at every
    moment either the old or the new folder exists under the final name (or the old one
    under its `.old.tmp` name for the instant between two renames, which
    `sweep_stale_temps` puts back after a crash).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        try:
            yield tmp
        except Exception as exc:
            _raise_if_disk_full(exc, path)
            raise
        os.chmod(tmp, 0o777 & ~_UMASK)
        if path.exists():
            old = old_name(path)
            replace(path, old)
            try:
                replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def old_name(path: Path) -> Path:
    """Where an entry waits while its replacement is renamed into place."""
    return path.with_name(f"{temp_prefix(path)}{secrets.token_hex(4)}.old.tmp")


def replace(source: Path, target: Path, retry_s: float | None = None) -> None:
    """os.replace, retried for a few seconds while another program holds either file
    (PermissionError on Windows); then a PermissionError that names the file and the cure."""
    deadline = time.monotonic() + (REPLACE_RETRY_S if retry_s is None else retry_s)
    wait = 0.02
    while True:
        try:
            os.replace(source, target)
            return
        except PermissionError as exc:
            if time.monotonic() + wait > deadline:
                raise PermissionError(
                    f"could not write {target}: another program keeps it (or {source.name}) open, or the "
                    "folder is read-only. Close programs that may be using it (an image viewer, ComfyUI, a "
                    f"sync tool; antivirus scans finish in seconds) and try again ({exc})") from exc
            time.sleep(wait)
            wait = min(wait * 2, 0.5)


def _fsync_file(path: Path) -> None:
    # Windows flushes only through a handle with write access ("rb" gives EBADF there).
    with open(path, "r+b") as handle:
        os.fsync(handle.fileno())


def sweep_stale_temps(folder: str | os.PathLike) -> list[str]:
    """Remove the temporaries that a crashed FluxLoRA left in `folder` (not below it).

    Only our names, and only those whose writing process is gone (or that nobody touched for a
    day): a second FluxLoRA writing into the same folder keeps its files. A folder parked under
    its `.old.tmp` name whose final name is missing is renamed back instead. Returns what was
    done, one line per entry, for the log.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    done = []
    for entry in sorted(folder.iterdir()):
        match = _TEMP.match(entry.name)
        if not match or not _is_stale(entry, int(match["pid"])):
            continue
        target = entry.with_name(match["target"])
        try:
            if match["old"] and not target.exists():
                os.replace(entry, target)
                done.append(f"restored {target.name} from an interrupted save")
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            done.append(f"removed {entry.name}, left over from an interrupted save")
        except FileNotFoundError:
            continue
        except OSError as exc:  # held open by another program: next time
            done.append(f"could not remove {entry.name} ({exc})")
    return done


def _is_stale(entry: Path, pid: int) -> bool:
    try:
        age = time.time() - _newest_mtime(entry)
    except OSError:
        return False
    if age > STALE_AFTER_S:
        return True
    return pid != os.getpid() and not _pid_running(pid)


def _newest_mtime(entry: Path) -> float:
    newest = entry.lstat().st_mtime
    if entry.is_dir() and not entry.is_symlink():
        for child in entry.rglob("*"):
            newest = max(newest, child.lstat().st_mtime)
    return newest


def _pid_running(pid: int) -> bool:
    import psutil  # never os.kill(pid, 0): on Windows that terminates the process

    return psutil.pid_exists(pid)
