"""Writing files and folders so that a crash never leaves a half-written one behind."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

# tempfile creates private (0600/0700) entries; finished files get the usual permissions.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class DiskFullError(OSError):
    """The disk filled up while writing `filename` (the final path; its temporary file is gone)."""


_FULL_MARKERS = ("No space left", "StorageFull", "os error 28", "code: 28", "file write failed", "There is not enough space")


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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to `path`; on success it replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
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
    under a `.old` name for the instant between two renames).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        try:
            yield tmp
        except Exception as exc:
            _raise_if_disk_full(exc, path)
            raise
        os.chmod(tmp, 0o777 & ~_UMASK)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
