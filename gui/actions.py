"""What the page's buttons do: each returns Markdown (or values) for the page, never raises for
a user mistake. The engine is imported here, inside the functions, so the page starts fast."""

from __future__ import annotations

import html
import sys
import time


def problem_list(title: str, problems: list[str]) -> str:
    return f"**{title}:**\n\n" + "\n".join(f"- {_escape(p)}" for p in problems)


def _escape(text: str) -> str:
    return text.replace("<", "&lt;").replace(">", "&gt;").replace("_", "\\_").replace("*", "\\*")


def load_report(result) -> str:
    """What loading a file did: for a kohya_ss config its groups, the one that changes training first."""
    from engine.preset import UNSUPPORTED_TITLE

    parts = []
    for title, items in result.groups():
        listed = "\n".join(f"- {_escape(item)}" for item in items)
        if title == UNSUPPORTED_TITLE:
            parts.append(f"### ⚠ {title}\nkohya would train differently with these; FluxLoRA cannot. Remove them "
                         f"from the config or accept the difference.\n\n{listed}")
        elif title.startswith("Used as is"):
            parts.append(f"<details><summary>{title}</summary>\n\n{_escape(', '.join(items))}\n\n</details>")
        else:
            parts.append(f"**{title}:**\n\n{listed}")
    if result.notes:
        parts.append("\n".join(f"- {_escape(note)}" for note in result.notes))
    return "\n\n".join(parts)


# ---- dataset preparation ---------------------------------------------------------------
def prepare(values: dict, overwrite: bool, tag: bool, progress) -> tuple[str, dict | None]:
    from engine.dataset.layout import DatasetError
    from engine.dataset.prepare import prepare_from_values
    from engine.dataset.tagger import TaggerError
    from engine.events import Progress

    def report(event):
        if isinstance(event, Progress) and event.total:
            progress((event.done, event.total), desc=event.phase)

    try:
        result, tagged = prepare_from_values(values, tag=tag, overwrite=overwrite, on_event=report)
    except (DatasetError, TaggerError, ValueError, OSError) as exc:
        return f"**Could not prepare:** {_escape(str(exc))}", None
    lines = [f"Copied **{result.copied}** images to `{result.train_folder}`."]
    if result.kept_captions:
        lines.append(f"Kept {result.kept_captions} captions from the previous destination.")
    if result.saved_captions:
        lines.append(f"{len(result.saved_captions)} old captions no longer used were saved under "
                     "`log/previous captions`.")
    rejected = list(result.rejected)
    if tagged is not None:
        lines.append(f"Tagged **{tagged.tagged}**, skipped {tagged.skipped} that already had captions.")
        lines.append("Folders filled in on the Folders tab.")
        rejected += tagged.rejected
    if rejected:
        lines.append("Rejected:\n" + "\n".join(f"- `{name}`: {_escape(reason)}" for name, reason in rejected))
    return "\n\n".join(lines), result.copy_info


def copy_info(values: dict) -> tuple[dict | None, str]:
    from engine.dataset.prepare import copy_info_for

    if not values["dataset_dest_dir"].strip():
        return None, "**Give the destination folder first.**"
    info = copy_info_for(values["dataset_dest_dir"], bool(values["dataset_reg_images_dir"]))
    return info, "Folders filled in on the Folders tab."


# ---- utilities -------------------------------------------------------------------------
def fix_state(folder: str, steps, values: dict, dry_run: bool, true_step=None) -> str:
    from engine.train_state import AmbiguousState, StateError, fix_train_state

    if not (folder or "").strip():
        return "**Give the state folder.**"
    try:
        steps, given = int(steps or 0), int(true_step or 0) or None
        if steps <= 0 and given is None:
            from engine.training.data import steps_per_epoch_for

            steps = steps_per_epoch_for(values) if (values.get("train_data_dir") or "").strip() else 0
        report = fix_train_state(folder.strip(), steps or None, dry_run=dry_run, step=given)
    except AmbiguousState as exc:
        return f"**The file cannot tell its true step.** {_escape(str(exc))}. Fill in **True step** and preview again."
    except (StateError, ValueError, OSError) as exc:
        return f"**Cannot repair:** {_escape(str(exc))}"
    before, after = report.before, report.after
    # Both rows in kohya's terms: the epoch in progress, 1-based (our files count completed ones).
    def epoch(state, kohya_wrote: bool):
        spe = state.steps_per_epoch
        return state.current_epoch if kohya_wrote or not spe else -(-state.current_step // spe)

    table = ("| | current_epoch (in progress) | current_step |\n|---|---|---|\n"
             f"| before | {epoch(before, report.kind != 'ours')} | {before.current_step} |\n"
             f"| after | {epoch(after, not report.changed and report.kind != 'ours')} | {after.current_step} |")
    if not report.changed:
        verdict = f"Nothing to repair: {_escape(report.reason)}."
    elif dry_run:
        per_epoch = f" ({report.after.steps_per_epoch} steps per epoch)" if report.after.steps_per_epoch else ""
        verdict = f"Would repair{per_epoch}: {_escape(report.reason)}. Press Repair to write it."
    else:
        verdict = f"Repaired: {_escape(report.reason)}. The original is `train_state.json.bak`."
    return f"{verdict}\n\n{table}"


# ---- training --------------------------------------------------------------------------
def start(runner, values: dict, problems: list[str], continuing: bool) -> str:
    from engine.train_state import StateError
    from engine.trainer import check_ready, continue_from_latest_state

    if runner.running:
        return "**A training run is already going;** stop it first or wait for it to finish."
    if continuing and not problems:
        try:
            values = continue_from_latest_state(values)
        except StateError as exc:
            return f"**Cannot continue:** {_escape(str(exc))}"
    problems = problems + [p for p in check_ready(values) if p not in problems]  # every problem at once
    if problems:
        return problem_list("Fix these before starting", problems)
    refusal = runner.start(values)
    if refusal:
        return f"**{refusal}**"
    started = time.strftime("%H:%M:%S")
    return f"Continued from the newest state at {started}." if continuing else f"Started at {started}."


def vram_text(values: dict) -> str:
    from engine.vram import GIB, detected_gpu_memory, estimate_vram, free_device_bytes, resolve_auto_swap

    chosen = ""
    try:
        if values["blocks_to_swap"] == "auto":
            free = free_device_bytes()
            if free is None:
                return ("Blocks to swap is auto: chosen at Start from the GPU's free memory (no CUDA GPU here; "
                        "`fluxlora estimate PRESET --vram-gib N` plans for a card of N GiB).")
            values, chosen = resolve_auto_swap(values, free)
        estimate = estimate_vram(values)
    except (ValueError, OSError) as exc:
        return f"VRAM estimate unavailable: {_escape(str(exc))}"
    parts = ", ".join(f"{label} {value / GIB:.1f}" for label, value in estimate.parts.items() if value)
    text = f"{_escape(chosen)}\n\n" if chosen else ""
    text += f"**Predicted peak GPU memory: {estimate.total / GIB:.1f} GiB** ({parts} GiB; {estimate.architecture})"
    text += f"; system RAM needed: about {estimate.host_peak / GIB:.0f} GiB"
    card = detected_gpu_memory()
    if card is not None and estimate.total > card:
        text += (f"\n\n**Warning: more than this GPU's {card / GIB:.1f} GiB.** Raise Blocks to swap, lower the rank or "
                 "resolution, or use AdamW8bit/Adafactor.")
    elif card is not None:
        text += f" — fits this GPU ({card / GIB:.1f} GiB)."
    return text


def _clock(seconds) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


LOG_LINES = 12


def loss_frame(losses):
    import pandas as pd

    return pd.DataFrame(losses, columns=["step", "loss"]).astype({"step": "int64", "loss": "float64"})


def render(runner):
    """(status Markdown, progress HTML, loss DataFrame, log text) for the timer."""
    view = runner.view
    frame = loss_frame(view.losses)
    log = "\n".join(list(view.log)[-LOG_LINES:])  # newest last, always in view
    if not view.phase:
        return "Idle. Fill in the tabs, then press Start.", "", frame, log
    done, total = (view.latest.done, view.latest.total) if view.latest is not None else (0, 0)
    percent = 100 * done / total if total else 0
    bar = (f'<progress class="fluxlora-progress" value="{done}" max="{total}"></progress>'
           f"<div>{done} / {total} ({percent:.0f}%)</div>") if total else ""
    if view.finished is not None:
        finished = view.finished
        if finished.status == "failed":
            status = f"**Training failed:** {_escape(finished.message)}"
            if finished.log_path:
                status += f"\n\nLog: `{finished.log_path}`"
        else:
            label = "**Finished**" if finished.status == "completed" else "**Stopped**"
            status = f"{label}: {_escape(finished.message)}"
            if finished.state_dir:
                status += f"\n\nState: `{finished.state_dir}`"
        return status, bar, frame, log
    status = f"**{html.escape(view.phase.capitalize())}**"
    if view.phase == "training":
        step = view.training
        rate = f"{step.steps_per_second:.2f} it/s" if step.steps_per_second else "– it/s"
        status += (f" — step {step.done}/{step.total}, epoch {step.epoch}/{step.total_epochs}, {rate}, "
                   f"ETA {_clock(step.eta_seconds)}")
    memory = _gpu_memory()
    if memory:
        status += f" — {memory}"
    return status, bar, frame, log


def _gpu_memory() -> str:
    torch = sys.modules.get("torch")  # only once the engine has loaded it
    if torch is None or not torch.cuda.is_available():
        return ""
    used = torch.cuda.memory_reserved() / 1024 ** 3
    total = torch.cuda.get_device_properties(0).total_memory / 1024 ** 3
    return f"GPU memory {used:.1f} / {total:.1f} GiB"
