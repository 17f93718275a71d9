"""Small JPEG previews of dataset and sample images, cached on disk by file version."""

from __future__ import annotations

import hashlib
from pathlib import Path

from engine.fsutil import atomic_path

THUMBNAIL_SIDE = 256


def thumbnail(image_path: str | Path, cache_dir: str | Path, side: int = THUMBNAIL_SIDE) -> Path:
    """A preview at most `side` pixels a side; made once per (file, size, mtime), then reused."""
    from engine.dataset.images import open_image_rgb

    image_path = Path(image_path)
    stat = image_path.stat()
    name = hashlib.sha1(f"{image_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{side}".encode()).hexdigest()
    target = Path(cache_dir) / f"{name[:2]}" / f"{name}.jpg"
    if not target.is_file():
        with open_image_rgb(image_path, draft_size=side) as image:
            image.thumbnail((side, side))
            with atomic_path(target) as temporary:
                image.save(temporary, format="JPEG", quality=85)
    return target
