"""WD14 tagging speed on the CPU: 200 mixed-size images with the tiny test model, decoding and
preprocessing in a thread pool vs serially. Run: python benchmarks/tagging.py"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.dataset.tagger import load_wd14, tag_folder  # noqa: E402
from tests.fixtures.tagger import write_tiny_wd14  # noqa: E402

SIZES = [(512, 512), (1024, 768), (768, 1024), (2048, 1536), (640, 480), (1536, 2048), (300, 900), (1200, 1200)]


def main(count: int = 200) -> None:
    folder = Path(tempfile.mkdtemp())
    try:
        tagger = load_wd14(write_tiny_wd14(folder / "model"))
        images = folder / "images"
        images.mkdir()
        rng = np.random.default_rng(0)
        for index in range(count):
            width, height = SIZES[index % len(SIZES)]
            pixels = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8)
            image = Image.fromarray(pixels).resize((width, height))
            image.save(images / f"img{index:03d}.{'jpg' if index % 2 else 'png'}", quality=90)
        rates = {}
        for label, workers in (("serial", 1), ("thread pool", 4)):
            start = time.perf_counter()
            result = tag_folder(tagger, images, mode="overwrite", workers=workers)
            seconds = time.perf_counter() - start
            assert result.tagged == count
            rates[label] = count / seconds
            print(f"{label:12s} {rates[label]:7.1f} images/s  ({seconds:.2f} s for {count})")
        print(f"thread pool / serial: {rates['thread pool'] / rates['serial']:.2f}x")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
