"""Aspect-ratio buckets chosen by sd-scripts' rules, so an image trains at the size kohya gives it.

Without bucket_no_upscale: a fixed list of bucket sizes (every width from min to max bucket side
in steps, with the tallest height that keeps the max area, both ways round, plus the square);
an image takes the bucket whose aspect ratio is nearest its own, is scaled to cover it and
centre-cropped. With bucket_no_upscale: an image of at most the max area keeps its size, a
larger one is scaled down to the max area (of the two roundings to steps, the one with the
smaller aspect error); the bucket is that size floored to the steps, reached by cropping only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine.preset import parse_resolution


@dataclass(frozen=True)
class Fit:
    bucket: tuple[int, int]  # (width, height) the image trains at
    resized: tuple[int, int]  # (width, height) it is resized to before the centre crop


def bucket_settings(values: dict) -> tuple[int, int, int]:
    """(min side, max side, steps) as sd-scripts adjusts them: min floored, max raised to the steps."""
    steps = values["bucket_reso_steps"]
    low, high = values["min_bucket_reso"], values["max_bucket_reso"]
    return low - low % steps, high + (-high % steps), steps


def bucket_problems(values: dict) -> list[str]:
    """sd-scripts refuses these combinations; so do we, before anything loads."""
    if not values["enable_bucket"]:
        return []
    width, height = parse_resolution(values["max_resolution"])
    low, high, _ = bucket_settings(values)
    problems = []
    if min(width, height) < low:
        problems.append(f"min_bucket_reso: {values['min_bucket_reso']} is larger than the smaller side of "
                        f"max_resolution {values['max_resolution']}; lower min_bucket_reso")
    if max(width, height) > high:
        problems.append(f"max_bucket_reso: {values['max_bucket_reso']} is smaller than the larger side of "
                        f"max_resolution {values['max_resolution']}; raise max_bucket_reso")
    return problems


def bucket_resolutions(max_width: int, max_height: int, low: int, high: int, steps: int) -> list[tuple[int, int]]:
    """sd-scripts' predefined bucket list for a max resolution, sorted."""
    area = max_width * max_height
    side = int(math.sqrt(area) // steps) * steps
    sizes = {(side, side)}
    for width in range(low, high + 1, steps):
        height = min(high, (area // width) // steps * steps)
        if height >= low:
            sizes.add((width, height))
            sizes.add((height, width))
    return sorted(sizes)


def fit_image(width: int, height: int, values: dict) -> Fit:
    """The bucket and resize of a `width` x `height` image under the preset's bucket settings."""
    max_w, max_h = parse_resolution(values["max_resolution"])
    if not values["enable_bucket"]:
        return _cover(width, height, [(max_w, max_h)])
    low, high, steps = bucket_settings(values)
    if not values["bucket_no_upscale"]:
        return _cover(width, height, bucket_resolutions(max_w, max_h, low, high, steps))
    return _no_upscale(width, height, max_w * max_h, steps)


def _cover(width: int, height: int, sizes: list[tuple[int, int]]) -> Fit:
    aspect = width / height
    if (width, height) in sizes:
        bucket = (width, height)
    else:  # the first of the nearest aspect ratios, in sorted order
        bucket = min(sizes, key=lambda size: abs(size[0] / size[1] - aspect))
    if aspect > bucket[0] / bucket[1]:
        scale = bucket[1] / height  # wider than the bucket: match heights, crop the sides
    else:
        scale = bucket[0] / width
    return Fit(bucket, (int(width * scale + 0.5), int(height * scale + 0.5)))


def _no_upscale(width: int, height: int, max_area: int, steps: int) -> Fit:
    aspect = width / height
    if width * height > max_area:
        ideal_w = math.sqrt(max_area * aspect)
        ideal_h = max_area / ideal_w

        def to_steps(value: float) -> int:
            rounded = int(value + 0.5)
            return rounded - rounded % steps

        w_rounded = to_steps(ideal_w)
        h_for_w = to_steps(w_rounded / aspect)
        h_rounded = to_steps(ideal_h)
        w_for_h = to_steps(h_rounded * aspect)
        # sd-scripts divides by these; an extreme aspect ratio would give zero there.
        error_w = abs(w_rounded / h_for_w - aspect) if h_for_w else math.inf
        error_h = abs(w_for_h / h_rounded - aspect) if h_rounded else math.inf
        if error_w < error_h:
            resized = (w_rounded, int(w_rounded / aspect + 0.5))
        else:
            resized = (int(h_rounded * aspect + 0.5), h_rounded)
    else:
        resized = (width, height)
    return Fit((resized[0] - resized[0] % steps, resized[1] - resized[1] % steps), resized)
