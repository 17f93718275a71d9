"""The preflight's checks of the dataset, folders, resume state, output folder, optimizer, disk."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from engine.dataset.captions import read_caption_file
from engine.dataset.layout import DatasetError, ImageItem, scan_train_dir


# ---- dataset ------------------------------------------------------------------------------
def _image_size(path: Path) -> tuple[int, int] | None:
    """Upright size from the image header (no decoding), or None when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112)
    except Exception:  # the run skips unreadable images and says so
        return None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _samples(items: list[ImageItem], values: dict, report):
    from engine.training.data import make_samples

    sizes = {}
    for item in items:
        size = _image_size(item.image_path)
        if size is None:
            report.warnings.append(f"{item.image_path}: cannot be read as an image; training skips it")
        elif size[0] * size[1] == 0:
            report.warnings.append(f"{item.image_path}: an empty image; training skips it")
        else:
            sizes[item.image_path] = size
    return make_samples([item for item in items if item.image_path in sizes], values, sizes.__getitem__)


def check_dataset(values: dict, report, bad: set) -> list:
    """Samples (with buckets) of the training and regularisation folders; caption decoding warnings."""
    from engine.training.data import balance_regularisation

    samples = []
    for key in ("train_data_dir", "reg_data_dir"):
        if key == "reg_data_dir" and not values[key]:
            continue
        try:
            items = scan_train_dir(values[key], values["caption_extension"], key=key)
        except (DatasetError, OSError) as exc:
            report.problems.append(str(exc) if isinstance(exc, DatasetError) else f"{key}: {exc}")
            return []
        for item in items:
            if item.caption_path is not None:
                _, warning = read_caption_file(item.caption_path)
                if warning:
                    report.warnings.append(f"caption {warning}")
        if bad & {"max_resolution", "enable_bucket", "bucket_reso_steps", "min_bucket_reso", "max_bucket_reso"}:
            continue
        found = _samples(items, values, report)
        if key == "train_data_dir":
            if not found:
                report.problems.append(f"train_data_dir: none of the images in {values[key]} can be read")
                return []
            samples = found
        else:
            samples += balance_regularisation(found, sum(sample.repeats for sample in samples))
    if samples and not bad & {"train_batch_size", "gradient_accumulation_steps"}:
        from engine.training.data import steps_in_epoch

        report.steps_per_epoch = steps_in_epoch(samples, values["train_batch_size"],
                                                values["gradient_accumulation_steps"], world_size())
        report.notes.append(f"dataset: {len(samples)} images, {sum(s.repeats for s in samples)} with repeats, "
                            f"{report.steps_per_epoch} steps per epoch")
    return samples


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


# ---- folders ------------------------------------------------------------------------------
def folder_problem(key: str, folder: str) -> str | None:
    """Why files could not be written in `folder` (created on demand), if anything stops it."""
    path = Path(folder)
    if path.is_file():
        return f"{key}: {folder} is a file, not a folder"
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        blocker = existing if existing is not None else path.anchor or folder
        return f"{key}: {folder} cannot be created ({blocker} is not a folder); choose another folder"
    try:  # a real write: permissions on Windows folders are not what os.access says
        with tempfile.TemporaryFile(dir=existing, prefix=".fluxlora-write-test"):
            pass
    except OSError as exc:
        return f"{key}: cannot write in {existing} ({exc.strerror}); choose a folder you can write to"
    return None


def path_length_problems(values: dict) -> list[str]:
    """Folders whose files' full paths would pass Windows' 260-character limit (engine.names)."""
    from engine.names import CACHE_TAIL, OUTPUT_TAIL, path_length_problem

    checks = [("output_dir", values["output_dir"], len(values["output_name"]) + OUTPUT_TAIL)]
    if values["cache_latents_to_disk"] or values["flux1_cache_text_encoder_outputs_to_disk"]:
        checks += [(key, values[key], CACHE_TAIL) for key in ("train_data_dir", "reg_data_dir") if values[key]]
    found = (path_length_problem(key, folder, tail) for key, folder, tail in checks if folder.strip())
    return [problem for problem in found if problem]


def check_folders(values: dict) -> list[str]:
    from engine.training.cache import CACHE_FOLDER

    problems = []
    if values["bucket_reso_steps"] % 16:
        problems.append(f"bucket_reso_steps: {values['bucket_reso_steps']} is not allowed; use a multiple of 16 "
                        "(FLUX packs 2x2 latents of 8 pixels), such as 64")
    if not values["output_dir"].strip():
        problems.append("output_dir: empty; choose where the LoRA files go")
    else:
        problems.append(folder_problem("output_dir", values["output_dir"]))
    problems += path_length_problems(values)
    if values["logging_dir"].strip():
        problems.append(folder_problem("logging_dir", values["logging_dir"]))
    to_disk = (values["cache_latents"] and values["cache_latents_to_disk"]) or (
        values["flux1_cache_text_encoder_outputs"] and values["flux1_cache_text_encoder_outputs_to_disk"])
    if to_disk and Path(values["train_data_dir"]).is_dir():
        problem = folder_problem("train_data_dir", str(Path(values["train_data_dir"]) / CACHE_FOLDER))
        if problem:
            problems.append(problem + " (the caches on disk go there; or turn the disk caches off)")
    return [problem for problem in problems if problem]


# ---- the state to continue from -----------------------------------------------------------
def check_resume(values: dict, report, samples) -> None:
    from engine.preflight.models import check_lora_file
    from engine.train_state import StateError, read_train_state, read_true_step
    from engine.training.outputs import state_adapter_file

    if not values["resume"]:
        return
    folder = Path(values["resume"])
    if not (folder / "train_state.json").is_file():
        report.problems.append(f"resume: {values['resume']} is not a state folder (no train_state.json in it)")
        return
    try:
        read_train_state(folder)
    except StateError as exc:
        report.problems.append(f"resume: {exc}")
        return
    step, per_epoch = None, report.steps_per_epoch
    if per_epoch is not None:
        try:  # where the state really stands (kohya's non-cumulative count read as sd-scripts writes it)
            step = read_true_step(folder, per_epoch).step
        except StateError as exc:
            report.problems.append(f"resume: {exc}")
    adapter = state_adapter_file(folder)
    if adapter is None:
        report.problems.append(f"resume: {folder} holds no LoRA weights (adapter.safetensors or model.safetensors)")
    else:
        report.problems += check_lora_file("resume", adapter, values["network_dim"], f"the state {folder.name}")
    if step is None:
        return
    report.start_step = step
    total = values["max_train_steps"] or values["epoch"] * per_epoch
    if step >= total:
        field_ = "max_train_steps" if values["max_train_steps"] else "epoch"
        report.problems.append(f"{field_}: {folder.name} has already trained {step} steps (epoch {step // per_epoch}); "
                               f"raise it above {values[field_] if field_ == 'max_train_steps' else step // per_epoch} "
                               "to continue")


# ---- the output folder --------------------------------------------------------------------
def check_outputs(values: dict, report, overwrite: bool) -> None:
    from engine.training.lock import busy_message, holder, is_stale, read_lock
    from engine.training.outputs import existing_run

    folder = values["output_dir"]
    if not folder.strip() or not Path(folder).is_dir() or os.environ.get("RANK", "0") != "0":
        return  # under torchrun only the main process holds the lock and decides about the folder
    live = holder(folder)
    if live is not None:
        report.busy = live
        report.problems.append(f"output_dir: {busy_message(folder, live)}")
    else:
        left = read_lock(folder)
        if left is not None and is_stale(left):
            report.warnings.append(f"output_dir: a run lock left behind by {left.describe()}, which is no longer "
                                   "running (a crash or power cut?); it is replaced")
    if values["resume"] or overwrite:
        return
    found = existing_run(folder, values["output_name"])
    if found is not None:
        report.existing_run = found
        report.problems.append(f"output_name: {found.message()}")


# ---- optimizer ----------------------------------------------------------------------------
def check_optimizer(values: dict) -> list[str]:
    """Build the preset's optimizer on one tiny tensor: the library itself judges the arguments."""
    import logging

    import torch

    from engine.training.optim import create_optimizer

    # transformers' optimizers import bitsandbytes, whose CPU backend announces an optional 4-bit
    # kernel package FluxLoRA never uses; that notice would come before every preflight finding.
    quiet = logging.getLogger("bitsandbytes")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        create_optimizer(values, [torch.nn.Parameter(torch.zeros(2, 2))])
    except ValueError as exc:
        text = str(exc)
        if text.startswith(("optimizer_args:", "optimizer:")):
            return [text]
        return [f"optimizer_args: {values['optimizer_args']!r} do not fit {values['optimizer']} ({text})"]
    except ImportError as exc:
        return [f"optimizer: {values['optimizer']} cannot be used here ({exc})"]
    finally:
        quiet.setLevel(level)
    return []


# ---- disk ---------------------------------------------------------------------------------
def check_disk(values: dict, report, headers: dict, samples) -> None:
    from engine.models.flux import infer_flux_architecture
    from engine.preflight.disk import disk_findings, estimate_disk

    header = headers.get("pretrained_model_name_or_path")
    if header is None or not samples or not report.steps_per_epoch or not values["output_dir"].strip():
        return
    arch = infer_flux_architecture(header.shapes())
    per_epoch = report.steps_per_epoch
    total = values["max_train_steps"] or values["epoch"] * per_epoch
    need = estimate_disk(values, arch, samples, report.start_step, total, per_epoch)
    problems, notes = disk_findings(values, need)
    report.problems += problems
    report.notes += notes
