"""The numbers of a run before it starts: images x repeats per folder, buckets, steps.

Counted with the run's own functions (scan, buckets, sd-scripts' regularisation balance, steps
per epoch); the readability check is the run's too, remembered per file version
(engine.dataset.gallery.image_size_or_reason), so pressing the button again on a large folder
reads no image twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.dataset.gallery import image_size_or_reason
from engine.dataset.layout import ImageItem, scan_train_dir
from engine.training.data import Sample, balance_regularisation, make_samples, steps_in_epoch


@dataclass
class RunPlan:
    folders: list[tuple[str, int, int]] = field(default_factory=list)  # (parent/folder, images, images x repeats)
    buckets: dict[tuple[int, int], int] = field(default_factory=dict)  # (w, h) -> images x repeats
    steps_per_epoch: int = 0
    total_steps: int = 0
    epochs: int = 0
    skipped: list[str] = field(default_factory=list)

    @property
    def seen_per_epoch(self) -> int:
        return sum(self.buckets.values())


def _usable(items: list[ImageItem], skipped: list[str]) -> list[tuple[ImageItem, tuple[int, int]]]:
    usable = []
    for item in items:
        size = image_size_or_reason(item.image_path)
        if isinstance(size, str):
            skipped.append(f"skipping {item.image_path.name}: {size}")
        else:
            usable.append((item, size))
    return usable


def _samples(usable, values: dict) -> list[Sample]:
    sizes = {item.image_path: size for item, size in usable}
    return make_samples([item for item, _ in usable], values, sizes.__getitem__)


def plan_run(values: dict) -> RunPlan:
    """What `train(values)` will count."""
    plan = RunPlan()
    train = _usable(scan_train_dir(values["train_data_dir"], values["caption_extension"]), plan.skipped)
    if not train:
        raise ValueError(f"train_data_dir: none of the images in {values['train_data_dir']} could be read")
    samples = _samples(train, values)
    if values["reg_data_dir"]:
        reg = _usable(scan_train_dir(values["reg_data_dir"], values["caption_extension"], key="reg_data_dir"),
                      plan.skipped)
        samples += balance_regularisation(_samples(reg, values), sum(sample.repeats for sample in samples))
    folders: dict[str, list[int]] = {}
    for sample in samples:
        name = f"{sample.image_path.parent.parent.name}/{sample.image_path.parent.name}"
        entry = folders.setdefault(name, [0, 0])
        entry[0] += 1
        entry[1] += sample.repeats
        plan.buckets[sample.bucket] = plan.buckets.get(sample.bucket, 0) + sample.repeats
    plan.folders = [(name, images, seen) for name, (images, seen) in folders.items()]
    plan.buckets = dict(sorted(plan.buckets.items()))
    plan.steps_per_epoch = steps_in_epoch(samples, values["train_batch_size"], values["gradient_accumulation_steps"])
    plan.total_steps = values["max_train_steps"] or values["epoch"] * plan.steps_per_epoch
    plan.epochs = -(-plan.total_steps // plan.steps_per_epoch)
    return plan
