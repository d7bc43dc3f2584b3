"""Shape of a compressed breast: outline, thickness profile, skin and pectoral muscle.

Everything is in millimetres in a canonical frame: x runs from the chest wall (x = 0, the left
image edge) toward the nipple, y runs down the image rows, z up from the breast support (z = 0)
to the compression paddle (z = thickness). Right breasts are mirrored only when written out.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

VIEWS = ("CC", "MLO")


@dataclass(frozen=True)
class BreastGeometry:
    """Parameters of one compressed breast in one view (all lengths in mm)."""

    view: str
    field_mm: tuple[float, float]  # (height, width) of the detector field
    depth_mm: float  # chest wall to nipple
    half_height_mm: float  # half extent along y at the chest wall
    centre_y_mm: float
    thickness_mm: float
    skin_mm: float
    harmonics: tuple[tuple[float, float], ...]  # (amplitude, phase) of outline harmonics 2, 3, ...
    pectoral_top_mm: float = 0.0  # MLO: muscle width along the top edge (0: no muscle)
    pectoral_left_mm: float = 0.0  # MLO: muscle height along the chest wall
    pectoral_bulge: float = 0.0  # MLO: convexity of the muscle edge


def draw_geometry(
    view: str, field_mm: tuple[float, float], rng: np.random.Generator
) -> BreastGeometry:
    """A random but plausible breast outline for `view` ('CC' or 'MLO') on a detector field."""
    height, width = field_mm
    depth = width * rng.uniform(0.55, 0.85)
    thickness = rng.uniform(38.0, 62.0) + (5.0 if view == "MLO" else 0.0)
    harmonics = tuple((rng.uniform(0.0, 0.035), rng.uniform(0, 2 * np.pi)) for _ in range(4))
    if view == "CC":
        half = height * rng.uniform(0.30, 0.44)
        centre = height * rng.uniform(0.47, 0.53)
        return BreastGeometry(
            view, field_mm, depth, half, centre, thickness, rng.uniform(1.2, 2.0), harmonics
        )
    half = height * rng.uniform(0.32, 0.42)
    centre = height * rng.uniform(0.52, 0.60)
    return BreastGeometry(
        view,
        field_mm,
        depth,
        half,
        centre,
        thickness,
        rng.uniform(1.2, 2.0),
        harmonics,
        pectoral_top_mm=width * rng.uniform(0.22, 0.40),
        pectoral_left_mm=height * rng.uniform(0.40, 0.65),
        pectoral_bulge=rng.uniform(0.0, 0.12),
    )


def pixel_grid(shape: tuple[int, int], spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """x (columns) and y (rows) of pixel centres in mm, as broadcastable float32 arrays."""
    y = ((np.arange(shape[0], dtype=np.float32) + 0.5) * spacing_mm)[:, None]
    x = ((np.arange(shape[1], dtype=np.float32) + 0.5) * spacing_mm)[None, :]
    return x, y


def breast_mask(geom: BreastGeometry, shape: tuple[int, int], spacing_mm: float) -> np.ndarray:
    """Bool image of the breast (chest wall on the left)."""
    x, y = pixel_grid(shape, spacing_mm)
    dy = y - geom.centre_y_mm
    angle = np.arctan2(dy, x)
    radius = np.sqrt((x / geom.depth_mm) ** 2 + (dy / geom.half_height_mm) ** 2)
    bound = np.ones_like(radius)
    for k, (amp, phase) in enumerate(geom.harmonics, start=2):
        bound += amp * np.cos(k * angle + phase)
    mask = radius < bound
    if geom.view == "MLO":
        # The axillary tail: above the nipple the upper border runs straight from the top edge
        # (beyond the pectoral muscle) down to the nipple, the usual MLO teardrop.
        top = geom.pectoral_top_mm * 1.3
        nipple = geom.depth_mm * 0.92
        v = y / geom.centre_y_mm
        mask |= (v < 1.0) & (x < top + (nipple - top) * v)
    return mask


def edge_distance_mm(mask: np.ndarray, spacing_mm: float, geom: BreastGeometry) -> np.ndarray:
    """Distance (mm) of each breast pixel to the skin line; the chest wall is not an edge."""
    pad = int(np.ceil(geom.thickness_mm / spacing_mm)) + 2
    # Replicating the chest-wall column (and the top row in MLO, where the axilla continues)
    # makes the body side count as tissue, so only the skin line sets the distance.
    padded = cv2.copyMakeBorder(mask.astype(np.uint8), pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    # SciPy's exact transform, not OpenCV's DIST_MASK_PRECISE: OpenCV's float rounding depends
    # on its thread partitioning (it changed with CPU affinity, from run to run), and a phantom
    # must not depend on the machine. Same values as OpenCV's on two threads.
    dist = ndimage.distance_transform_edt(padded).astype(np.float32)
    return dist[pad:-pad, pad:-pad] * np.float32(spacing_mm)


def chord_mm(distance_mm: np.ndarray, radius_mm: float) -> np.ndarray:
    """Path length through a half-cylinder edge of `radius_mm` at `distance_mm` from its rim."""
    d = np.clip(distance_mm, 0.0, radius_mm)
    return (2.0 * np.sqrt(d * (2.0 * radius_mm - d))).astype(np.float32)


def pectoral_fraction(
    geom: BreastGeometry, shape: tuple[int, int], spacing_mm: float
) -> np.ndarray:
    """Share of the breast thickness taken by pectoral muscle (0 outside, 1 deep inside)."""
    if geom.pectoral_top_mm <= 0:
        return np.zeros(shape, dtype=np.float32)
    x, y = pixel_grid(shape, spacing_mm)
    u = x / geom.pectoral_top_mm
    v = y / geom.pectoral_left_mm
    # s < 1 inside the (slightly convex) triangle; the muscle thickens over a few mm past its edge.
    s = u + v - geom.pectoral_bulge * np.sqrt(np.clip(u * v, 0, None)) * 2.0
    ramp_mm = 4.0
    scale = ramp_mm / min(geom.pectoral_top_mm, geom.pectoral_left_mm)
    return np.clip((1.0 - s) / scale, 0.0, 1.0).astype(np.float32)
