"""The operating system's own file / folder dialog, run as `python -m gui.pick_dialog KIND INITIAL`.

A child process, so Tk owns its main thread (the GUI's handlers run on worker threads) and the
server needs no fork. Prints the chosen path (nothing when cancelled)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

FILE_TYPES = {"file": [("safetensors", "*.safetensors"), ("all files", "*.*")]}


def has_desktop() -> bool:
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def pick_path(kind: str, initial: str) -> tuple[str | None, str]:
    """(chosen path or None, message). `kind` is "file" or "dir"."""
    if not has_desktop():
        return None, "no desktop here to show a file dialog on; type or paste the path"
    start = Path(initial) if initial else Path.home()
    folder = start if start.is_dir() else start.parent if start.parent.is_dir() else Path.home()
    try:
        result = subprocess.run([sys.executable, "-m", "gui.pick_dialog", kind, str(folder)], capture_output=True,
                                text=True, encoding="utf-8", timeout=900, cwd=Path(__file__).resolve().parents[1])
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"the file dialog did not open ({exc}); type or paste the path"
    if result.returncode != 0:
        return None, "the file dialog did not open (tkinter missing?); type or paste the path"
    chosen = result.stdout.strip()
    return (chosen or None), ("" if chosen else "cancelled")


def main(argv: list[str]) -> int:
    import tkinter
    from tkinter import filedialog

    kind, initial = argv[0], argv[1] if len(argv) > 1 else ""
    root = tkinter.Tk()
    root.withdraw()
    root.attributes("-topmost", True)  # in front of the browser
    if kind == "dir":
        chosen = filedialog.askdirectory(initialdir=initial or None, parent=root)
    else:
        chosen = filedialog.askopenfilename(initialdir=initial or None, filetypes=FILE_TYPES["file"], parent=root)
    root.destroy()
    if chosen:
        sys.stdout.reconfigure(encoding="utf-8")
        print(str(Path(chosen)))  # native separators (C:\... on Windows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
