"""Pectoral-muscle mask for MLO views: the bright wedge in the upper chest-wall corner.

Works on an image already oriented with the chest wall on the left. The muscle is brighter than
the breast below it; its lower edge is close to a straight line, so the brightest component that
touches the upper left edge is fitted by a line and everything left of that line is muscle.
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.filters import threshold_otsu

from mammodino.preprocess.mask import largest_component

# A fitted muscle larger than this share of the breast is a failed fit (dense breast, no muscle).
MAX_MUSCLE_FRACTION = 0.5
MIN_MUSCLE_FRACTION = 0.005


def pectoral_mask(pixels: np.ndarray, breast: np.ndarray) -> np.ndarray:
    """Bool mask of the pectoral muscle (empty when none is found); chest wall must be left."""
    empty = np.zeros(breast.shape, dtype=bool)
    rows = np.nonzero(breast.any(axis=1))[0]
    cols = np.nonzero(breast.any(axis=0))[0]
    if rows.size < 8 or cols.size < 8:
        return empty
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    left, right = int(cols[0]), int(cols[-1]) + 1
    # The muscle lives in the upper two thirds near the chest wall.
    region = np.zeros_like(breast)
    region[top : top + 2 * (bottom - top) // 3, left : left + 2 * (right - left) // 3] = True
    region &= breast
    if region.sum() < 64:
        return empty
    smooth = cv2.GaussianBlur(pixels.astype(np.float32), (0, 0), max(1.0, pixels.shape[0] / 256))
    bright = (smooth > threshold_otsu(smooth[region], nbins=256)) & region
    # Keep only bright pixels connected to the chest wall edge in the upper rows.
    seeds = np.zeros_like(bright)
    seeds[top : top + max(2, (bottom - top) // 8), left : left + 3] = True
    count, labels = cv2.connectedComponents(bright.astype(np.uint8), connectivity=8)
    touching = np.unique(labels[seeds & bright])
    touching = touching[touching > 0]
    if touching.size == 0:
        return empty
    muscle = largest_component(np.isin(labels, touching))
    extent_rows = np.nonzero(muscle.any(axis=1))[0]
    extent = np.array([np.nonzero(muscle[r])[0].max() + 1 for r in extent_rows], dtype=np.float64)
    if extent_rows.size < 4:
        return empty
    slope, intercept = np.polyfit(extent_rows.astype(np.float64), extent, 1)
    if slope >= 0:  # the muscle edge must run down towards the chest wall
        return empty
    yy, xx = np.mgrid[0 : breast.shape[0], 0 : breast.shape[1]]
    fitted = (xx < intercept + slope * yy) & breast
    share = fitted.sum() / max(int(breast.sum()), 1)
    if not MIN_MUSCLE_FRACTION <= share <= MAX_MUSCLE_FRACTION:
        return empty
    return fitted
