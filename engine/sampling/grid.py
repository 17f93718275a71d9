"""Images in rows (LoRA files) and columns (prompts), labelled, as one picture."""

from __future__ import annotations

import textwrap

from PIL import Image, ImageDraw, ImageFont

BASE_LABEL = "no LoRA"
PAD = 8
LABEL_WIDTH = 180
FONT_SIZE = 14


def _font():
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def _wrap(text: str, width_px: int, max_lines: int) -> list[str]:
    chars = max(8, width_px // (FONT_SIZE // 2 + 1))
    lines = textwrap.wrap(text, chars) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(1, chars - 1)] + "…"
    return lines


def make_grid(images: list[list[Image.Image]], row_labels: list[str], column_labels: list[str],
              strength: float = 1.0) -> Image.Image:
    """images[row][column]; a header row of prompts, a label column of file names."""
    widths = [max(row[c].width for row in images) for c in range(len(column_labels))]
    heights = [max(image.height for image in row) for row in images]
    font = _font()
    line = FONT_SIZE + 4
    header_lines = [_wrap(text, max(width, 120), 4) for text, width in zip(column_labels, widths)]
    widths = [max(width, 120) for width in widths]
    header = PAD + line * max(len(lines) for lines in header_lines) + PAD
    canvas = Image.new("RGB", (LABEL_WIDTH + sum(widths) + PAD * (len(widths) + 1),
                               header + sum(heights) + PAD * len(heights)), "white")
    draw = ImageDraw.Draw(canvas)
    x = LABEL_WIDTH + PAD
    for lines, width in zip(header_lines, widths):
        for number, text in enumerate(lines):
            draw.text((x, PAD + number * line), text, fill="black", font=font)
        x += width + PAD
    y = header
    for row, label, height in zip(images, row_labels, heights):
        text = label if label == BASE_LABEL or strength == 1.0 else f"{label} x{strength:g}"
        for number, part in enumerate(_wrap(text, LABEL_WIDTH - PAD, 3)):
            draw.text((PAD, y + number * line), part, fill="black", font=font)
        x = LABEL_WIDTH + PAD
        for image, width in zip(row, widths):
            canvas.paste(image.convert("RGB"), (x, y))
            x += width + PAD
        y += height + PAD
    return canvas
