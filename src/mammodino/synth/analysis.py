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


def interior_rois(
    image: np.ndarray, tissue: np.ndarray, size: int, margin_px: int
) -> list[np.ndarray]:
    """Non-overlapping `size` x `size` windows lying wholly `margin_px` inside the tissue mask."""
    import cv2

    inner = cv2.erode(tissue.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=margin_px) > 0
    rois = []
    for r in range(0, image.shape[0] - size + 1, size):
        for c in range(0, image.shape[1] - size + 1, size):
            if inner[r : r + size, c : c + size].all():
                rois.append(image[r : r + size, c : c + size].astype(np.float64))
    return rois


def radial_power_spectrum(
    rois: list[np.ndarray], spacing_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """Mean radial power spectrum of square ROIs (plane removed, Hann window): (f cycles/mm, power)."""
    size = rois[0].shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    design = np.column_stack([np.ones(size * size), yy.ravel(), xx.ravel()])
    window = np.outer(np.hanning(size), np.hanning(size))
    power = np.zeros((size, size))
    for roi in rois:
        coef, *_ = np.linalg.lstsq(design, roi.ravel(), rcond=None)
        detrended = roi - (design @ coef).reshape(size, size)
        power += np.abs(np.fft.fft2(detrended * window)) ** 2
    power /= len(rois)
    f = np.fft.fftfreq(size, spacing_mm)
    radius = np.hypot(f[:, None], f[None, :])
    bins = np.arange(1, size // 2) / (size * spacing_mm)
    index = np.digitize(radius.ravel(), bins)
    sums = np.bincount(index, power.ravel(), minlength=len(bins) + 1)
    counts = np.bincount(index, minlength=len(bins) + 1)
    centres = (bins[:-1] + bins[1:]) / 2
    return centres, sums[1 : len(bins)] / np.maximum(counts[1 : len(bins)], 1)


def power_law_beta(freqs: np.ndarray, power: np.ndarray, band: tuple[float, float]) -> float:
    """beta of power ~ 1/f^beta: minus the slope of log power against log frequency in `band`."""
    keep = (freqs >= band[0]) & (freqs <= band[1]) & (power > 0)
    slope = np.polyfit(np.log(freqs[keep]), np.log(power[keep]), 1)[0]
    return float(-slope)


def breast_histogram(image: np.ndarray, bits: int, bins: int = 16) -> np.ndarray:
    """Normalised histogram of breast pixel values (above 5% of full scale) on [0, 1]."""
    values = image.astype(np.float32) / ((1 << bits) - 1)
    tissue = values[values > 0.05]
    hist, _ = np.histogram(tissue, bins=bins, range=(0.0, 1.0))
    return hist / max(1, hist.sum())
