import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.fixtures.cli import run_engine
from tests.fixtures.ports import free_port

ROOT = Path(__file__).resolve().parents[1]


def test_gui_command_binds_the_given_host_and_warns_without_credentials(tmp_path):
    """`fluxlora gui --listen HOST` binds HOST and warns that anyone there can train."""
    port = free_port()
    env = dict(os.environ, FLUXLORA_HOME=str(tmp_path), GRADIO_ANALYTICS_ENABLED="False")
    process = subprocess.Popen([sys.executable, "-m", "engine", "gui", "--listen", "127.0.0.2", "--server_port", str(port)],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, status = time.monotonic() + 90, None
        while status is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.2:{port}/", timeout=2) as response:
                    status = response.status
            except OSError:
                time.sleep(0.2)
        assert status == 200
    finally:
        process.terminate()
        stderr = process.communicate(timeout=30)[1]
    assert "warning: listening on 127.0.0.2 without --username/--password" in stderr


def test_gui_command_needs_both_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("FLUXLORA_HOME", str(tmp_path))
    result = run_engine("gui", "--username", "me")
    assert result.returncode == 1 and "give both --username and --password" in result.stderr


def test_share_without_credentials_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("FLUXLORA_HOME", str(tmp_path))
    result = run_engine("gui", "--share")
    assert result.returncode == 1
    assert "error: --share makes a public link anyone can open" in result.stderr
    assert "give --username and --password with --share" in result.stderr
