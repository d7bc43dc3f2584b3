"""Measurements on phantom output: lesion contrast per DBT slice, texture power-spectrum slope,
breast-intensity histograms. Tests and benchmarks use them to check the phantom's realism."""

from __future__ import annotations

import numpy as np


def lesion_contrast_by_slice(volume: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Contrast of a lesion box in every slice of `volume` [slices, rows, cols].

    Contrast = mean of the brightest quarter of the box pixels minus the mean of a ring around
    the box (as wide as half the box), so both masses and sparse calcifications register.
    """
    x0, y0, x1, y1 = box
    margin = max(2, (max(x1 - x0, y1 - y0) + 1) // 2)
    rows, cols = volume.shape[1:]
    r0, r1 = max(0, y0 - margin), min(rows, y1 + margin)
    c0, c1 = max(0, x0 - margin), min(cols, x1 + margin)
    window = volume[:, r0:r1, c0:c1].astype(np.float32)
    inside = np.zeros(window.shape[1:], dtype=bool)
    inside[y0 - r0 : y1 - r0, x0 - c0 : x1 - c0] = True
    box_pixels = window[:, inside]
    top = np.sort(box_pixels, axis=1)[:, -max(1, box_pixels.shape[1] // 4) :]
    ring = window[:, ~inside]
    return top.mean(axis=1) - ring.mean(axis=1)
