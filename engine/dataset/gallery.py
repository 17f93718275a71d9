"""The dataset as a person looks at it: every image with its caption, the N_name folders with
their repeats, the images a run would skip and why, the tags across all captions.

Reading is cheap on large folders: image sizes come from the file header (no decoding) and are
remembered by (path, size, mtime), so a refresh after a caption edit reads no image again.
Caption edits are written atomically (UTF-8, no BOM); the text cache keys on the caption text,
so the next run re-encodes exactly the captions that changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from engine.dataset.layout import IMAGE_EXTENSIONS, DatasetError, ImageItem, read_caption, scan_train_dir
from engine.fsutil import atomic_write_text


@dataclass(frozen=True)
class FolderSummary:
    name: str  # e.g. "10_ohwx man"
    repeats: int
    images: int  # usable images
    skipped: int
    captioned: int  # usable images with their own caption file

    @property
    def seen_per_epoch(self) -> int:
        return self.images * self.repeats


@dataclass(frozen=True)
class GalleryItem:
    image_path: Path
    caption_path: Path  # where its caption is (or would be) written
    caption: str  # what training uses: the file's text, else the folder's class tokens
    has_caption_file: bool
    folder: str
    size: tuple[int, int] | None  # (width, height); None when the image would be skipped


@dataclass
class DatasetView:
    root: Path
    folders: list[FolderSummary] = field(default_factory=list)
    items: list[GalleryItem] = field(default_factory=list)  # usable images, folder by folder
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, why the run leaves it out)

    def page(self, number: int, per_page: int) -> list[GalleryItem]:
        """Page `number` (from 0) of the usable images."""
        return self.items[number * per_page:(number + 1) * per_page]

    def pages(self, per_page: int) -> int:
        return max(1, math.ceil(len(self.items) / per_page))


_SIZES: dict[tuple[str, int, int], tuple[int, int] | str] = {}  # (path, bytes, mtime_ns) -> size or reason


def image_size_or_reason(path: Path) -> tuple[int, int] | str:
    """(width, height) upright as training sees it, or why the run would skip the file: the run's
    own check (engine.dataset.images.open_image_rgb), decoded small, remembered per file version."""
    from PIL import Image

    from engine.dataset.images import BadImageError, open_image_rgb

    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _SIZES:
        try:
            with open_image_rgb(path, draft_size=64):
                pass
            with Image.open(path) as image:
                width, height = image.size
                if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF orientation: turned a quarter
                    width, height = height, width
            _SIZES[key] = (width, height)
        except BadImageError as exc:
            _SIZES[key] = str(exc)
    return _SIZES[key]


def view_dataset(folder: str | Path, caption_extension: str, key: str = "train_data_dir") -> DatasetView:
    """Everything the gallery shows of one image folder (the parent of the N_name folders)."""
    items = scan_train_dir(folder, caption_extension, key=key)
    view = DatasetView(Path(folder))
    by_folder: dict[str, list[ImageItem]] = {}
    for item in items:
        by_folder.setdefault(item.folder.path.name, []).append(item)
    for name, folder_items in by_folder.items():
        usable = skipped = captioned = 0
        for item in folder_items:
            size = image_size_or_reason(item.image_path)
            if isinstance(size, str):
                view.skipped.append((item.image_path, size))
                skipped += 1
                continue
            usable += 1
            captioned += item.caption_path is not None
            view.items.append(GalleryItem(item.image_path, item.image_path.with_suffix(caption_extension),
                                          item.caption, item.caption_path is not None, name, size))
        view.folders.append(FolderSummary(name, folder_items[0].repeats, usable, skipped, captioned))
    for repeat_folder in {item.folder.path for item in items}:
        for path in sorted(repeat_folder.iterdir()):
            if path.is_file() and _looks_like_unused_image(path):
                view.skipped.append((path, f"{path.suffix} is not a training image type ({', '.join(IMAGE_EXTENSIONS)})"))
    return view


def _looks_like_unused_image(path: Path) -> bool:
    return path.suffix.lower() in (".gif", ".tif", ".tiff", ".avif", ".heic", ".heif", ".jfif", ".jxl")


def save_caption(item: GalleryItem, text: str) -> str:
    """Write one caption file atomically; returns the caption training will now use."""
    caption = " ".join(line.strip() for line in text.splitlines() if line.strip())
    if not caption:
        raise DatasetError(f"{item.caption_path.name}: an empty caption; write at least one word (an image "
                           "without a caption file is captioned with its folder's name instead)")
    atomic_write_text(item.caption_path, caption)
    return read_caption(item.caption_path)


def split_tags(caption: str) -> list[str]:
    return [tag.strip() for tag in caption.split(",") if tag.strip()]


def tag_counts(items: list[GalleryItem]) -> list[tuple[str, int]]:
    """Each comma-separated tag of the caption files with the number of captions holding it,
    most frequent first (ties alphabetical)."""
    counts: dict[str, int] = {}
    for item in items:
        if item.has_caption_file:
            for tag in dict.fromkeys(split_tags(item.caption)):
                counts[tag] = counts.get(tag, 0) + 1
    return sorted(counts.items(), key=lambda pair: (-pair[1], pair[0]))


def edit_tag_everywhere(items: list[GalleryItem], tag: str, replacement: str = "") -> int:
    """Remove `tag` from every caption file (or replace it with `replacement`, once per caption);
    returns how many files changed. A caption that would become empty is left alone."""
    tag, replacement = tag.strip(), replacement.strip()
    if not tag:
        raise DatasetError("choose a tag first")
    if "," in replacement:
        raise DatasetError(f"replacement {replacement!r}: one tag, without commas")
    changed = 0
    for item in items:
        if not item.has_caption_file:
            continue
        tags = split_tags(item.caption)
        if tag not in tags:
            continue
        new: list[str] = []
        for old in tags:
            value = replacement if old == tag else old
            if value and value not in new:
                new.append(value)
        if new and new != tags:
            atomic_write_text(item.caption_path, ", ".join(new))
            changed += 1
    return changed
