"""The numbers of a run before it starts: images x repeats per folder, buckets, steps."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.training.data import load_samples, steps_in_epoch


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


def plan_run(values: dict) -> RunPlan:
    """What `train(values)` will count, from the same functions (regularisation balanced as sd-scripts)."""
    plan = RunPlan()
    samples = load_samples(values, on_skip=plan.skipped.append)
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
