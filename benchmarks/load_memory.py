"""Peak RAM while loading a FLUX transformer file at FLUX.1's real width (3072) with a few
blocks (about 1.2 GB in bf16) into fp8, as a ratio to the fp8 weights' size. Target: <= 1.3.

Run: python benchmarks/load_memory.py [--double 1 --single 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WRITE = """
import dataclasses, sys, torch
from safetensors.torch import save_file
from benchmarks.bfl_layout import bfl_shapes
from engine.models.flux import FLUX1_DEV
# FLUX.1-dev's real width and head size, with only a few blocks so the file stays small.
arch = dataclasses.replace(FLUX1_DEV, num_double=int(sys.argv[2]), num_single=int(sys.argv[3]), has_guidance=False)
save_file({k: (torch.randn(s) * 0.02).to(torch.bfloat16) for k, s in bfl_shapes(arch).items()}, sys.argv[1])
"""

MEASURE = """
import json, resource, sys, torch
# Imports (about 150 MB of code and tables) are a fixed cost, not part of loading the weights.
from diffusers import FluxTransformer2DModel
from diffusers.hooks import apply_layerwise_casting
from accelerate.utils import set_module_tensor_to_device
from engine.models.flux import load_flux_transformer
def rss():
    with open("/proc/self/status") as f:
        return {l.split(":")[0]: int(l.split()[1]) * 1024 for l in f if l.startswith(("VmRSS", "VmHWM"))}
before = rss()["VmRSS"]
model = load_flux_transformer(sys.argv[1], fp8=True)
after = rss()
fp8 = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"baseline": before, "peak": after["VmHWM"], "after": after["VmRSS"], "weights": fp8}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--double", type=int, default=1)
    parser.add_argument("--single", type=int, default=2)
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "flux-wide.safetensors"
        subprocess.run([sys.executable, "-c", WRITE, str(path), str(args.double), str(args.single)], check=True, env=env)
        size = path.stat().st_size
        out = subprocess.run([sys.executable, "-c", MEASURE, str(path)], check=True, env=env, capture_output=True, text=True)
        numbers = json.loads(out.stdout.strip().splitlines()[-1])
    grown = numbers["peak"] - numbers["baseline"]
    print(f"file (bf16):             {size / 2**30:.3f} GiB")
    print(f"loaded weights (fp8 blocks, bf16 rest): {numbers['weights'] / 2**30:.3f} GiB")
    print(f"RSS growth at peak:      {grown / 2**30:.3f} GiB")
    print(f"peak / loaded weights:   {grown / numbers['weights']:.2f}  (target <= 1.3)")


if __name__ == "__main__":
    main()
