"""What the page's buttons do: each returns Markdown (or values) for the page, never raises for
a user mistake. The engine is imported here, inside the functions, so the page starts fast."""

from __future__ import annotations

import html
import sys
import time


def problem_list(title: str, problems: list[str]) -> str:
    from engine.messages import labelled

    return f"**{title}:**\n\n" + "\n".join(f"- {_escape(page_words(labelled(p)))}" for p in problems)


def _escape(text: str) -> str:
    return text.replace("<", "&lt;").replace(">", "&gt;").replace("_", "\\_").replace("*", "\\*")


# The few engine messages that name a command-line flag, in the page's words instead.
_PAGE_WORDS = (("use --overwrite to rebuild", "tick \u201cRebuild an existing destination\u201d to rebuild"),
               ("pass it as --model-dir (GUI: WD14 model folder)", "choose it as the WD14 model folder"))


def page_words(message: str) -> str:
    from engine.train_state import ASK_FOR_STEP

    for cli, page in (*_PAGE_WORDS, (ASK_FOR_STEP, 'give the true step ("True step" in the Utilities tab)')):
        message = message.replace(cli, page)
    return message


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
        return f"**Could not prepare:** {_escape(page_words(str(exc)))}", None
    lines = [f"Copied **{result.copied}** images to `{result.train_folder}`; the **Dataset gallery** tab shows "
             "them with their captions."]
    if result.kept_captions:
        lines.append(f"Kept {result.kept_captions} captions from the previous destination.")
    if result.saved_captions:
        lines.append(f"{len(result.saved_captions)} old captions no longer used were saved under "
                     "`log/previous captions`.")
    for leftover in result.leftovers:
        lines.append(f"**Kept `{leftover}`**: an interrupted earlier preparation left it, and it may hold "
                     "files that were in the destination (model/, log/). Move back what you need, then delete it.")
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
def start(runner, values: dict, problems: list[str], mode: str = "start") -> tuple[str, str | None]:
    """Start ("start"), Continue ("continue") or Overwrite and start ("overwrite"), after the
    preflight. Returns (message, the new output name to offer when a finished run of the same
    name is in the way, else None)."""
    from engine.preflight import preflight
    from engine.train_state import StateError
    from engine.trainer import continue_from_latest_state
    from engine.training.outputs import free_name

    if runner.running:
        return "**A training run is already going;** stop it first or wait for it to finish.", None
    if mode == "continue" and not problems:
        try:
            values = continue_from_latest_state(values)
        except StateError as exc:
            return f"**Cannot continue:** {_escape(str(exc))}", None
    report = preflight(values, overwrite=mode == "overwrite")
    problems = problems + [p for p in report.problems if p not in problems]  # every problem at once
    if report.existing_run is not None:
        offer = free_name(values["output_dir"], values["output_name"])
        others = [p for p in problems if not p.startswith("output_name: ")]
        text = (f"**{_escape(values['output_name'])} already has a run in this output folder** "
                f"({_escape(report.existing_run.summary())}). Starting again would replace its files. Choose:\n\n"
                f"- **Continue**: train it further from its newest state (raise Epochs first);\n"
                f"- **Start as {_escape(offer)}**: a new run beside it;\n"
                f"- **Overwrite and start**: delete its files, then start.")
        return (text + "\n\n" + problem_list("Also fix", others) if others else text), offer
    if problems:
        return problem_list("Fix these before starting", problems), None
    refusal = runner.start(values, overwrite=mode == "overwrite",
                           history=_history(values) if mode == "continue" else ())
    if refusal:
        return f"**{refusal}**", None
    started = time.strftime("%H:%M:%S")
    if mode == "continue":
        return f"Continued from `{values['resume']}` at {started}.", None
    return f"Started at {started}.", None


def check(values: dict, problems: list[str]) -> str:
    """The Check button: the preflight alone, every finding at once."""
    from engine.messages import labelled
    from engine.preflight import preflight

    report = preflight(values)
    problems = problems + [p for p in report.problems if p not in problems]
    lines = [problem_list("Fix these before starting", problems) if problems else "**Ready to start: no problems found.**"]
    if report.warnings:
        lines.append("**Warnings:**\n\n" + "\n".join(f"- {_escape(labelled(w))}" for w in report.warnings))
    if report.notes:
        lines.append("\n".join(f"- {_escape(n)}" for n in report.notes))
    return "\n\n".join(lines)


def _history(values: dict) -> list:
    """The loss and lr of the runs this Continue builds on, up to its state's step."""
    from engine.train_state import StateError, read_train_state
    from engine.training.history import loss_history, run_log_dir

    try:
        step = read_train_state(values["resume"]).current_step
        return loss_history(run_log_dir(values), values["output_name"], before_step=step)
    except (StateError, OSError, ValueError):
        return []


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
    from gui.plots import loss_frame as frame

    return frame(losses)


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
        return finished_status(view.finished), finished_bar(done, total, view.finished.status), frame, log
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


_LOOK = {"completed": ("#1a7f37", "Finished"), "stopped": ("#b35900", "Stopped"), "failed": ("#c62828", "Training failed")}


def finished_status(finished) -> str:
    """Finished, stopped and failed runs look different: colour and words."""
    from engine.messages import labelled

    word = _LOOK.get(finished.status, _LOOK["failed"])[1]
    text = page_words("; ".join(labelled(part) for part in finished.message.split("; ")))
    status = f"**{word}**: {_escape(text)}"
    if finished.status == "failed" and finished.log_path:
        status += f"\n\nLog: `{finished.log_path}`"
    if finished.status != "failed" and finished.state_dir:
        status += f"\n\nState: `{finished.state_dir}`"
    return status


def finished_bar(done: int, total: int, status: str) -> str:
    if not total:
        return ""
    colour, word = _LOOK.get(status, _LOOK["failed"])
    percent = 100 * done / total
    # A drawn bar, not <progress>: the browser paints that in its own (green) colour whatever happened.
    return (f'<div class="fluxlora-progress" style="background:#ddd"><div style="width:{percent:.1f}%;'
            f'height:100%;background:{colour}"></div></div><div style="color:{colour}">{done} / '
            f"{total} ({percent:.0f}%) — {word.lower()}</div>")


def _gpu_memory() -> str:
    torch = sys.modules.get("torch")  # only once the engine has loaded it
    if torch is None or not torch.cuda.is_available():
        return ""
    used = torch.cuda.memory_reserved() / 1024 ** 3
    total = torch.cuda.get_device_properties(0).total_memory / 1024 ** 3
    return f"GPU memory {used:.1f} / {total:.1f} GiB"
