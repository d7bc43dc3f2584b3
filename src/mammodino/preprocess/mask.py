"""Breast mask: Otsu on a downsampled copy, morphology, largest component, holes filled.

Burned-in labels, lead markers and film tape are bright but small or detached from the breast, so
an opening followed by keeping the largest connected component leaves them outside the mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

# A breast covers at least this share of the image; less means a blank or wrong image.
MIN_BREAST_FRACTION = 0.01
# The threshold never drops below this share of the 99th percentile: film base and detector
# noise sit under it, and the background-in-mask check of the cache uses 5%.
MIN_THRESHOLD_OF_P99 = 0.06


@dataclass
class MaskResult:
    """A breast mask on the downsampled grid, and the factor from that grid to the original."""

    mask: np.ndarray  # bool, downsampled grid
    scale: float  # downsampled pixels per original pixel
    threshold: float  # intensity threshold used, in [0, 1]


def downsample(pixels: np.ndarray, long_side: int) -> tuple[np.ndarray, float]:
    """Area-averaged copy by an integer factor so its long side is at most `long_side`.

    An integer factor takes OpenCV's fast block-average path (several times faster than a
    fractional INTER_AREA); the last rows/columns that do not fill a block are left out.
    """
    factor = math.ceil(max(pixels.shape) / long_side)
    if factor <= 1:
        return pixels.astype(np.float32, copy=False), 1.0
    rows, cols = pixels.shape[0] // factor, pixels.shape[1] // factor
    block = pixels[: rows * factor, : cols * factor]
    return cv2.resize(block, (cols, rows), interpolation=cv2.INTER_AREA), 1.0 / factor


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a boolean mask (empty stays empty)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        mask.astype(np.uint8), connectivity=8
    )
    if count <= 1:
        return np.zeros_like(mask, dtype=bool)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == biggest


def otsu_threshold(values: np.ndarray, nbins: int = 1024) -> float:
    """Otsu's threshold (maximal between-class variance), as skimage.filters.threshold_otsu.

    Written out so that worker processes need not import scipy and scikit-image (~0.5 s each).
    """
    hist, edges = np.histogram(values, bins=nbins)
    centers = (edges[:-1] + edges[1:]) / 2.0
    hist = hist.astype(np.float64)
    weight_low = np.cumsum(hist)
    weight_high = np.cumsum(hist[::-1])[::-1]
    mean_low = np.cumsum(hist * centers) / np.maximum(weight_low, 1e-12)
    mean_high = (np.cumsum((hist * centers)[::-1]) / np.maximum(weight_high[::-1], 1e-12))[::-1]
    between = weight_low[:-1] * weight_high[1:] * (mean_low[:-1] - mean_high[1:]) ** 2
    return float(centers[:-1][np.argmax(between)])


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Mask with every background region not connected to the border filled."""
    padded = np.pad(mask.astype(np.uint8), 1)
    outside = padded.copy()
    cv2.floodFill(outside, None, (0, 0), 1)  # 4-connected, like scipy's binary_fill_holes
    return (padded.astype(bool) | (outside == 0))[1:-1, 1:-1]


def tissue_threshold(small: np.ndarray) -> float:
    """Otsu, then Otsu again inside the darker class: background versus fatty tissue.

    One Otsu split of a mammogram often falls between fatty and dense tissue (three modes:
    background, fat, glandular), which cuts the faint skin-line region off the breast.
    """
    first = float(otsu_threshold(small, 1024))
    darker = small[small <= first]
    if darker.size < 16 or float(darker.max() - darker.min()) < 1e-6:
        return first
    return float(otsu_threshold(darker, 1024))


def breast_mask(pixels: np.ndarray, mask_size: int = 512) -> MaskResult:
    """Breast mask of a [0, 1] image, computed on a copy whose long side is `mask_size`.

    Returns an empty mask when no breast-sized bright region exists (the caller decides).
    """
    return downsampled_breast_mask(*downsample(pixels, mask_size))


def downsampled_breast_mask(small: np.ndarray, scale: float) -> MaskResult:
    """`breast_mask` of a copy `downsample` already made (`scale`: its factor), for a caller that
    needs the copy too; `small` is not modified."""
    small = cv2.GaussianBlur(small, (0, 0), 1.0)  # detector noise would fray the edge
    p99 = float(np.percentile(small, 99))
    if p99 <= 0.0 or float(small.max() - small.min()) < 1e-6:
        return MaskResult(np.zeros(small.shape, bool), scale, 0.0)
    threshold = max(tissue_threshold(small), MIN_THRESHOLD_OF_P99 * p99)
    foreground = small > threshold
    # An opening of ~1.5% of the long side cuts the thin bridges that join tape and labels to
    # the breast; the closing afterwards restores the skin line it nibbled.
    radius = max(1, round(0.015 * max(small.shape)))
    opened = cv2.morphologyEx(foreground.astype(np.uint8), cv2.MORPH_OPEN, _disk(radius)) > 0
    breast = largest_component(opened)
    if not breast.any():
        return MaskResult(breast, scale, threshold)
    breast = cv2.morphologyEx(breast.astype(np.uint8), cv2.MORPH_CLOSE, _disk(radius)) > 0
    breast &= small > threshold * 0.5  # closing must not bridge over real background
    breast = fill_holes(largest_component(breast))
    return MaskResult(breast, scale, threshold)


def mask_fraction(mask: np.ndarray) -> float:
    """Share of pixels inside the mask."""
    return float(mask.mean()) if mask.size else 0.0


def chest_wall_on_left(mask: np.ndarray) -> bool:
    """True when the breast's mass (mask centroid) lies in the left half of the image.

    The chest wall side holds the widest part of the breast, so the centroid sits on that side
    for CC and MLO views alike, whatever the header claims.
    """
    columns = np.nonzero(mask)[1]
    if columns.size == 0:
        return True
    return float(columns.mean()) < (mask.shape[1] - 1) / 2.0
