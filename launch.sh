#!/usr/bin/env bash
# FluxLoRA launcher for Linux and macOS.
#   ./launch.sh [fluxlora gui options]   set up .venv if needed, then open the GUI
#   ./launch.sh test [pytest options]    set up .venv the same way, then run the test suite
# Environment:
#   FLUXLORA_TORCH        pip requirement for torch (default "torch>=2.5", the CUDA build on Linux)
#   FLUXLORA_TORCH_INDEX  the only index torch comes from, e.g. https://download.pytorch.org/whl/cu126
# Plain POSIX sh inside (no arrays): macOS's /bin/bash is 3.2, where "${empty[@]}" under set -u fails;
# tests/test_launch_sh.py runs it under dash to keep it that way.
set -eu
cd "$(dirname "$0")"
root="$PWD"
venv="$root/.venv"

say() { printf '[fluxlora] %s\n' "$*" >&2; }
fail() { say "ERROR: $*"; exit 1; }

find_python() {
    for candidate in python3.12 python3.11 python3.10 python3 python; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys, struct; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) and struct.calcsize("P") == 8 else 1)' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

mode="gui"
if [ "${1:-}" = "test" ]; then
    mode="test"
    shift
fi

if [ ! -x "$venv/bin/python" ]; then
    python=$(find_python) || fail "a 64-bit Python 3.10, 3.11 or 3.12 is needed and none was found on PATH. Install one and run this again."
    say "creating $venv with $($python --version 2>&1)"
    "$python" -m venv "$venv" || { rm -rf "$venv"; fail "could not create $venv (on Debian/Ubuntu: apt install python3-venv)"; }
fi
py="$venv/bin/python"

# Reinstall only when what we would install changed (pyproject, mode, torch choice).
torch_spec="${FLUXLORA_TORCH:-torch>=2.5}"
extras=""
[ "$mode" = "test" ] && extras="[test]"
stamp="$venv/.fluxlora-install"
want="$(cat pyproject.toml) | $extras | $torch_spec | ${FLUXLORA_TORCH_INDEX:-}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "installing $torch_spec${FLUXLORA_TORCH_INDEX:+ from $FLUXLORA_TORCH_INDEX}"
    "$py" -m pip install --quiet --upgrade pip || fail "could not upgrade pip in $venv"
    # ${X:+...} instead of an array: expands to nothing at all when no index is set.
    "$py" -m pip install --quiet ${FLUXLORA_TORCH_INDEX:+--index-url "$FLUXLORA_TORCH_INDEX"} "$torch_spec" ||
        fail "could not install $torch_spec"
    say "installing FluxLoRA$extras and its dependencies"
    printf '%s\n' "$torch_spec" >"$venv/torch-constraint.txt"
    "$py" -m pip install --quiet -e ".$extras" --constraint "$venv/torch-constraint.txt" ||
        fail "could not install FluxLoRA's dependencies (see the pip output above)"
    printf '%s' "$want" >"$stamp"
    "$py" -m engine.gpu_check || say "WARNING: training would run on the CPU, very slowly; what to do is written above"
fi

if [ "$mode" = "test" ]; then
    say "running the test suite"
    exec "$py" -m pytest "$@"
fi
if command -v nvidia-smi >/dev/null 2>&1; then
    :
else
    say "note: no NVIDIA driver found (nvidia-smi missing); training will run on the CPU, very slowly"
fi
say "starting the GUI (Ctrl+C stops it)"
exec "$py" -m engine gui "$@"
