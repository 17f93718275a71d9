"""What sample images add to a training run on the CPU, per image at 64x64 (20 steps, kohya's
default), on small FLUX-shaped models in the real file formats. Two runs of the same preset in
fresh processes, without and with samples; prints seconds and peak RSS each adds per image.
Run: python benchmarks/sampling.py [--width 512] [--steps 20] [--images 6]"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(config: str) -> None:
    """One training run; prints wall seconds, sampling seconds and peak RSS (MiB) as JSON."""
    from engine.events import SAMPLING, Progress
    from engine.trainer import train

    values = json.loads(Path(config).read_text())
    sampling = {"seconds": 0.0, "since": None}

    def on_event(event):
        if isinstance(event, Progress) and event.phase == SAMPLING:
            if event.done == 0:
                sampling["since"] = time.perf_counter()
            elif event.done == event.total and sampling["since"] is not None:
                sampling["seconds"] += time.perf_counter() - sampling["since"]
                sampling["since"] = None

    started = time.perf_counter()
    result = train(values, on_event=on_event)
    assert result.status == "completed", result.message
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"wall": time.perf_counter() - started, "sampling": sampling["seconds"], "rss": peak}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=512, help="transformer width (FLUX.1: 3072)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps per image")
    parser.add_argument("--images", type=int, default=6, help="sample images in the run (2 prompts x N/2 epochs)")
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    from tests.fixtures.datasets import tiny_training_values
    from tests.fixtures.models import write_tiny_flux, write_tiny_model_set

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = write_tiny_model_set(root / "models")
        write_tiny_flux(models.values["pretrained_model_name_or_path"], width=args.width, num_double=2, num_single=4)
        epochs = args.images // 2
        prompts = "\n".join(f"ohwx man, picture {i} --w 64 --h 64 --s {args.steps}" for i in range(2))
        results = {}
        for label, extra in (("without", {}), ("with", dict(sample_prompts=prompts, sample_every_n_epochs=1))):
            values = tiny_training_values(models, root / label, epoch=epochs, save_every_n_epochs=0,
                                          save_state_on_train_end=False, **extra)
            config = root / f"{label}.json"
            config.write_text(json.dumps(values))
            out = subprocess.run([sys.executable, __file__, "--child", str(config)], capture_output=True, text=True,
                                 cwd=ROOT)
            if out.returncode != 0:
                sys.exit(f"the {label} run failed:\n{out.stderr[-3000:]}")
            results[label] = json.loads(out.stdout.strip().splitlines()[-1])
    images = 2 * epochs
    without, with_ = results["without"], results["with"]
    load = os.getloadavg()[0]
    print(f"machine load average {load:.1f} on {os.cpu_count()} CPUs (a busy machine inflates the times)")
    print(f"transformer width {args.width}, 2 double + 4 single blocks, {args.steps} steps, 64x64, {images} images")
    print(f"run without samples: {without['wall']:.2f} s, peak RSS {without['rss']:.0f} MiB")
    print(f"run with samples:    {with_['wall']:.2f} s, peak RSS {with_['rss']:.0f} MiB")
    print(f"added per image: {(with_['wall'] - without['wall']) / images:.3f} s wall "
          f"({with_['sampling'] / images:.3f} s inside sampling), peak RSS +{with_['rss'] - without['rss']:.0f} MiB "
          "for the run")


if __name__ == "__main__":
    main()
