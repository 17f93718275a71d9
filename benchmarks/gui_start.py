"""Seconds from starting `fluxlora gui` to the page answering HTTP 200; median of 5.
Target: under 5 s. Run: python benchmarks/gui_start.py"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_start() -> float:
    port = free_port()
    env = dict(os.environ, FLUXLORA_HOME=tempfile.mkdtemp(), GRADIO_ANALYTICS_ENABLED="False")
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "engine", "gui", "--server_port", str(port)], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - start < 60:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
                    if response.status == 200:
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the GUI did not answer within 60 s")
    finally:
        process.terminate()
        process.wait(timeout=10)


def bare_gradio_import() -> float:
    """The floor no app can beat: a fresh Python importing gradio."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import gradio"], check=True, env=dict(os.environ, GRADIO_ANALYTICS_ENABLED="False"))
    return time.perf_counter() - start


def main() -> None:
    times = [one_start() for _ in range(5)]
    print("starts: " + ", ".join(f"{t:.2f}" for t in times) + " s")
    print(f"median: {statistics.median(times):.2f} s  (target < 5 s)")
    floor = statistics.median(bare_gradio_import() for _ in range(3))
    print(f"bare 'import gradio' median of 3: {floor:.2f} s; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
