"""Opening the images users really have: upright, RGB, first frame, bad files refused by reason."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow's own bomb guard warns at 89 MP and raises at twice that; we refuse above this.
MAX_PIXELS = 64 * 1024 * 1024


class BadImageError(ValueError):
    """An image that cannot be used; str() is the human reason."""


def open_image_rgb(path: str | Path, draft_size: int | None = None) -> Image.Image:
    """`draft_size`: the caller needs at most this many pixels a side, so a JPEG may be decoded
    at 1/2, 1/4 or 1/8 scale (each side stays at least `draft_size`)."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImageError("empty file (0 bytes)")
        with Image.open(path) as image:
            if image.width * image.height > MAX_PIXELS:
                raise BadImageError(f"too large ({image.width}x{image.height} pixels; at most {MAX_PIXELS // 2**20} MP)")
            image.seek(0)  # first frame of animations
            if draft_size and image.format == "JPEG":
                image.draft(None, (draft_size, draft_size))
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_rgb(image)
    except BadImageError:
        raise
    except Image.DecompressionBombError:
        raise BadImageError("too large (decompression bomb guard)") from None
    except UnidentifiedImageError:
        raise BadImageError("not an image file (or an unsupported format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(f"damaged or truncated image ({exc})") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with any transparency composited onto white; 16-bit and CMYK converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda value: value * (1 / 256)).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")
