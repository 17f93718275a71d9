"""WD14 tagging throughput on the CPU: thread-pool decode+preprocess vs serial.

200 mixed-size JPEG/PNG images (256 px to 2048 px sides) tagged with the tiny test model, so the
number measures our decode/preprocess/caption pipeline rather than a real network. Run:
    python3 benchmarks/tagging.py [--images 200] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.dataset.tagger import load_wd14, tag_folder  # noqa: E402
from tests.fixtures.tagger import write_tiny_wd14  # noqa: E402


def make_images(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    sides = [256, 512, 768, 1024, 1536, 2048]
    for index in range(count):
        width, height = rng.choice(sides), rng.choice(sides)
        base = rng.integers(0, 255, (height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((width, height), Image.Resampling.BILINEAR)  # photo-like, compressible
        image.save(folder / f"image {index:03d}.{'jpg' if index % 3 else 'png'}", quality=90)


def run(tagger, folder: Path, workers: int | None, batch_size: int) -> float:
    start = time.perf_counter()
    result = tag_folder(tagger, folder, mode="overwrite", workers=workers, batch_size=batch_size)
    elapsed = time.perf_counter() - start
    assert result.tagged and not result.rejected
    return result.tagged / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tagger = load_wd14(write_tiny_wd14(root / "model"))
        folder = root / "images"
        folder.mkdir()
        make_images(folder, args.images)
        run(tagger, folder, 0, args.batch_size)  # warm the file cache
        serial = run(tagger, folder, 0, args.batch_size)
        parallel = run(tagger, folder, None, args.batch_size)
    print(f"{args.images} mixed-size images, {os.cpu_count()} CPU cores, batch {args.batch_size}")
    print(f"serial decode+preprocess:      {serial:7.1f} images/s")
    print(f"thread-pool decode+preprocess: {parallel:7.1f} images/s")
    print(f"ratio: {parallel / serial:.2f}x")


if __name__ == "__main__":
    main()
