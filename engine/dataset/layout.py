"""The kohya folder layout: `train_data_dir/10_ohwx man/*.jpg` = 10 repeats, caption fallback
"ohwx man". train_data_dir is the *parent* of the repeat folders."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from engine.dataset.captions import read_caption_file

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
_REPEAT_FOLDER = re.compile(r"^(\d+)_(.+)$")


class DatasetError(ValueError):
    """A dataset folder that cannot be trained on; the message says what to do."""


@dataclass(frozen=True)
class RepeatFolder:
    path: Path
    repeats: int
    name: str  # the text after `N_`, the caption of images without a caption file


@dataclass(frozen=True)
class ImageItem:
    image_path: Path
    caption_path: Path | None
    caption: str
    repeats: int
    folder: RepeatFolder


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def read_caption(path: str | Path, first_line: bool = False) -> str:
    """Caption text: BOM, CRLF and surrounding whitespace removed; lines joined by spaces, or
    with first_line only the first line (what sd-scripts trains on). Decoding (UTF-16, cp1252)
    is engine.dataset.captions'; the preflight reports how a file was decoded."""
    text, _ = read_caption_file(path)
    if first_line:
        return text.splitlines()[0].strip() if text.splitlines() else ""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def parse_repeat_folder(path: Path) -> RepeatFolder | None:
    match = _REPEAT_FOLDER.match(path.name)
    if not match or not path.is_dir():
        return None
    repeats = int(match.group(1))
    return RepeatFolder(path, repeats, match.group(2).strip()) if repeats > 0 else None


def scan_train_dir(train_data_dir: str | Path, caption_extension: str = ".txt", key: str = "train_data_dir") -> list[ImageItem]:
    root = Path(train_data_dir)
    if not str(train_data_dir).strip():
        raise DatasetError(f"{key}: empty; choose the folder that holds your 10_name folders")
    if not root.is_dir():
        raise DatasetError(f"{key}: folder {root} not found")
    folders = sorted((f for f in map(parse_repeat_folder, root.iterdir()) if f), key=lambda f: f.path.name)
    if not folders:
        own = parse_repeat_folder(root)
        if own is not None:
            raise DatasetError(
                f"{key}: {root} is itself a repeat folder; choose its parent {root.parent} instead "
                "(the image folder must hold the N_name folders)")
        hint = " (it holds images directly: put them in a subfolder such as 10_ohwx man)" if any(
            is_image(p) for p in root.iterdir()) else ""
        raise DatasetError(f"{key}: no N_name folders (such as 10_ohwx man) in {root}{hint}")
    items, empty = [], []
    for folder in folders:
        for image in sorted(p for p in folder.path.iterdir() if is_image(p)):
            caption_path = image.with_suffix(caption_extension)
            if caption_path.is_file():
                caption = read_caption(caption_path, first_line=True)
                if not caption:
                    empty.append(caption_path)
            else:
                caption_path, caption = None, folder.name
            items.append(ImageItem(image, caption_path, caption, folder.repeats, folder))
    if empty:
        raise DatasetError(_empty_captions_message(key, empty))
    if not items:
        names = ", ".join(f.path.name for f in folders)
        raise DatasetError(f"{key}: no images ({', '.join(IMAGE_EXTENSIONS)}) in {names} under {root}")
    return items


def _empty_captions_message(key: str, paths: list[Path]) -> str:
    shown = "; ".join(str(path) for path in paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
    return (f"{key}: empty caption file{'s' if len(paths) > 1 else ''} {shown}. Only the first line of a caption "
            "file is trained on (as in sd-scripts); write the caption there, or delete the file to use the "
            "folder's name")


def count_steps(items: list[ImageItem], batch_size: int, gradient_accumulation_steps: int = 1) -> tuple[int, int]:
    """(images x repeats, optimizer steps per epoch) as kohya counts them."""
    samples = sum(item.repeats for item in items)
    batches = math.ceil(samples / batch_size)
    return samples, math.ceil(batches / gradient_accumulation_steps)
