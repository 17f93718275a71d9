"""`python -m engine.gpu_check`: can the installed torch train on this machine's NVIDIA GPU?

The launch scripts run it once after installing torch, because a torch build that cannot run on
the card is the most common broken install: a CPU-only wheel, a driver older than the build's
CUDA, or a build without kernels for the card (RTX 50-series, compute capability 12.0, needs a
CUDA 12.8+ build; the CUDA 12.8 builds no longer carry GTX 10-series kernels). Exit 1 with what
to do when torch cannot use a GPU that `nvidia-smi` reports; 0 otherwise.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass

INDEX = "https://download.pytorch.org/whl/"


@dataclass(frozen=True)
class Facts:
    torch_version: str
    cuda_version: str | None  # None: a CPU-only build
    available: bool  # torch.cuda.is_available()
    devices: tuple[tuple[str, tuple[int, int]], ...]  # (name, compute capability) torch sees
    arch_list: tuple[str, ...]  # torch.cuda.get_arch_list(): sm_XY kernels, compute_XY PTX
    smi_cards: tuple[str, ...]  # what nvidia-smi lists; empty without an NVIDIA driver


def runs_on(capability: tuple[int, int], arch_list) -> bool:
    """CUDA's compatibility rules: kernels built for sm_MN run on M.N' with N' >= N (same major);
    PTX for compute_XY is compiled at load time for any capability >= X.Y."""
    major, minor = capability
    for arch in arch_list:
        kind, _, number = arch.partition("_")
        if not number.isdigit():
            continue
        arch_major, arch_minor = divmod(int(number), 10)
        if kind == "sm" and arch_major == major and arch_minor <= minor:
            return True
        if kind == "compute" and (arch_major, arch_minor) <= (major, minor):
            return True
    return False


def diagnose(facts: Facts) -> tuple[bool, list[str]]:
    """(torch can train on the GPU or there is none, lines to print)."""
    build = f"torch {facts.torch_version}"
    if not facts.smi_cards:
        return True, [f"{build}: no NVIDIA GPU found (nvidia-smi missing), so training would run on the CPU"]
    cards = ", ".join(facts.smi_cards)
    if facts.cuda_version is None:
        return False, [f"{build} is a CPU-only build, but this machine has {cards}.",
                       f"Delete the .venv folder and run the launcher again (torch comes from {INDEX}cu128)."]
    if not facts.available:
        return False, [f"{build} (CUDA {facts.cuda_version}) cannot use {cards}: the NVIDIA driver is probably "
                       f"older than CUDA {facts.cuda_version}.",
                       "Update the driver (nvidia.com/drivers), or install a build for an older CUDA: "
                       f"set FLUXLORA_TORCH_INDEX={INDEX}cu126 and run the launcher again."]
    lines, ok = [], True
    for name, capability in facts.devices:
        sm = f"sm_{capability[0]}{capability[1]}"
        if runs_on(capability, facts.arch_list):
            lines.append(f"{build} (CUDA {facts.cuda_version}) can train on {name} ({sm})")
            continue
        ok = False
        lines.append(f"{build} (CUDA {facts.cuda_version}) has no kernels for {name} ({sm}); it has "
                     f"{' '.join(facts.arch_list) or 'none'}.")
        if capability >= (12, 0):
            lines.append(f"RTX 50-series cards need a CUDA 12.8 or newer build: set FLUXLORA_TORCH_INDEX={INDEX}cu128 "
                         "(or cu129, cu130) and run the launcher again.")
        else:
            lines.append(f"Install a build for an older CUDA that still has {sm}: set FLUXLORA_TORCH_INDEX="
                         f"{INDEX}cu126 and run the launcher again.")
    return ok, lines


def smi_cards() -> tuple[str, ...]:
    if shutil.which("nvidia-smi") is None:
        return ()
    try:
        listing = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ()
    if listing.returncode != 0:
        return ()
    return tuple(line.strip() for line in listing.stdout.splitlines() if line.strip())


def gather() -> Facts:
    import torch

    available = torch.cuda.is_available()
    devices = tuple((torch.cuda.get_device_name(i), torch.cuda.get_device_capability(i))
                    for i in range(torch.cuda.device_count())) if available else ()
    return Facts(torch.__version__, torch.version.cuda, available, devices,
                 tuple(torch.cuda.get_arch_list()) if available else (), smi_cards())


def main() -> int:
    ok, lines = diagnose(gather())
    for line in lines:
        print(f"[fluxlora] {line}" if ok else f"[fluxlora] WARNING: {line}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
