"""Cache geometry: how an original pixel (x = column, y = row) lands in the cached image.

The manifest stores, per image: `width` (original columns), `flipped` (0/1, horizontal flip
x -> width - 1 - x applied first), the crop box `crop_x0, crop_y0, crop_x1, crop_y1` in flipped
original pixels (half-open: x0 <= x < x1), and `scale_x, scale_y` (cache pixels per original
pixel). Coordinates refer to pixel centres, as `cv2.resize` does, so
`cache = (orig - crop0 + 0.5) * scale - 0.5` and the two functions below are exact inverses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CacheGeometry:
    """Flip, crop and scale from an original image to its cached copy."""

    height: int  # original rows
    width: int  # original columns
    flipped: int  # 1: x -> width - 1 - x before cropping
    crop_x0: int
    crop_y0: int
    crop_x1: int  # exclusive
    crop_y1: int  # exclusive
    scale_x: float  # cache pixels per original pixel
    scale_y: float

    @property
    def cache_width(self) -> int:
        """Columns of the cached image."""
        return round((self.crop_x1 - self.crop_x0) * self.scale_x)

    @property
    def cache_height(self) -> int:
        """Rows of the cached image."""
        return round((self.crop_y1 - self.crop_y0) * self.scale_y)

    def as_row(self) -> dict[str, Any]:
        """Manifest columns of this geometry."""
        return asdict(self)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> CacheGeometry:
        """Read the geometry back from a manifest row (values may be strings from CSV)."""
        ints = ("height", "width", "flipped", "crop_x0", "crop_y0", "crop_x1", "crop_y1")
        values = {k: int(float(row[k])) for k in ints}
        return cls(**values, scale_x=float(row["scale_x"]), scale_y=float(row["scale_y"]))


def crop_box(
    mask_box: tuple[int, int, int, int], height: int, width: int, margin: float
) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a breast bounding box grown by `margin` of its size, inside the image."""
    x0, y0, x1, y1 = mask_box
    pad_x = round(margin * (x1 - x0))
    pad_y = round(margin * (y1 - y0))
    return max(0, x0 - pad_x), max(0, y0 - pad_y), min(width, x1 + pad_x), min(height, y1 + pad_y)


def plan_geometry(
    height: int, width: int, flipped: bool, box: tuple[int, int, int, int], cache_size: int
) -> CacheGeometry:
    """Geometry whose cached long side is `cache_size` (never enlarged past the original)."""
    x0, y0, x1, y1 = box
    factor = min(1.0, cache_size / max(x1 - x0, y1 - y0))
    # Trim the far margin so the crop is a multiple of the integer part of the reduction: the
    # resize can then block-average first (fast) and stay exact. Trims fewer than k pixels.
    k = max(1, math.floor(1.0 / factor))
    if min(x1 - x0, y1 - y0) >= k:  # a sliver narrower than k keeps its size (exact 1-stage)
        x1, y1 = x1 - (x1 - x0) % k, y1 - (y1 - y0) % k
    crop_w, crop_h = x1 - x0, y1 - y0
    factor = min(1.0, cache_size / max(crop_w, crop_h))
    out_w, out_h = max(1, round(crop_w * factor)), max(1, round(crop_h * factor))
    # Scales come from the integer output size, so they describe the resize exactly.
    return CacheGeometry(
        height=height,
        width=width,
        flipped=int(flipped),
        crop_x0=x0,
        crop_y0=y0,
        crop_x1=x1,
        crop_y1=y1,
        scale_x=out_w / crop_w,
        scale_y=out_h / crop_h,
    )


def original_to_cache(row: Mapping[str, Any], x, y):
    """Map original pixel coordinates (x = column, y = row; scalars or arrays) to the cache."""
    g = row if isinstance(row, CacheGeometry) else CacheGeometry.from_row(row)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xf = (g.width - 1 - x) if g.flipped else x
    cx = (xf - g.crop_x0 + 0.5) * g.scale_x - 0.5
    cy = (y - g.crop_y0 + 0.5) * g.scale_y - 0.5
    return _like_input(cx), _like_input(cy)


def cache_to_original(row: Mapping[str, Any], x, y):
    """Map cache pixel coordinates (x = column, y = row) back to the original image."""
    g = row if isinstance(row, CacheGeometry) else CacheGeometry.from_row(row)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xf = (x + 0.5) / g.scale_x - 0.5 + g.crop_x0
    oy = (y + 0.5) / g.scale_y - 0.5 + g.crop_y0
    ox = (g.width - 1 - xf) if g.flipped else xf
    return _like_input(ox), _like_input(oy)


def _like_input(value: np.ndarray):
    return float(value) if value.ndim == 0 else value
