"""Before Start: images x repeats per folder, buckets, steps per epoch and in all, for the page."""

from __future__ import annotations


def plan_text(values: dict) -> str:
    from engine.dataset.layout import DatasetError
    from engine.training.plan import plan_run

    try:
        plan = plan_run(values)
    except (DatasetError, ValueError, OSError) as exc:
        return f"Numbers unavailable: {_escape(str(exc))}"
    rows = "\n".join(f"| `{name}` | {images} | {seen // images if seen % images == 0 else f'{seen / images:.2f}'} "
                     f"| {seen} |" for name, images, seen in plan.folders)
    buckets = ", ".join(f"{w}x{h}: {count}" for (w, h), count in plan.buckets.items())
    batch, accumulation = values["train_batch_size"], values["gradient_accumulation_steps"]
    lines = ["| folder | images | repeats | images x repeats |", "|---|---|---|---|", rows,
             f"| **per epoch** | | | **{plan.seen_per_epoch}** |", "",
             f"Buckets (size: images x repeats): {buckets}", "",
             f"**{plan.steps_per_epoch} steps per epoch** (batch {batch}, gradient accumulation {accumulation}, "
             f"each batch from one bucket) x {plan.epochs} epochs = **{plan.total_steps} steps**"
             + (" (max train steps)" if values["max_train_steps"] else "")]
    if plan.skipped:
        lines += ["", f"{len(plan.skipped)} image(s) will be skipped: " + "; ".join(_escape(s) for s in plan.skipped[:5])]
    return "\n".join(lines)


def _escape(text: str) -> str:
    return text.replace("<", "&lt;").replace(">", "&gt;").replace("_", "\\_").replace("*", "\\*")
