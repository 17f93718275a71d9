"""How long the preflight takes at real sizes: a FLUX.1-dev transformer file of the real size
(23.8 GB, written as a sparse file: real header, no weights), with the tiny encoders, VAE and
dataset of the tests (the preflight rightly says those tiny encoders do not fit a real FLUX).
Prints seconds for the preset and for each wrong-file case.

Run: python benchmarks/preflight.py
"""

from __future__ import annotations

import json
import struct
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_BYTES = {"BF16": 2}


def write_sparse_flux(path: Path) -> int:
    """A real FLUX.1-dev header (names and shapes from diffusers on the meta device) and a hole."""
    import torch
    from diffusers import FluxTransformer2DModel

    from tests.fixtures.models import flux_to_bfl

    with torch.device("meta"):
        model = FluxTransformer2DModel(guidance_embeds=True)
    state = flux_to_bfl(dict(model.state_dict()), 19, 38)
    header, offset = {}, 0
    for name, tensor in state.items():
        size = tensor.numel() * 2
        header[name] = {"dtype": "BF16", "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        handle.truncate(8 + len(raw) + offset)
    return 8 + len(raw) + offset


def timed(values: dict) -> tuple[float, list[str]]:
    from engine.preflight import preflight

    start = time.perf_counter()
    report = preflight(values)
    return time.perf_counter() - start, report.problems


def main() -> None:
    from tests.fixtures.datasets import tiny_training_values
    from tests.fixtures.models import write_tiny_model_set

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        files = write_tiny_model_set(root / "models")
        flux = root / "models" / "flux1-dev.safetensors"
        size = write_sparse_flux(flux)
        print(f"sparse FLUX.1-dev file: {size / 1e9:.1f} GB")
        values = tiny_training_values(files, root, pretrained_model_name_or_path=str(flux))
        seconds, problems = timed(values)  # the first call imports torch and friends
        print(f"first preflight (torch already imported by the writer): {seconds:.2f} s; problems: {problems}")
        cases = {"good preset": {}, "VAE as the FLUX model": {"pretrained_model_name_or_path": files["ae"]},
                 "FLUX.1-dev as the VAE": {"ae": str(flux)}, "FLUX.1-dev as T5": {"t5xxl": str(flux)}}
        for label, change in cases.items():
            seconds, problems = timed(dict(values, **change))
            print(f"{label}: {seconds:.3f} s; {problems[:1] or 'no problems'}")


if __name__ == "__main__":
    main()
