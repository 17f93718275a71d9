"""The "TensorBoard" button: a TensorBoard server on the run's logging folder, started once."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

_SERVERS: dict[str, tuple[subprocess.Popen, int]] = {}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def open_tensorboard(log_dir: str | Path) -> str:
    """Markdown with the link to TensorBoard on `log_dir` (started now, or the one already running)."""
    folder = Path(log_dir)
    if not folder.is_dir():
        return f"No logging folder yet ({folder}); it appears once a run has started."
    key = str(folder.resolve())
    server = _SERVERS.get(key)
    if server is None or server[0].poll() is not None:
        port = _free_port()
        process = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", key, "--port", str(port),
                                    "--host", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _SERVERS[key] = server = (process, port)
        deadline = time.time() + 20
        while time.time() < deadline and process.poll() is None and not _listening(port):
            time.sleep(0.25)
        if process.poll() is not None:
            return "TensorBoard could not start (is the tensorboard package installed?)."
    url = f"http://127.0.0.1:{server[1]}/"
    return f"TensorBoard on `{folder}`: [{url}]({url})"


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def stop_all() -> None:
    for process, _ in _SERVERS.values():
        if process.poll() is None:
            process.terminate()
    _SERVERS.clear()
