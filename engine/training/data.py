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
from engine.dataset.layout import ImageItem, scan_train_dir
from engine.preset import parse_resolution


@dataclass(frozen=True)
class Sample:
    image_path: Path
    caption: str
    repeats: int
    bucket: tuple[int, int]  # (width, height) in pixels


def bucket_for(width: int, height: int, values: dict) -> tuple[int, int]:
    """The training size of an image: its aspect ratio at most the max resolution's area,
    never larger than the image itself, sides in bucket_reso_steps multiples."""
    max_w, max_h = parse_resolution(values["max_resolution"])
    if not values["enable_bucket"]:
        return max_w, max_h
    area = min(max_w * max_h, width * height)
    ideal_w = math.sqrt(area * width / height)
    return _bucket_side(ideal_w, width, values), _bucket_side(area / ideal_w, height, values)


def _bucket_side(ideal: float, image_side: int, values: dict) -> int:
    """`ideal` rounded down to the step, within the min/max bucket sides; an image smaller than
    min_bucket_reso keeps its own size (rounded down) instead of being upscaled."""
    step = values["bucket_reso_steps"]
    high = max(_floor(values["max_bucket_reso"], step), step)
    low = min(-(-values["min_bucket_reso"] // step) * step, _floor(image_side, step))
    return max(min(max(_floor(ideal, step), low), high), step)


def _floor(value: float, step: int) -> int:
    return int(value // step) * step


def fit_to_bucket(image: Image.Image, bucket: tuple[int, int]) -> Image.Image:
    """Resize to cover the bucket, then centre-crop to it."""
    width, height = bucket
    scale = max(width / image.width, height / image.height)
    resized = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))),
                           Image.LANCZOS)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


def make_samples(items: list[ImageItem], values: dict, image_size) -> list[Sample]:
    """image_size(path) -> (width, height) of the upright image."""
    return [Sample(item.image_path, item.caption, item.repeats, bucket_for(*image_size(item.image_path), values))
            for item in items]


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
