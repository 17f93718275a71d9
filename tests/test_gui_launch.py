import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_gui_command_serves_the_page_and_warns_when_listening_openly(tmp_path):
    port = free_port()
    env = dict(os.environ, FLUXLORA_HOME=str(tmp_path))
    process = subprocess.Popen([sys.executable, "-m", "engine", "gui", "--listen", "0.0.0.0", "--server_port", str(port)],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        status = None
        while time.time() < deadline and status is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    status = response.status
            except OSError:
                time.sleep(0.2)
        assert status == 200
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=20)
    assert "warning: listening on 0.0.0.0 without --username/--password" in stderr


def test_gui_command_needs_both_credentials(tmp_path):
    result = subprocess.run([sys.executable, "-m", "engine", "gui", "--username", "me"], cwd=ROOT, capture_output=True,
                            text=True, env=dict(os.environ, FLUXLORA_HOME=str(tmp_path)), timeout=60)
    assert result.returncode == 1 and "give both --username and --password" in result.stderr
