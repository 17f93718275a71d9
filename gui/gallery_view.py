"""The dataset view as page content: summary Markdown, gallery items, tag choices."""

from __future__ import annotations

from pathlib import Path

from engine.dataset.gallery import DatasetView, GalleryItem, tag_counts
from gui.plots import preview_dir


def gallery_items(items: list[GalleryItem]) -> list[tuple[str, str]]:
    from engine.dataset.thumbnails import thumbnail

    return [(str(thumbnail(item.image_path, preview_dir())), _short(item.caption)) for item in items]


def _short(text: str, length: int = 90) -> str:
    return text if len(text) <= length else text[:length - 1] + "…"


def tag_choices(view: DatasetView) -> list[tuple[str, str]]:
    return [(f"{tag} ({count})", tag) for tag, count in tag_counts(view.items)]


def summary_text(view: DatasetView, values: dict, is_train: bool, number: int, pages: int) -> str:
    rows = "\n".join(f"| `{f.name}` | {f.repeats} | {f.images} | {f.captioned} | {f.seen_per_epoch} |"
                     for f in view.folders)
    lines = [f"**{Path(view.root)}**: {len(view.items)} images in {len(view.folders)} folder(s)", "",
             "| folder | repeats | images | with caption file | images x repeats |", "|---|---|---|---|---|", rows]
    if is_train:
        lines += ["", _steps_line(values)]
    if view.skipped:
        lines += ["", f"**{len(view.skipped)} file(s) the run skips:**"]
        lines += [f"- `{path.parent.name}/{path.name}`: {reason}" for path, reason in view.skipped[:30]]
    lines += ["", f"Page {number} of {pages}"]
    return "\n".join(lines)


def _steps_line(values: dict) -> str:
    from engine.training.plan import plan_run

    try:
        plan = plan_run(values)
    except (ValueError, OSError) as exc:
        return f"Steps unavailable: {exc}"
    return (f"**{plan.steps_per_epoch} steps per epoch** (batch {values['train_batch_size']}, regularisation and "
            f"buckets included) x {plan.epochs} epochs = **{plan.total_steps} steps**")
