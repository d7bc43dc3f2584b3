"""Pectoral-muscle mask for MLO views: the bright wedge in the upper chest-wall corner.

Works on an image already oriented with the chest wall on the left. In each upper row the
muscle's edge is the strongest bright-to-dark step near the chest wall; a straight line is fitted
through those steps with RANSAC (dense tissue gives outlier steps), and the breast left of the
line is the muscle. No line with enough support, a line that runs the wrong way or a wedge of
implausible size gives an empty mask.
"""

from __future__ import annotations

import cv2
import numpy as np

MAX_MUSCLE_FRACTION = 0.4  # of the breast; more means the fit followed something else
MIN_MUSCLE_FRACTION = 0.01
SEARCH_HEIGHT = 0.6  # share of the breast height searched from the top
SEARCH_WIDTH = 0.7  # share of the breast width searched from the chest wall
MIN_SUPPORT = 0.35  # share of searched rows that must lie on the fitted line
RANSAC_TRIALS = 200


def _edge_points(smooth: np.ndarray, breast: np.ndarray, box: tuple[int, int, int, int]):
    """(row, column) of the strongest bright-to-dark step in each searched row."""
    top, bottom, left, right = box
    gradient = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=5)
    gradient[~breast] = 0.0
    x_end = left + max(4, int(SEARCH_WIDTH * (right - left)))
    rows = np.arange(top, top + int(SEARCH_HEIGHT * (bottom - top)))
    band = gradient[rows, left + 2 : x_end]  # skip the chest-wall border itself
    columns = left + 2 + np.argmin(band, axis=1)
    strong = band.min(axis=1) < 0.25 * band.min()  # rows without a clear step are left out
    return rows[strong].astype(np.float64), columns[strong].astype(np.float64), len(rows)


def _ransac_line(ys: np.ndarray, xs: np.ndarray, tolerance: float, seed: int = 0):
    """x = intercept + slope * y fitted to the largest consensus; (slope, intercept, inliers)."""
    rng = np.random.default_rng(seed)
    best = np.zeros(len(ys), dtype=bool)
    for _ in range(RANSAC_TRIALS):
        i, j = rng.choice(len(ys), size=2, replace=False)
        if ys[i] == ys[j]:
            continue
        slope = (xs[j] - xs[i]) / (ys[j] - ys[i])
        inliers = np.abs(xs - (xs[i] + slope * (ys - ys[i]))) <= tolerance
        if inliers.sum() > best.sum():
            best = inliers
    if best.sum() < 2:
        return 0.0, 0.0, best
    slope, intercept = np.polyfit(ys[best], xs[best], 1)
    return float(slope), float(intercept), best


def pectoral_mask(pixels: np.ndarray, breast: np.ndarray) -> np.ndarray:
    """Bool mask of the pectoral muscle (empty when none is found); chest wall must be left."""
    empty = np.zeros(breast.shape, dtype=bool)
    rows = np.nonzero(breast.any(axis=1))[0]
    cols = np.nonzero(breast.any(axis=0))[0]
    if rows.size < 16 or cols.size < 16:
        return empty
    box = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
    sigma = max(1.0, (box[1] - box[0]) / 200.0)
    smooth = cv2.GaussianBlur(pixels.astype(np.float32), (0, 0), sigma)
    ys, xs, searched = _edge_points(smooth, breast, box)
    if len(ys) < max(4, MIN_SUPPORT * searched):
        return empty
    slope, intercept, inliers = _ransac_line(ys, xs, tolerance=0.02 * (box[3] - box[2]) + 1)
    # The edge must run down towards the chest wall and be supported by enough rows.
    if slope >= 0 or inliers.sum() < MIN_SUPPORT * searched:
        return empty
    yy, xx = np.mgrid[0 : breast.shape[0], 0 : breast.shape[1]]
    muscle = (xx < intercept + slope * yy) & breast
    share = muscle.sum() / max(int(breast.sum()), 1)
    if not MIN_MUSCLE_FRACTION <= share <= MAX_MUSCLE_FRACTION:
        return empty
    return muscle
