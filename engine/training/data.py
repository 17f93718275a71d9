"""Training samples, aspect-ratio buckets and the seeded batch order.

The order of an epoch is a pure function of (seed, epoch), so a run resumed mid-epoch sees
exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from engine.dataset.images import BadImageError, open_image_rgb
from engine.dataset.layout import DatasetError, ImageItem, scan_train_dir
from engine.training.buckets import fit_image


@dataclass(frozen=True)
class Sample:
    image_path: Path
    caption: str
    repeats: int
    bucket: tuple[int, int]  # (width, height) in pixels
    resized: tuple[int, int] | None = None  # its size before the centre crop (None: just covering the bucket)


def fit_to_bucket(image: Image.Image, bucket: tuple[int, int], resized: tuple[int, int] | None = None) -> Image.Image:
    """Resize to `resized` (default: just covering the bucket), then centre-crop to the bucket.
    Shrinking averages areas (as sd-scripts' INTER_AREA does), enlarging uses Lanczos."""
    width, height = bucket
    if resized is None:
        resized = fit_image(image.width, image.height, {"enable_bucket": False,
                                                        "max_resolution": f"{width},{height}"}).resized
    if resized != image.size:
        shrinking = resized[0] <= image.width and resized[1] <= image.height
        image = image.resize(resized, Image.BOX if shrinking else Image.LANCZOS)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def make_samples(items: list[ImageItem], values: dict, image_size) -> list[Sample]:
    """image_size(path) -> (width, height) of the upright image."""
    samples = []
    for item in items:
        width, height = image_size(item.image_path)
        fit = fit_image(width, height, values)
        if min(fit.bucket) == 0:
            raise DatasetError(f"{item.image_path}: {width}x{height} is too narrow for buckets of "
                               f"{values['bucket_reso_steps']}-pixel steps; crop or remove it")
        samples.append(Sample(item.image_path, item.caption, item.repeats, fit.bucket, fit.resized))
    return samples


def epoch_batches(samples: list[Sample], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of sample indices for one epoch (epoch counts from 1); each batch from one bucket."""
    rng = random.Random(seed * 1_000_003 + epoch)
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for index, sample in enumerate(samples):
        by_bucket.setdefault(sample.bucket, []).extend([index] * sample.repeats)
    batches = []
    for bucket in sorted(by_bucket):
        indices = by_bucket[bucket]
        rng.shuffle(indices)
        batches.extend(indices[i:i + batch_size] for i in range(0, len(indices), batch_size))
    rng.shuffle(batches)
    return batches


def process_batches(batches: list[list[int]], process_index: int, num_processes: int) -> list[list[int]]:
    """This process's share of an epoch's batches when several train together.

    Every process gets the same number of batches, so every process takes the same number of
    optimizer steps (a process with one step less would leave the others waiting forever in the
    gradient all-reduce). Like accelerate's `even_batches`, the epoch's first batches are repeated
    to fill the last round.
    """
    if num_processes <= 1 or not batches:
        return list(batches)
    padded = list(batches)
    while len(padded) % num_processes:
        padded.append(batches[(len(padded) - len(batches)) % len(batches)])
    return padded[process_index::num_processes]


def steps_in_epoch(samples: list[Sample], batch_size: int, accumulation: int, processes: int = 1) -> int:
    """Optimizer steps per epoch (per process when several share the batches)."""
    batches = sum(math.ceil(count / batch_size) for count in _bucket_counts(samples).values())
    return math.ceil(math.ceil(batches / processes) / accumulation)


def _bucket_counts(samples: list[Sample]) -> dict:
    counts: dict = {}
    for sample in samples:
        counts[sample.bucket] = counts.get(sample.bucket, 0) + sample.repeats
    return counts


def load_samples(values: dict, on_skip=lambda text: None) -> list[Sample]:
    """The preset's training (and regularisation) images with their buckets; unreadable
    images are reported through on_skip and left out."""
    train = _readable(scan_train_dir(values["train_data_dir"], values["caption_extension"]), on_skip)
    if not train:
        raise ValueError(f"train_data_dir: none of the images in {values['train_data_dir']} could be read")
    samples = _samples(train, values)
    if values["reg_data_dir"]:
        reg = _readable(scan_train_dir(values["reg_data_dir"], values["caption_extension"], key="reg_data_dir"), on_skip)
        samples += balance_regularisation(_samples(reg, values), sum(sample.repeats for sample in samples))
    return samples


def _samples(readable: list[tuple[ImageItem, tuple[int, int]]], values: dict) -> list[Sample]:
    sizes = {item.image_path: size for item, size in readable}
    return make_samples([item for item, _ in readable], values, sizes.__getitem__)


def _readable(items: list[ImageItem], on_skip) -> list[tuple[ImageItem, tuple[int, int]]]:
    good = []
    for item in items:
        try:
            with open_image_rgb(item.image_path) as image:
                good.append((item, image.size))
        except BadImageError as exc:
            on_skip(f"skipping {item.image_path.name}: {exc}")
    return good


def balance_regularisation(reg: list[Sample], train_count: int) -> list[Sample]:
    """sd-scripts' rule, so step counts match kohya's: regularisation images fill exactly as many
    slots per epoch as the training images with their repeats (at least). In folder order each
    takes its repeats until the slots are full (the rest are left out); when they fall short,
    each gets one more repeat in turn."""
    counts, filled = [], 0
    for sample in reg:
        if filled >= train_count:
            break
        counts.append(sample.repeats)
        filled += sample.repeats
    turn = 0
    while counts and filled < train_count:
        counts[turn % len(counts)] += 1
        filled += 1
        turn += 1
    return [replace(sample, repeats=count) for sample, count in zip(reg, counts)]


def steps_per_epoch_for(values: dict) -> int:
    """Optimizer steps per epoch of a preset's dataset on one process."""
    samples = load_samples(values)
    return steps_in_epoch(samples, values["train_batch_size"], values["gradient_accumulation_steps"])
