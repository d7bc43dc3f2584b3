"""Value-of-interest transforms as DICOM PS3.3 C.11.2.1.2 defines them, output in [0, 1].

Each function maps modality values (after rescale slope/intercept) to float32 in [0, 1] with
ymin = 0 and ymax = 1, so no precision is lost to an 8-bit display range.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


def window_linear(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """LINEAR window (C.11.2.1.2.1): the half-pixel offsets of the standard included."""
    width = max(float(width), 1.0)  # the standard requires width >= 1 for LINEAR
    low = center - 0.5 - (width - 1.0) / 2.0
    high = center - 0.5 + (width - 1.0) / 2.0
    y = (x - (center - 0.5)) / max(width - 1.0, 1e-12) + 0.5
    y = np.where(x <= low, 0.0, np.where(x > high, 1.0, y))
    return y.astype(np.float32)


def window_linear_exact(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """LINEAR_EXACT window (C.11.2.1.3.2): y = (x - c) / w + 1/2, clipped."""
    width = max(float(width), 1e-12)  # the standard requires width > 0
    y = (x - center) / width + 0.5
    y = np.where(x <= center - width / 2.0, 0.0, np.where(x > center + width / 2.0, 1.0, y))
    return y.astype(np.float32)


def window_sigmoid(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """SIGMOID window (C.11.2.1.3.1): y = 1 / (1 + exp(-4 (x - c) / w))."""
    width = max(float(width), 1e-12)
    return (1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))).astype(np.float32)


def apply_window(
    x: np.ndarray, center: float, width: float, function: str = "LINEAR"
) -> np.ndarray:
    """Apply the named VOI LUT function (LINEAR, LINEAR_EXACT or SIGMOID)."""
    name = (function or "LINEAR").strip().upper()
    if name == "LINEAR":
        return window_linear(x, center, width)
    if name == "LINEAR_EXACT":
        return window_linear_exact(x, center, width)
    if name == "SIGMOID":
        return window_sigmoid(x, center, width)
    raise ValueError(f"unknown VOI LUT function {function!r}; known: {VOI_FUNCTIONS}")


def apply_voi_lut(x: np.ndarray, descriptor: Sequence[int], lut: Sequence[int]) -> np.ndarray:
    """Apply a VOI LUT Sequence item (C.11.2.1.1): values below/above the table are clamped.

    `descriptor` is (entries, first mapped value, bits per entry); 0 entries means 65536.
    The output is divided by 2**bits - 1, the largest entry the table can hold.
    """
    entries, first, bits = (int(v) for v in descriptor)
    table = np.asarray(lut, dtype=np.float64)
    if entries == 0:
        entries = 65536
    table = table[:entries]
    index = np.clip(np.rint(x - first), 0, len(table) - 1).astype(np.int64)
    # A table whose entries exceed its declared bit depth (seen in practice) is scaled by its max.
    top = max(float(2**bits - 1), float(table.max()), 1.0)
    return np.clip(table[index] / top, 0.0, 1.0).astype(np.float32)
