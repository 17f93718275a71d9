"""Build kohya's training layout from a photo folder: DEST/img/{repeats}_{instance} {class}/,
DEST/reg/{reg_repeats}_{class}/ (with regularisation images), DEST/log/, DEST/model/.

The image folders are built in a staging folder next to DEST and renamed into place, so a
failure leaves no half layout. Re-running on an existing DEST needs `overwrite`; it rebuilds
img/ and reg/ but keeps log/ and model/ (trained LoRAs) and carries over every caption file the
previous DEST held (tagged or hand-edited), so no caption is lost silently.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from engine.dataset.images import BadImageError, open_image_rgb
from engine.dataset.layout import is_image
from engine.events import PREPARING, Progress, emit


class PrepareError(ValueError):
    """Preparation cannot start; the message names the field and what to do."""


@dataclass
class PrepareResult:
    copy_info: dict[str, str]
    copied: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)
    kept_captions: int = 0  # captions carried over from a previous DEST
    image_folder: Path | None = None  # DEST/img/{repeats}_{instance} {class}


def copy_info_for(dest: str | Path, with_reg: bool) -> dict[str, str]:
    dest = Path(dest)
    return {"train_data_dir": str(dest / "img"), "reg_data_dir": str(dest / "reg") if with_reg else "",
            "output_dir": str(dest / "model"), "logging_dir": str(dest / "log")}


def prepare_dataset(instance: str, class_word: str, images_dir, repeats: int, dest, reg_images_dir=None,
                    reg_repeats: int = 1, overwrite: bool = False, caption_extension: str = ".txt",
                    on_event=None) -> PrepareResult:
    instance, class_word = instance.strip(), class_word.strip()
    images_dir, dest = Path(images_dir), Path(dest)
    reg_dir = Path(reg_images_dir) if reg_images_dir else None
    _check_inputs(instance, class_word, images_dir, repeats, dest, reg_dir, reg_repeats, overwrite)

    name = f"{instance} {class_word}".strip()
    result = PrepareResult(copy_info=copy_info_for(dest, reg_dir is not None))
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.staging-", dir=dest.parent))
    try:
        sources = [(images_dir, staging / "img" / f"{repeats}_{name}")]
        if reg_dir is not None:
            sources.append((reg_dir, staging / "reg" / f"{reg_repeats}_{class_word or instance}"))
        files = [(image, target) for source, target in sources for image in _images_in(source)]
        for index, (image, target) in enumerate(files):
            _copy_one(image, target, caption_extension, result)
            emit(on_event, Progress(PREPARING, index + 1, len(files)))
        if dest.exists():
            result.kept_captions = _carry_over(dest, staging, caption_extension)
        _swap_into_place(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result.image_folder = dest / "img" / f"{repeats}_{name}"
    return result


def _check_inputs(instance, class_word, images_dir, repeats, dest, reg_dir, reg_repeats, overwrite) -> None:
    if not instance:
        raise PrepareError("instance prompt: empty; give the trigger word, e.g. ohwx")
    if any(char in '<>:"/\\|?*' for char in instance + class_word):
        raise PrepareError("instance/class prompt: may not contain any of < > : \" / \\ | ? * (they become a folder name)")
    if repeats < 1 or reg_repeats < 1:
        raise PrepareError("repeats: must be 1 or more")
    for label, folder in (("training images", images_dir), ("regularisation images", reg_dir)):
        if folder is None:
            continue
        if not folder.is_dir():
            raise PrepareError(f"{label}: folder {folder} not found")
        if not _images_in(folder):
            raise PrepareError(f"{label}: no images (.jpg .jpeg .png .webp .bmp) in {folder}")
        source, target = folder.resolve(), dest.resolve()
        if target == source or source in target.parents:
            raise PrepareError(f"destination: {dest} is inside the {label} folder {folder}; choose a folder outside it")
    if dest.exists() and not dest.is_dir():
        raise PrepareError(f"destination: {dest} is a file")
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise PrepareError(f"destination: {dest} already exists; choose another folder or overwrite it "
                           "(its captions, log/ and model/ are kept)")


# Formats training does not read directly; their first frame is saved as PNG.
CONVERTED_EXTENSIONS = (".gif",)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if is_image(p) or (p.is_file() and p.suffix.lower() in CONVERTED_EXTENSIONS))


def _copy_one(image: Path, target: Path, caption_extension: str, result: PrepareResult) -> None:
    try:
        with open_image_rgb(image) as decoded:
            target.mkdir(parents=True, exist_ok=True)
            if image.suffix.lower() in CONVERTED_EXTENSIONS:
                decoded.save(target / (image.stem + ".png"))
            else:
                shutil.copy2(image, target / image.name)
    except BadImageError as exc:
        result.rejected.append((image.name, str(exc)))
        return
    caption = image.with_suffix(caption_extension)
    if caption.is_file():
        shutil.copy2(caption, target / caption.name)
    result.copied += 1


def _carry_over(old_dest: Path, staging: Path, caption_extension: str) -> int:
    """Old DEST captions win over the source's: they are the newest (tagged or edited)."""
    kept = 0
    for part in ("img", "reg"):
        old_root = old_dest / part
        if not old_root.is_dir():
            continue
        for caption in old_root.glob(f"*/*{caption_extension}"):
            new_folder = staging / part / caption.parent.name
            if new_folder.is_dir() and any(new_folder.glob(caption.stem + ".*")):
                shutil.copy2(caption, new_folder / caption.name)
                kept += 1
    return kept


def _swap_into_place(staging: Path, dest: Path) -> None:
    """The new img/reg replace the old ones; an old DEST's log/ and model/ move over (renames,
    no copies of trained LoRAs)."""
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        os.rmdir(old)
        os.replace(dest, old)
    os.replace(staging, dest)
    for keep in ("log", "model"):
        if old is not None and (old / keep).is_dir():
            os.replace(old / keep, dest / keep)
        else:
            (dest / keep).mkdir(exist_ok=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def apply_copy_info(preset_path, copy_info: dict[str, str]) -> None:
    """Write the four folder keys into an existing preset file."""
    from engine.preset import load_preset, save_preset

    values = load_preset(preset_path).values
    values.update(copy_info)
    save_preset(values, preset_path)
