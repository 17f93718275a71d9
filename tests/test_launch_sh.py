"""launch.sh against a stand-in python3.12 that records its arguments, under bash and under dash.

dash has no arrays and none of bash 4's leniency, so a script that runs under it also runs under
macOS's bash 3.2 (where "${empty[@]}" with set -u aborts a first install).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STANDIN = """#!/bin/sh
printf '%s' "$(basename "$0")" >>"$STANDIN_LOG"
for arg in "$@"; do printf '\\t%s' "$arg" >>"$STANDIN_LOG"; done
printf '\\n' >>"$STANDIN_LOG"
if [ "${1:-}" = "-m" ] && [ "${2:-}" = "venv" ]; then
    mkdir -p "$3/bin" && cp "$0" "$3/bin/python"
fi
case " $* " in *" pytest "*) exit "${STANDIN_PYTEST_EXIT:-0}" ;; esac
exit 0
"""


@pytest.fixture
def machine(tmp_path):
    folder = tmp_path / "My Flüx (LoRA)"
    folder.mkdir()
    for name in ("launch.sh", "pyproject.toml"):
        shutil.copy(ROOT / name, folder / name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "python3.12"
    python.write_text(STANDIN, encoding="utf-8")
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    return folder, bin_dir, tmp_path / "calls.txt"


def run(machine, shell: str, *args: str, **env: str):
    folder, bin_dir, log = machine
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} not installed")
    log.unlink(missing_ok=True)
    environment = {key: value for key, value in os.environ.items() if not key.startswith("FLUXLORA_")}
    environment.update(PATH=f"{bin_dir}:/usr/bin:/bin", STANDIN_LOG=str(log), **env)
    result = subprocess.run([shell, str(folder / "launch.sh"), *args], cwd=bin_dir, env=environment,
                            capture_output=True, text=True, timeout=60)
    calls = [line.split("\t") for line in log.read_text(encoding="utf-8").splitlines()] if log.is_file() else []
    return result, calls


@pytest.mark.parametrize("shell", ["bash", "dash"])
def test_first_install_without_an_index_then_pytests_exit_code(machine, shell):
    folder = machine[0]
    result, calls = run(machine, shell, "test", "-q", "-k", "a b", STANDIN_PYTEST_EXIT="3")
    assert result.returncode == 3, result.stderr
    venv = str(folder / ".venv")
    assert calls[1:] == [
        ["python3.12", "--version"],
        ["python3.12", "-m", "venv", venv],
        ["python", "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
        ["python", "-m", "pip", "install", "--quiet", "torch>=2.5"],  # no index: nothing, not an empty word
        ["python", "-m", "pip", "install", "--quiet", "-e", ".[test]", "--constraint", f"{venv}/torch-constraint.txt"],
        ["python", "-m", "engine.gpu_check"],
        ["python", "-m", "pytest", "-q", "-k", "a b"],
    ]
    assert calls[0][:2] == ["python3.12", "-c"]
    result, calls = run(machine, shell, "test")  # installed: straight to pytest
    assert result.returncode == 0 and calls == [["python", "-m", "pytest"]]


@pytest.mark.parametrize("shell", ["bash", "dash"])
def test_an_index_is_the_only_one_torch_comes_from_and_reinstalls(machine, shell):
    run(machine, shell, "test")
    index = "https://download.pytorch.org/whl/cu126"
    result, calls = run(machine, shell, "--server_port", "7861", FLUXLORA_TORCH_INDEX=index,
                        FLUXLORA_TORCH="torch==2.9.1")
    assert result.returncode == 0, result.stderr
    assert ["python", "-m", "pip", "install", "--quiet", "--index-url", index, "torch==2.9.1"] in calls
    assert calls[-1] == ["python", "-m", "engine", "gui", "--server_port", "7861"]
    assert (machine[0] / ".venv/torch-constraint.txt").read_text(encoding="utf-8") == "torch==2.9.1\n"
