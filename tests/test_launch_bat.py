"""launch.bat run by Wine's cmd.exe against stand-in py.exe / python.exe / nvidia-smi.exe.

The stand-ins (tests/wine/standin.c, built here with mingw-w64) record their arguments and answer
with chosen output and exit codes, so every branch of the script runs as cmd.exe parses it:
block-time %VAR% expansion, `>` in echoed text, quoting of paths with spaces, parentheses,
`&` and non-ASCII letters. Needs `apt-get install wine gcc-mingw-w64-x86-64`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALL = "apt-get install -y wine gcc-mingw-w64-x86-64"
FOLDER = "My (x86) Flüx & Co/FluxLoRA"  # spaces, parentheses, & and a non-ASCII letter
PROBE = ("import sys, struct; print('fluxlora-python', sys.version_info[0], sys.version_info[1], "
         "struct.calcsize('P') * 8)")
CU128 = "https://download.pytorch.org/whl/cu128"


def winpath(path: Path) -> str:
    return "Z:" + str(path).replace("/", "\\")


@pytest.fixture(scope="session")
def wine(tmp_path_factory):
    missing = [tool for tool in ("wine", "wineserver", "x86_64-w64-mingw32-gcc") if shutil.which(tool) is None]
    if missing:
        message = f"{', '.join(missing)} not installed; install with: {INSTALL}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    base = tmp_path_factory.mktemp("wine")
    standin = base / "standin.exe"
    subprocess.run(["x86_64-w64-mingw32-gcc", "-O1", "-municode", "-o", str(standin),
                    str(ROOT / "tests/wine/standin.c")], check=True, capture_output=True, timeout=120)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("FLUXLORA_", "DISPLAY"))}
    env.update(WINEPREFIX=str(base / "prefix"), WINEDEBUG="-all", WINEDLLOVERRIDES="mscoree,mshtml=",
               LANG="C.UTF-8")
    # A throwaway prefix, made once per session (wineboot); a persistent wineserver keeps each run fast.
    server = subprocess.Popen(["wineserver", "-f", "-p"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    subprocess.run(["wineboot", "-i"], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=300)
    yield standin, env
    subprocess.run(["wineserver", "-k"], env=env, capture_output=True, timeout=60)
    server.wait(timeout=60)


class Machine:
    """A Windows machine in a folder: the FluxLoRA folder, a PATH of stand-ins, their rules and log."""

    def __init__(self, wine, root: Path):
        self.standin, self.env = wine
        self.root = root
        self.folder = root / FOLDER
        self.folder.mkdir(parents=True)
        for name in ("launch.bat", "pyproject.toml"):
            shutil.copy(ROOT / name, self.folder / name)
        self.bin = root / "bin"
        self.bin.mkdir()
        self.log = root / "calls.txt"
        self.rules: list[str] = []

    def provide(self, *names: str) -> Machine:
        for name in names:
            shutil.copy(self.standin, self.bin / f"{name}.exe")
        return self

    def answer(self, program: str, substring: str, exit_code: int = 0, text: str = "", action: str = "-"):
        """The first matching rule wins, so add specific ones first."""
        self.rules.append("\t".join([program, substring, str(exit_code), action, text.replace("\n", "\\n")]))
        return self

    def python(self, version: str, bits: int = 64, launcher: str = "py", flag: str = "") -> Machine:
        """A Python the probe finds: `py -3.12` (flag "-3.12") or `python` on PATH (launcher "python")."""
        major, minor = version.split(".")
        self.answer(launcher, f"{flag} -m venv".strip(), action="venv")
        return self.answer(launcher, f"{flag} -c {PROBE}".strip(), text=f"fluxlora-python {major} {minor} {bits}\n")

    def run(self, *args: str, cwd: Path | None = None, extra_env: dict | None = None,
            bat: str = "launch.bat") -> subprocess.CompletedProcess:
        (self.root / "rules.txt").write_text("\n".join(self.rules + [""]), encoding="utf-8")
        env = dict(self.env, WINEPATH=winpath(self.bin), STANDIN_LOG=winpath(self.log),
                   STANDIN_RULES=winpath(self.root / "rules.txt"), STANDIN_PYTHON=winpath(self.bin / "python.exe"),
                   **(extra_env or {}))
        self.log.unlink(missing_ok=True)
        # Output to files, not pipes: Wine's helper processes may keep a pipe open after cmd exits.
        with open(self.root / "out.txt", "wb") as out, open(self.root / "err.txt", "wb") as err:
            done = subprocess.run(["wine", "cmd", "/c", bat, *args], cwd=cwd or self.folder, env=env,
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=err, timeout=120)
        read = lambda name: (self.root / name).read_text(encoding="utf-8", errors="replace")  # noqa: E731
        return subprocess.CompletedProcess(done.args, done.returncode, read("out.txt"), read("err.txt"))

    def calls(self) -> list[list[str]]:
        if not self.log.is_file():
            return []
        return [line.split("\t") for line in self.log.read_text(encoding="utf-8").splitlines()]

    def entries(self) -> list[str]:
        return sorted(path.name for path in self.folder.iterdir())


@pytest.fixture
def machine(wine, tmp_path):
    return Machine(wine, tmp_path)


def venv(machine: Machine) -> str:
    return winpath(machine.folder / ".venv")


def installs(machine: Machine, extras: str, torch: str = "torch==2.9.1+cu128", index: str = CU128) -> list[list[str]]:
    return [
        ["python", "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
        ["python", "-m", "pip", "install", "--quiet", torch, "--index-url", index],
        ["python", "-m", "pip", "install", "--quiet", "-e", f".{extras}", "--constraint",
         f"{venv(machine)}\\torch-constraint.txt"],
        ["python", "-m", "engine.gpu_check"],
    ]


def test_test_mode_installs_torch_from_the_cuda_index_only_and_returns_pytests_exit_code(machine):
    machine.provide("py", "python", "nvidia-smi").python("3.12", flag="-3.12")
    machine.answer("python", "-m pytest", exit_code=3, text="1 failed\n")
    result = machine.run("test", "-q", "-k", "not slow and (a or b)")
    assert result.returncode == 3, result.stdout + result.stderr  # not the 0 the line before pytest left
    assert machine.calls() == [
        ["py", "-3.12", "-c", PROBE],
        ["py", "-3.12", "-m", "venv", venv(machine)],
        *installs(machine, "[test]"),
        ["python", "-m", "pytest", "-q", "-k", "not slow and (a or b)"],
    ]
    assert '[fluxlora] installing "torch==2.9.1+cu128" from "https://download.pytorch.org/whl/cu128"' in result.stdout
    assert machine.entries() == [".venv", "launch.bat", "pyproject.toml"]  # no stray "=2.5"-style file
    stamp = (machine.folder / ".venv/.fluxlora-install-test").read_text(encoding="utf-8")
    assert stamp.endswith(" torch==2.9.1+cu128 https://download.pytorch.org/whl/cu128\n")
    assert (machine.folder / ".venv/torch-constraint.txt").read_text(encoding="utf-8") == "torch==2.9.1+cu128"

    machine.rules = [rule for rule in machine.rules if "pytest" not in rule]
    result = machine.run("test", "-x")  # installed already: straight to pytest, which passes now
    assert result.returncode == 0, result.stdout
    assert machine.calls() == [["python", "-m", "pytest", "-x"]]


def test_another_cuda_index_or_torch_reinstalls_and_the_pin_follows_the_index(machine):
    machine.provide("py", "python", "nvidia-smi").python("3.11", flag="-3.11")
    assert machine.run("test").returncode == 0
    cu126 = "https://download.pytorch.org/whl/cu126"
    result = machine.run("test", extra_env={"FLUXLORA_TORCH_INDEX": cu126})
    assert result.returncode == 0, result.stdout
    assert machine.calls() == [*installs(machine, "[test]", "torch==2.9.1+cu126", cu126),
                               ["python", "-m", "pytest"]]
    result = machine.run("test", extra_env={"FLUXLORA_TORCH_INDEX": cu126, "FLUXLORA_TORCH": "torch>=2.8"})
    assert machine.calls()[1] == ["python", "-m", "pip", "install", "--quiet", "torch>=2.8", "--index-url", cu126]
    assert '[fluxlora] installing "torch>=2.8" from' in result.stdout
    stamp = (machine.folder / ".venv/.fluxlora-install-test").read_text(encoding="utf-8")
    assert stamp.endswith(" torchgt=2.8 https://download.pytorch.org/whl/cu126\n")
    assert machine.run("test").returncode == 0 and len(machine.calls()) == 5  # back to the default: reinstall
    assert machine.entries() == [".venv", "launch.bat", "pyproject.toml"]


def test_gui_mode_passes_arguments_and_prints_the_port_asked_for(machine):
    machine.provide("py", "python", "nvidia-smi").python("3.10", flag="-3.10")
    result = machine.run("--server_port", "7861", "--share")
    assert result.returncode == 0, result.stdout
    calls = machine.calls()
    assert calls[-2:] == [["nvidia-smi", "-L"], ["python", "-m", "engine", "gui", "--inbrowser", "--server_port",
                                                  "7861", "--share"]]
    assert calls[:4] == [["py", flag, "-c", PROBE] for flag in ("-3.12", "-3.11", "-3.10")] + [
        ["py", "-3.10", "-m", "venv", venv(machine)]]
    assert calls[4:8] == installs(machine, "")
    assert "[fluxlora] starting the GUI at http://127.0.0.1:7861 " in result.stdout
    assert "WARNING" not in result.stdout


def test_gui_mode_warns_without_a_driver_or_when_torch_cannot_use_the_card(machine):
    machine.provide("py", "python").python("3.12", flag="-3.12")
    machine.answer("python", "-m engine.gpu_check", exit_code=1,
                   text="[fluxlora] WARNING: torch 2.9.1+cu126 (CUDA 12.6) has no kernels for RTX 5070 (sm_120).\n")
    machine.answer("python", "-m engine gui", exit_code=1)
    result = machine.run()
    assert result.returncode == 1
    out = result.stdout
    assert "has no kernels for RTX 5070" in out and "what to do is written above" in out
    assert "no NVIDIA driver found (nvidia-smi missing)" in out
    assert "[fluxlora] starting the GUI at http://127.0.0.1:7860 " in out
    assert "ERROR: the GUI stopped with an error" in out


def test_no_python_says_what_to_install(machine):
    result = machine.run()
    assert result.returncode == 1
    assert "Python 3.10, 3.11 or 3.12 is needed and none was found" in result.stdout
    assert "64-bit" in result.stdout and machine.entries() == ["launch.bat", "pyproject.toml"]


def test_only_python_3_13_or_32_bit_python_is_named_and_refused(machine):
    machine.provide("py", "python")
    for flag in ("-3.12", "-3.11", "-3.10"):
        machine.answer("py", flag, exit_code=103, text="No suitable Python runtime found\n")
    machine.python("3.13", flag="-3")
    machine.python("3.12", bits=32, launcher="python")
    result = machine.run("test")
    assert result.returncode == 1
    assert ("found Python 3.13 64-bit [py -3], Python 3.12 32-bit [python]; FluxLoRA needs a 64-bit Python "
            "3.10, 3.11 or 3.12") in result.stdout
    assert not (machine.folder / ".venv").exists()


def test_python_on_path_is_used_when_the_launcher_has_none(machine):
    machine.provide("python").python("3.11", launcher="python")
    assert machine.run("test").returncode == 0
    assert machine.calls()[:2] == [["python", "-c", PROBE], ["python", "-m", "venv", venv(machine)]]


def test_a_failed_venv_is_removed_and_reported(machine):
    machine.provide("py", "python")
    machine.answer("py", "-m venv", exit_code=1, action="venv")  # half a venv, then failure
    machine.python("3.12", flag="-3.12")
    result = machine.run("test")
    assert result.returncode == 1
    assert "ERROR: could not create" in result.stdout
    assert machine.entries() == ["launch.bat", "pyproject.toml"]


@pytest.mark.parametrize("failing, message", [
    ("--index-url", "could not install \"torch==2.9.1+cu128\" from \"https://download.pytorch.org/whl/cu128\""),
    ("-e .[test]", "could not install FluxLoRA's dependencies"),
])
def test_a_failed_pip_install_is_reported_and_retried_next_time(machine, failing, message):
    machine.provide("py", "python").python("3.12", flag="-3.12")
    machine.answer("python", failing, exit_code=1)
    result = machine.run("test")
    assert result.returncode == 1 and message in result.stdout
    assert ["python", "-m", "pytest"] not in machine.calls()
    assert not (machine.folder / ".venv/.fluxlora-install-test").exists()  # the next start installs again


def test_started_from_another_folder(machine):
    machine.provide("py", "python").python("3.12", flag="-3.12")
    result = machine.run("test", cwd=machine.folder.parent, bat="FluxLoRA\\launch.bat")
    assert result.returncode == 0, result.stdout
    assert machine.calls()[1] == ["py", "-3.12", "-m", "venv", venv(machine)]
