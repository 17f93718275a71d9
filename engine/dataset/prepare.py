"""`fluxlora prepare`: a photo folder -> the kohya layout DEST/img/{N}_{instance} {class}/, reg/, log/, model/.

The layout is built in a staging folder next to DEST and renamed into place, so a failure leaves
no half layout. Re-running on an existing DEST (overwrite=True) replaces only img/ and reg/;
everything else in DEST (trained LoRAs in model/, logs in log/) is kept. Captions that exist only
in the old DEST are never lost silently:
- an image copied again without a caption in the source keeps its old DEST caption (so tags
  edited in DEST survive a re-prepare with other repeats);
- an old DEST caption that the new layout does not keep (its image is gone from the source, or
  the source brings a different caption) is saved under DEST/log/previous captions/ and reported.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from engine.dataset.images import BadImageError, open_image_rgb
from engine.dataset.layout import IMAGE_EXTENSIONS, DatasetError, read_caption
from engine.events import PREPARING, Log, Progress, emit
from engine.fsutil import atomic_write_text, replace
from engine.names import BAD_NAME_CHARS, name_problem

# Images Pillow opens but the training scanner does not list: saved as PNG (first frame).
CONVERTED_EXTENSIONS = (".gif", ".tif", ".tiff", ".jfif")
PREVIOUS_CAPTIONS = "previous captions"


@dataclass
class PrepareResult:
    copy_info: dict[str, str]
    copied: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (file path, reason)
    kept_captions: int = 0  # old DEST captions reused for images without a source caption
    saved_captions: list[str] = field(default_factory=list)  # old captions moved to log/previous captions
    train_folder: str = ""  # DEST/img/{N}_{instance} {class}: what `--tag` captions
    leftovers: list[str] = field(default_factory=list)  # parked DEST folders an interrupted preparation left


def copy_info_for(dest: str | Path, with_reg: bool) -> dict[str, str]:
    dest = Path(os.path.abspath(dest))
    return {
        "train_data_dir": str(dest / "img"),
        "reg_data_dir": str(dest / "reg") if with_reg else "",
        "output_dir": str(dest / "model"),
        "logging_dir": str(dest / "log"),
    }


def prepare_dataset(instance: str, class_word: str, images_dir, repeats: int, dest, reg_images_dir=None,
                    reg_repeats: int = 1, overwrite: bool = False, on_event: Callable | None = None,
                    caption_extension: str = ".txt") -> PrepareResult:
    instance, class_word = instance.strip(), class_word.strip()
    _check_token("instance", instance, required=True)
    _check_token("class", class_word, required=bool(reg_images_dir))
    for key, value in (("repeats", repeats), ("reg_repeats", reg_repeats)):
        if int(value) < 1:
            raise DatasetError(f"{key}: {value} is not a positive whole number")
    dest = Path(os.path.abspath(dest))
    sources = [("images", Path(os.path.abspath(images_dir)))]
    if reg_images_dir:
        sources.append(("reg images", Path(os.path.abspath(reg_images_dir))))
    for label, source in sources:
        if not source.is_dir():
            raise DatasetError(f"{label} folder {source} not found")
        real_dest, real_source = dest.resolve(), source.resolve()  # symlinks and junctions too
        if real_dest == real_source or real_source in real_dest.parents:
            raise DatasetError(f"destination {dest} is the {label} folder or inside it; choose a folder outside {source}")
        if real_dest in real_source.parents:
            raise DatasetError(f"{label} folder {source} is inside the destination {dest}, which prepare rebuilds; "
                               "move the images out first")
    if dest.exists() and not dest.is_dir():
        raise DatasetError(f"destination {dest} is a file; choose a folder")
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise DatasetError(f"destination {dest} already exists and is not empty; use --overwrite to rebuild "
                           "its img/ and reg/ (model/, log/ and captions only in it are kept)")

    train_name = f"{int(repeats)}_{instance} {class_word}".rstrip()
    jobs = [(sources[0][1], Path("img") / train_name)]
    if reg_images_dir:
        jobs.append((sources[1][1], Path("reg") / f"{int(reg_repeats)}_{class_word}"))
    result = PrepareResult(copy_info_for(dest, bool(reg_images_dir)), train_folder=str(dest / "img" / train_name))

    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".staging", dir=dest.parent))
    try:
        for sub in ("img", "reg" if reg_images_dir else None, "log", "model"):
            if sub:
                (staging / sub).mkdir()
        plan = [(path, target) for source, target in jobs for path in _source_images(source)]
        old_captions = _old_captions(dest, caption_extension) if dest.is_dir() else {}
        _copy_all(plan, staging, caption_extension, old_captions, result, on_event)
        if not any((staging / "img" / train_name).iterdir()):
            reasons = "; ".join(f"{Path(path).name}: {reason}" for path, reason in result.rejected[:3])
            raise DatasetError(f"no usable images in {sources[0][1]} ({reasons}{'; ...' if len(result.rejected) > 3 else ''})")
        _save_dropped_captions(old_captions, staging, result, on_event)
        _commit(staging, dest, result, on_event)
    except OSError as exc:  # disk full, a file in DEST open in another program, ...
        state = "the old one is unchanged" if dest.exists() else "nothing was written"
        raise DatasetError(f"preparing {dest} failed ({exc}); {state}") from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return result


def apply_copy_info(preset_path, copy_info: dict[str, str]) -> None:
    """Write train_data_dir, reg_data_dir, output_dir and logging_dir into an existing preset."""
    from engine.preset import load_preset, save_preset

    values = dict(load_preset(preset_path).values)
    values.update(copy_info)
    save_preset(values, preset_path)


def _check_token(key: str, value: str, required: bool) -> None:
    if required and not value:
        raise DatasetError(f"{key}: empty; give a word such as {'ohwx' if key == 'instance' else 'man'}")
    bad = sorted(BAD_NAME_CHARS & set(value))
    if bad:
        raise DatasetError(f"{key}: {value!r} contains {' '.join(bad)}, which folder names cannot hold")
    problem = name_problem(f"1_{value}") if value else None  # it ends the repeat folder's name
    if problem:
        raise DatasetError(f"{key}: {value!r} cannot end a folder name: {problem}")


def _source_images(folder: Path) -> list[Path]:
    suffixes = IMAGE_EXTENSIONS + CONVERTED_EXTENSIONS
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not images:
        raise DatasetError(f"no images ({', '.join(suffixes)}) in {folder}")
    return images


def _old_captions(dest: Path, caption_extension: str) -> dict[tuple[str, str], list[Path]]:
    """(img|reg, caption file name lower-cased) -> caption paths in the existing DEST's repeat folders."""
    found: dict[tuple[str, str], list[Path]] = {}
    for kind in ("img", "reg"):
        for caption in sorted((dest / kind).glob(f"*/*{caption_extension}")):
            found.setdefault((kind, caption.name.lower()), []).append(caption)
    return found


def _check_image(path: Path) -> str | None:
    try:
        open_image_rgb(path)
    except BadImageError as exc:
        return str(exc)
    return None


def _copy_all(plan, staging: Path, caption_extension: str, old_captions: dict, result: PrepareResult, on_event) -> None:
    total = len(plan)
    taken: dict[Path, str] = {}  # caption path in staging (lower-cased) -> the image that owns it
    emit(on_event, Progress(PREPARING, 0, total))
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for done, ((path, target), problem) in enumerate(zip(plan, pool.map(lambda job: _check_image(job[0]), plan)), 1):
            folder = staging / target
            folder.mkdir(parents=True, exist_ok=True)
            converted = path.suffix.lower() in CONVERTED_EXTENSIONS
            name = path.stem + ".png" if converted else path.name
            caption_key = (folder / (path.stem + caption_extension)).as_posix().lower()
            if problem is None and caption_key in taken:
                problem = (f"has the same name as {taken[caption_key]}, so they would share one caption file; "
                           "rename one of them")
            if problem is not None:
                result.rejected.append((str(path), problem))
                emit(on_event, Log(f"rejected {path}: {problem}", "warning"))
            else:
                taken[caption_key] = path.name
                if converted:
                    open_image_rgb(path).save(folder / name)
                else:
                    shutil.copyfile(path, folder / name)
                _copy_caption(path, folder / (path.stem + caption_extension), target.parts[0], old_captions, result)
                result.copied += 1
            emit(on_event, Progress(PREPARING, done, total))


def _copy_caption(image: Path, target: Path, kind: str, old_captions: dict, result: PrepareResult) -> None:
    source_caption = image.with_suffix(target.suffix)
    olds = old_captions.get((kind, target.name.lower()), [])
    if source_caption.is_file():
        text = read_caption(source_caption)
        olds[:] = [old for old in olds if read_caption(old) != text]  # identical ones are not lost
    elif olds:
        text = read_caption(olds.pop(0))
        result.kept_captions += 1
    else:
        return
    atomic_write_text(target, text)


def _save_dropped_captions(old_captions: dict, staging: Path, result: PrepareResult, on_event) -> None:
    """Old DEST captions the new layout does not keep go to log/previous captions/<img|reg>/<folder>/."""
    for caption in (path for paths in old_captions.values() for path in paths):
        relative = Path(caption.parent.parent.name, caption.parent.name, caption.name)
        target = staging / "log" / PREVIOUS_CAPTIONS / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(caption, target)
        result.saved_captions.append(str(relative))
    if result.saved_captions:
        emit(on_event, Log(f"{len(result.saved_captions)} caption(s) from the old destination are not used by the "
                           f"new layout; saved them in log/{PREVIOUS_CAPTIONS}/", "warning"))


def _free_name(path: Path) -> Path:
    """`path`, or `name (2).ext`, `name (3).ext`, ... when it is taken."""
    candidate, number = path, 2
    while candidate.exists():
        candidate = path.with_name(f"{path.stem} ({number}){path.suffix}")
        number += 1
    return candidate


def _parked_names(dest: Path) -> list[Path]:
    """`.DEST.old`, `.DEST (2).old`, ...: where DEST waits while the new one is put in place."""
    pattern = re.compile(rf"\.{re.escape(dest.name)}( \(\d+\))?\.old")
    return sorted(p for p in dest.parent.iterdir() if pattern.fullmatch(p.name)) if dest.parent.is_dir() else []


def _commit(staging: Path, dest: Path, result: PrepareResult, on_event=None) -> None:
    """Rename staging to DEST; an existing DEST first gives its kept entries (all but img/, reg/) to it.

    Every move is recorded, so a failure puts them back and DEST is as it was. A parked DEST that an
    interrupted earlier preparation left may hold the only copy of files from DEST: it is kept, and named.
    """
    for leftover in _parked_names(dest):
        result.leftovers.append(str(leftover))
        emit(on_event, Log(f"{leftover} was left by an interrupted earlier preparation and may hold files that "
                           f"were in {dest.name} (model/, log/); it is kept: move back what you need, then delete it",
                           "warning"))
    if not dest.exists():
        replace(staging, dest)
        return
    old = _free_name(dest.with_name(f".{dest.name}.old"))
    replace(dest, old)  # retried while Explorer or an antivirus scan holds a file in DEST
    moves: list[tuple[Path, Path]] = []

    def move(source: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        moves.append((source, target))

    try:
        for entry in old.iterdir():
            if entry.name in ("img", "reg"):
                continue
            target = staging / entry.name
            if not (entry.is_dir() and target.is_dir()):
                move(entry, target)
                continue
            # log/ and model/: merge file by file (log/previous captions may exist in both)
            for path in sorted(entry.rglob("*")):
                if path.is_file():
                    move(path, _free_name(target / path.relative_to(entry)))
        replace(staging, dest)
    except BaseException:
        for source, target in reversed(moves):
            os.replace(target, source)
        os.replace(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


def prepare_from_values(values: dict, tag: bool = False, overwrite: bool = False, on_event: Callable | None = None):
    """The GUI's one click: the preset's dataset_* options -> layout, then (tag=True) WD14 captions
    with the tagger_* options and the instance prompt first. Returns (PrepareResult, TagResult | None).
    The tagger is loaded before anything is written, so a missing model changes nothing."""
    from engine.dataset.tagger import load_wd14, tag_folder

    tagger = load_wd14(values["tagger_model_dir"] or None, values["tagger_repo_id"]) if tag else None
    result = prepare_dataset(values["dataset_instance_prompt"], values["dataset_class_prompt"],
                             values["dataset_images_dir"], values["dataset_repeats"], values["dataset_dest_dir"],
                             values["dataset_reg_images_dir"] or None, values["dataset_reg_repeats"],
                             overwrite=overwrite, on_event=on_event, caption_extension=values["caption_extension"])
    if tagger is None:
        return result, None
    tagged = tag_folder(tagger, result.train_folder, general_threshold=values["tagger_general_threshold"],
                        character_threshold=values["tagger_character_threshold"],
                        add_rating=values["tagger_add_rating"], prefix=values["dataset_instance_prompt"].strip(),
                        undesired_tags=values["tagger_undesired_tags"], caption_extension=values["caption_extension"],
                        mode=values["tagger_mode"], on_event=on_event)
    return result, tagged
