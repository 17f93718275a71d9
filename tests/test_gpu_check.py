"""engine.gpu_check: the launchers' after-install question "can this torch train on this card?"."""

import subprocess
import sys

import pytest

from engine.gpu_check import Facts, diagnose, runs_on

CU128_ARCHS = ("sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120")
CU126_ARCHS = ("sm_50", "sm_60", "sm_61", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90")


@pytest.mark.parametrize("capability, archs, runs", [
    ((12, 0), CU128_ARCHS, True), ((12, 0), CU126_ARCHS, False),  # RTX 5070: needs a CUDA 12.8 build
    ((8, 9), CU126_ARCHS, True),  # RTX 4070: sm_86 kernels run on 8.9
    ((6, 1), CU128_ARCHS, False), ((6, 1), CU126_ARCHS, True),  # GTX 1080 Ti
    ((12, 0), ("sm_90", "compute_90"), True),  # PTX is compiled for newer cards at load time
    ((8, 6), ("sm_89",), False), ((9, 0), ("sm_86",), False),
])
def test_runs_on_follows_cudas_compatibility_rules(capability, archs, runs):
    assert runs_on(capability, archs) is runs


def facts(**overrides) -> Facts:
    base = dict(torch_version="2.9.1+cu126", cuda_version="12.6", available=True,
                devices=(("NVIDIA GeForce RTX 5070", (12, 0)),), arch_list=CU126_ARCHS,
                smi_cards=("NVIDIA GeForce RTX 5070",))
    return Facts(**dict(base, **overrides))


def test_an_rtx_50_card_with_a_cuda_12_6_build_says_to_take_cu128():
    ok, lines = diagnose(facts())
    assert not ok
    assert lines[0].startswith("torch 2.9.1+cu126 (CUDA 12.6) has no kernels for NVIDIA GeForce RTX 5070 (sm_120)")
    assert "set FLUXLORA_TORCH_INDEX=https://download.pytorch.org/whl/cu128" in lines[1]


def test_a_gtx_10_card_with_a_cuda_12_8_build_says_to_take_cu126():
    ok, lines = diagnose(facts(torch_version="2.9.1+cu128", cuda_version="12.8", arch_list=CU128_ARCHS,
                               devices=(("NVIDIA GeForce GTX 1080 Ti", (6, 1)),)))
    assert not ok and "FLUXLORA_TORCH_INDEX=https://download.pytorch.org/whl/cu126" in lines[1]


def test_a_card_the_build_supports_is_fine():
    ok, lines = diagnose(facts(torch_version="2.9.1+cu128", cuda_version="12.8", arch_list=CU128_ARCHS))
    assert ok and lines == ["torch 2.9.1+cu128 (CUDA 12.8) can train on NVIDIA GeForce RTX 5070 (sm_120)"]


def test_a_cpu_build_or_an_old_driver_on_a_machine_with_a_card():
    ok, lines = diagnose(facts(torch_version="2.9.1+cpu", cuda_version=None, available=False, devices=()))
    assert not ok and "CPU-only build" in lines[0] and "Delete the .venv folder" in lines[1]
    ok, lines = diagnose(facts(available=False, devices=()))
    assert not ok and "driver is probably older than CUDA 12.6" in lines[0]


def test_no_nvidia_driver_is_no_torch_problem():
    ok, lines = diagnose(facts(cuda_version=None, available=False, devices=(), smi_cards=()))
    assert ok and "no NVIDIA GPU found" in lines[0]


def test_the_module_runs_against_this_torch():
    result = subprocess.run([sys.executable, "-m", "engine.gpu_check"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("[fluxlora] torch ")
