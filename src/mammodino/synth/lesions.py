"""Lesions at known 3-D positions: circumscribed masses, spiculated masses, calcification clusters.

A lesion is drawn once (in mm, canonical frame, see geometry.py) and rendered either as path
lengths along vertical rays (FFDM) or as voxel occupancy (DBT), so both modalities show the same
object. Attenuation values (1/mm, about 20 keV): masses somewhat above Johns and Yaffe's 1987
carcinoma value (see MU_MASS_*), calcifications about that of hydroxyapatite (~3/mm) a little
diluted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LESION_TYPES = ("circumscribed_mass", "spiculated_mass", "calcification_cluster")
# 10-15% above glandular tissue (real carcinoma: ~5%) so that masses stay findable in dense breasts.
MU_MASS_BENIGN = 0.088
MU_MASS_MALIGNANT = 0.092
MU_CALCIFICATION = 2.6


@dataclass(frozen=True)
class Lesion:
    """One lesion; `centre_mm` is (x, y, z) in the canonical frame."""

    kind: str
    malignant: bool
    centre_mm: tuple[float, float, float]
    radii_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)  # mass semi-axes (x', y', z)
    angle: float = 0.0  # in-plane rotation of the mass
    lobes: tuple[tuple[float, float], ...] = ()  # (amplitude, phase) of border harmonics 2, 3, ...
    spicules: np.ndarray | None = None  # [n, 5]: unit direction (3), length mm, base radius mm
    calcifications: np.ndarray | None = None  # [n, 4]: offset from centre (3) mm, radius mm

    @property
    def mu(self) -> float:
        """Attenuation (1/mm) of the mass tissue."""
        return MU_MASS_MALIGNANT if self.malignant else MU_MASS_BENIGN

    @property
    def extent_mm(self) -> tuple[float, float, float]:
        """Half size of a box around the lesion along x, y, z."""
        reach = max(self.radii_mm) * 1.4
        if self.spicules is not None and len(self.spicules):
            reach = max(reach, float(self.spicules[:, 3].max()) + 1.0)
        if self.calcifications is not None and len(self.calcifications):
            offsets = np.abs(self.calcifications[:, :3]).max(axis=0) + 1.0
            return (float(offsets[0]), float(offsets[1]), float(offsets[2]))
        return (reach, reach, reach)


def draw_lesion(
    kind: str, centre_mm: tuple[float, float, float], rng: np.random.Generator
) -> Lesion:
    """A random lesion of `kind` (one of LESION_TYPES) centred at `centre_mm`."""
    if kind == "circumscribed_mass":
        r = rng.uniform(3.0, 7.5)
        radii = (r * rng.uniform(1.0, 1.5), r, r * rng.uniform(0.8, 1.1))
        lobes = tuple((rng.uniform(0.0, 0.04), rng.uniform(0, 2 * np.pi)) for _ in range(2))
        return Lesion(kind, False, centre_mm, radii, rng.uniform(0, np.pi), lobes)
    if kind == "spiculated_mass":
        r = rng.uniform(3.0, 6.5)
        radii = (r * rng.uniform(0.9, 1.2), r, r * rng.uniform(0.8, 1.0))
        lobes = tuple((rng.uniform(0.05, 0.15), rng.uniform(0, 2 * np.pi)) for _ in range(4))
        n = int(rng.integers(10, 22))
        directions = rng.standard_normal((n, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        lengths = r * rng.uniform(1.6, 3.2, n)
        widths = rng.uniform(0.25, 0.6, n)
        spicules = np.column_stack([directions, lengths, widths]).astype(np.float32)
        return Lesion(kind, True, centre_mm, radii, rng.uniform(0, np.pi), lobes, spicules)
    if kind == "calcification_cluster":
        malignant = bool(rng.random() < 0.5)
        # Malignant clusters: more, smaller, more varied specks (fine pleomorphic); benign: fewer,
        # larger, rounder ones.
        n = int(rng.integers(10, 26)) if malignant else int(rng.integers(4, 11))
        sizes = rng.uniform(0.12, 0.25, n) if malignant else rng.uniform(0.18, 0.35, n)
        spread = rng.uniform(2.0, 5.0)
        offsets = rng.standard_normal((n, 3)) * spread / 2.0
        offsets[:, 2] *= 0.6
        calcs = np.column_stack([offsets, sizes]).astype(np.float32)
        return Lesion(kind, malignant, centre_mm, (spread,) * 3, calcifications=calcs)
    raise ValueError(f"unknown lesion type {kind!r}; use one of {', '.join(LESION_TYPES)}")


def _border_scale(lesion: Lesion, xr: np.ndarray, yr: np.ndarray) -> np.ndarray:
    """Radial scale of an irregular border at in-plane angle atan2(yr, xr)."""
    angle = np.arctan2(yr, xr)
    scale = np.ones_like(angle)
    for k, (amp, phase) in enumerate(lesion.lobes, start=2):
        scale += amp * np.cos(k * angle + phase)
    return scale


def _rotated(lesion: Lesion, dx: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(lesion.angle), np.sin(lesion.angle)
    return c * dx + s * dy, -s * dx + c * dy


def lesion_path_lengths(
    lesion: Lesion, x_mm: np.ndarray, y_mm: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Along vertical rays at (x_mm, y_mm): mass path length (mm) and calcification mu*t."""
    dx = x_mm - np.float32(lesion.centre_mm[0])
    dy = y_mm - np.float32(lesion.centre_mm[1])
    shape = np.broadcast_shapes(dx.shape, dy.shape)
    length = np.zeros(shape, dtype=np.float32)
    calc = np.zeros(shape, dtype=np.float32)
    if lesion.calcifications is not None:
        for ox, oy, _, r in lesion.calcifications:
            volume = 4.0 / 3.0 * np.pi * r**3
            sigma = max(0.7 * r, 0.05)
            g = np.exp(-((dx - ox) ** 2 + (dy - oy) ** 2) / (2 * sigma**2))
            calc += (MU_CALCIFICATION * volume / (2 * np.pi * sigma**2)) * g
        return length, calc
    a, b, c = lesion.radii_mm
    xr, yr = _rotated(lesion, dx, dy)
    scale = _border_scale(lesion, xr, yr)
    rho2 = (xr / (a * scale)) ** 2 + (yr / (b * scale)) ** 2
    length += 2.0 * c * np.sqrt(np.clip(1.0 - rho2, 0.0, None)) * scale
    if lesion.spicules is not None:
        for ux, uy, uz, span, width in lesion.spicules:
            sx, sy = ux * span, uy * span
            seg2 = max(sx * sx + sy * sy, 1e-6)
            t = np.clip((dx * sx + dy * sy) / seg2, 0.0, 1.0)
            rho2 = (dx - t * sx) ** 2 + (dy - t * sy) ** 2
            w = width * (1.0 - t)
            # A tilted spicule is crossed obliquely: the vertical path through it is longer.
            tilt = 1.0 / max(np.sqrt(1.0 - uz * uz), 0.3)
            spike = 2.0 * np.sqrt(np.clip(w * w - rho2, 0.0, None)) * tilt
            length = np.maximum(length, spike)
    return length, calc


def lesion_occupancy(
    lesion: Lesion,
    x_mm: np.ndarray,
    y_mm: np.ndarray,
    z_mm: np.ndarray,
    lateral_mm: float,
    slice_mm: float,
) -> tuple[np.ndarray, np.ndarray]:
    """On a voxel grid: fraction of each voxel filled by mass tissue, and calcification mu (1/mm)."""
    dx = x_mm - np.float32(lesion.centre_mm[0])
    dy = y_mm - np.float32(lesion.centre_mm[1])
    dz = z_mm - np.float32(lesion.centre_mm[2])
    shape = np.broadcast_shapes(dx.shape, dy.shape, dz.shape)
    occupancy = np.zeros(shape, dtype=np.float32)
    calc = np.zeros(shape, dtype=np.float32)
    if lesion.calcifications is not None:
        for ox, oy, oz, r in lesion.calcifications:
            volume = 4.0 / 3.0 * np.pi * r**3
            # Specks smaller than a voxel are spread over about one voxel, keeping their mu*volume.
            s_xy = max(0.7 * r, 0.5 * lateral_mm)
            s_z = max(0.7 * r, 0.5 * slice_mm)
            g = np.exp(
                -((dx - ox) ** 2 + (dy - oy) ** 2) / (2 * s_xy**2) - (dz - oz) ** 2 / (2 * s_z**2)
            )
            calc += (MU_CALCIFICATION * volume / ((2 * np.pi) ** 1.5 * s_xy**2 * s_z)) * g
        return occupancy, calc
    a, b, c = lesion.radii_mm
    xr, yr = _rotated(lesion, dx, dy)
    scale = _border_scale(lesion, xr, yr)
    q = np.sqrt((xr / a) ** 2 + (yr / b) ** 2 + (dz / c) ** 2) / scale
    # A soft edge one voxel wide keeps partial-volume voxels partial (no staircase in DBT).
    occupancy = np.clip(0.5 + (1.0 - q) * min(a, b, c) / lateral_mm, 0.0, 1.0).astype(np.float32)
    if lesion.spicules is not None:
        for ux, uy, uz, span, width in lesion.spicules:
            sx, sy, sz = ux * span, uy * span, uz * span
            t = np.clip((dx * sx + dy * sy + dz * sz) / (span * span), 0.0, 1.0)
            dist = np.sqrt((dx - t * sx) ** 2 + (dy - t * sy) ** 2 + (dz - t * sz) ** 2)
            spike = np.clip(0.5 + (width * (1.0 - t) - dist) / lateral_mm, 0.0, 1.0)
            occupancy = np.maximum(occupancy, spike)
    return occupancy, calc
