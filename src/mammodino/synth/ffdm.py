"""FFDM: Beer-Lambert projection of a phantom breast, detector blur and quantum noise.

The image is built from path lengths along vertical rays (parallel beam): fat, skin and muscle
lengths come from the outline at full resolution, the glandular length from a coarse 3-D
glandular volume summed over z and upsampled, lesions from their analytic path lengths. The
log signal is divided by the compressed thickness (thickness equalisation) before it is written.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np

from mammodino.synth.geometry import (
    breast_mask,
    chord_mm,
    edge_distance_mm,
    pectoral_fraction,
    pixel_grid,
)
from mammodino.synth.lesions import lesion_path_lengths
from mammodino.synth.phantom import (
    MU_FAT,
    MU_GLAND,
    MU_MUSCLE,
    MU_SKIN,
    BreastCase,
    glandular_volume,
)

FIELD_MM = (204.8, 160.0)  # detector field (rows, cols); 1024 x 800 pixels of 0.2 mm
COARSE_MM = 0.4  # lateral voxel of the glandular volume
COARSE_SLICES = 12
PHOTONS_PER_MM2 = 6.0e5  # unattenuated fluence reaching the detector (sets quantum noise)
# Mean attenuation along a ray (1/mm) shown at 1.0, a little above glandular tissue's 0.0802.
MU_MEAN_WHITE = 0.083
DETECTOR_BLUR_MM = 0.1


@dataclass(frozen=True)
class LesionBox:
    """A lesion's position in written pixels: boxes half-open, x = column, y = row."""

    kind: str
    malignant: bool
    x0: int
    y0: int
    x1: int
    y1: int
    centre_x: float
    centre_y: float
    slice_start: int | None = None  # DBT only: first slice touched (inclusive)
    slice_end: int | None = None  # DBT only: last slice touched + 1 (exclusive)
    centre_slice: int | None = None  # DBT only: slice holding the lesion centre


@dataclass
class Simulated:
    """Pixels as written (uint16; DBT [slices, rows, cols]) with their spacing and lesion boxes."""

    pixels: np.ndarray
    spacing_mm: float
    lesions: list[LesionBox]
    slice_spacing_mm: float | None = None
    thickness_mm: float = 0.0


def field_spacing_mm(shape: tuple[int, int], field_mm: tuple[float, float] = FIELD_MM) -> float:
    """Square pixel size that fits the detector field into `shape`."""
    return max(field_mm[0] / shape[0], field_mm[1] / shape[1])


def footprint_box(footprint: np.ndarray, row0: int, col0: int) -> tuple[int, int, int, int]:
    """Half-open (x0, y0, x1, y1) of the True pixels of a local window placed at (row0, col0)."""
    rows = np.flatnonzero(footprint.any(axis=1))
    cols = np.flatnonzero(footprint.any(axis=0))
    if len(rows) == 0:
        return col0, row0, col0, row0
    return (
        col0 + int(cols[0]),
        row0 + int(rows[0]),
        col0 + int(cols[-1]) + 1,
        row0 + int(rows[-1]) + 1,
    )


def mirror(sim: Simulated) -> Simulated:
    """The same image mirrored left-right (right breasts: chest wall on the right)."""
    width = sim.pixels.shape[-1]
    boxes = [
        dataclasses.replace(b, x0=width - b.x1, x1=width - b.x0, centre_x=width - b.centre_x)
        for b in sim.lesions
    ]
    pixels = np.ascontiguousarray(sim.pixels[..., ::-1])
    return Simulated(pixels, sim.spacing_mm, boxes, sim.slice_spacing_mm, sim.thickness_mm)


def to_pixels(values: np.ndarray, white: float, bits: int) -> np.ndarray:
    """Map attenuation-like values (0 = no tissue, `white` = brightest) to `bits`-bit integers."""
    top = (1 << bits) - 1
    scaled = (values * np.float32(0.95 / white) + np.float32(0.01)) * np.float32(top)
    return np.clip(np.rint(scaled), 0, top).astype(np.uint16)


def simulate_ffdm(
    case: BreastCase, shape: tuple[int, int], rng: np.random.Generator, bits: int = 12
) -> Simulated:
    """A For Presentation FFDM image of `case` (chest wall left for L, right for R)."""
    geom = case.geometry
    spacing = field_spacing_mm(shape, geom.field_mm)
    mask = breast_mask(geom, shape, spacing)
    dist = edge_distance_mm(mask, spacing, geom)
    radius = 0.5 * geom.thickness_mm
    total = chord_mm(dist, radius) * mask
    interior = chord_mm(dist - geom.skin_mm, radius - geom.skin_mm) * mask
    muscle = pectoral_fraction(geom, shape, spacing) * interior

    factor = max(1, int(round(COARSE_MM / spacing)))
    coarse_shape = (-(-shape[0] // factor), -(-shape[1] // factor))
    dist_coarse = cv2.resize(dist, coarse_shape[::-1], interpolation=cv2.INTER_AREA)
    x_coarse, _ = pixel_grid(coarse_shape, spacing * factor)
    gland, _ = glandular_volume(case, dist_coarse, x_coarse, spacing * factor, COARSE_SLICES, rng)
    gland_len = gland.sum(axis=0) * np.float32(geom.thickness_mm / COARSE_SLICES)
    gland_len = cv2.resize(gland_len, shape[::-1], interpolation=cv2.INTER_CUBIC)
    gland_len = np.clip(gland_len, 0.0, None) * (1.0 - muscle / np.maximum(interior, 1e-3))
    gland_len = np.minimum(gland_len, interior - muscle)

    mu_t = (
        MU_FAT * interior
        + (MU_GLAND - MU_FAT) * gland_len
        + (MU_MUSCLE - MU_FAT) * muscle
        + MU_SKIN * (total - interior)
    ).astype(np.float32)
    boxes = []
    if case.lesion is not None:
        boxes.append(_add_lesion(case, mu_t, gland_len, interior, spacing))

    mu_t = cv2.GaussianBlur(mu_t, (0, 0), DETECTOR_BLUR_MM / spacing + 0.3)
    photons = PHOTONS_PER_MM2 * spacing**2 * rng.uniform(0.8, 1.25)
    sigma = 1.0 / np.sqrt(photons * np.exp(-mu_t))
    log_signal = mu_t + sigma * rng.standard_normal(shape, dtype=np.float32)
    # Thickness equalisation, as For Presentation processing does (and as the DBT slices show):
    # the log signal per mm of compressed breast, so a breast's brightness says how glandular it
    # is rather than how thick it was compressed; the periphery still darkens as the chord thins.
    mean_mu = log_signal / np.float32(geom.thickness_mm)
    gain = rng.uniform(0.95, 1.05)  # per-image processing differences
    pixels = to_pixels(mean_mu * np.float32(gain), MU_MEAN_WHITE, bits)
    sim = Simulated(pixels, spacing, boxes, thickness_mm=geom.thickness_mm)
    return mirror(sim) if case.laterality == "R" else sim


def _add_lesion(
    case: BreastCase, mu_t: np.ndarray, gland_len: np.ndarray, interior: np.ndarray, spacing: float
) -> LesionBox:
    """Add the lesion's attenuation to `mu_t` in place and return its box."""
    lesion = case.lesion
    cx, cy, _ = lesion.centre_mm
    ex, ey, _ = lesion.extent_mm
    r0 = max(0, int((cy - ey) / spacing))
    r1 = min(mu_t.shape[0], int(np.ceil((cy + ey) / spacing)) + 1)
    c0 = max(0, int((cx - ex) / spacing))
    c1 = min(mu_t.shape[1], int(np.ceil((cx + ex) / spacing)) + 1)
    x, y = pixel_grid((r1 - r0, c1 - c0), spacing)
    length, calc = lesion_path_lengths(
        lesion, x + np.float32(c0 * spacing), y + np.float32(r0 * spacing)
    )
    window = (slice(r0, r1), slice(c0, c1))
    length = np.minimum(length, interior[window])
    # The mass displaces the local mix of fat and gland seen along the ray through its centre.
    row, col = int(cy / spacing), int(cx / spacing)
    local_gland = float(gland_len[row, col] / max(float(interior[row, col]), 1e-3))
    mu_background = MU_FAT + (MU_GLAND - MU_FAT) * local_gland
    mu_t[window] += length * np.float32(lesion.mu - mu_background) + calc
    if lesion.calcifications is not None:
        footprint = calc > 0.02 * float(calc.max())
    else:
        footprint = length > 0.3
    x0, y0, x1, y1 = footprint_box(footprint, r0, c0)
    return LesionBox(lesion.kind, lesion.malignant, x0, y0, x1, y1, cx / spacing, cy / spacing)
