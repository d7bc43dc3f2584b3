"""DBT: projections over an arc and filtered shift-and-add reconstruction into ~1 mm slices.

Geometry is a parallel-beam approximation of a tube sweeping along the chest wall (image rows):
at angle theta a voxel at height z lands z*tan(theta) further along y. Shifting is a phase ramp
in the Fourier domain along y, so projecting all views is one batched matrix product per
frequency, and so is back-projection (its adjoint). The filter ramps up high frequencies along
the sweep like a DBT FBP kernel, with a Hann roll-off against noise. Out-of-plane objects are
therefore blurred into the neighbouring slices exactly as the limited arc dictates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft
from threadpoolctl import threadpool_limits

from mammodino.synth.ffdm import (
    LesionBox,
    Simulated,
    field_spacing_mm,
    footprint_box,
    mirror,
    to_pixels,
)
from mammodino.synth.geometry import (
    breast_mask,
    chord_mm,
    edge_distance_mm,
    pectoral_fraction,
    pixel_grid,
)
from mammodino.synth.lesions import lesion_occupancy
from mammodino.synth.phantom import (
    MU_FAT,
    MU_GLAND,
    MU_MUSCLE,
    MU_SKIN,
    BreastCase,
    glandular_volume,
)

PHOTONS_PER_MM2 = 9.0e5  # total over all views, unattenuated at the detector
MU_WHITE = 0.115  # reconstructed mean attenuation (1/mm) shown at 1.0


@dataclass(frozen=True)
class DbtSettings:
    """Acquisition and reconstruction settings."""

    arc_deg: float = 15.0  # total sweep: -7.5 to +7.5 degrees
    n_views: int = 15
    low_gain: float = 0.2  # filter gain at zero frequency relative to detail (1 = plain SAA)
    cutoff_per_mm: float = 0.15  # frequency (cycles/mm) above which the filter passes fully


def phantom_volume(
    case: BreastCase, shape: tuple[int, int, int], rng: np.random.Generator
) -> tuple[np.ndarray, float, list[LesionBox]]:
    """Attenuation volume (1/mm) [slices, rows, cols], lateral spacing and lesion boxes (canonical)."""
    n_slices, rows, cols = shape
    geom = case.geometry
    spacing = field_spacing_mm((rows, cols), geom.field_mm)
    mask = breast_mask(geom, (rows, cols), spacing)
    dist = edge_distance_mm(mask, spacing, geom) * mask
    x, _ = pixel_grid((rows, cols), spacing)
    gland, interior = glandular_volume(case, dist, x, spacing, n_slices, rng)
    dz = geom.thickness_mm / n_slices
    z = ((np.arange(n_slices, dtype=np.float32) + 0.5) * dz)[:, None, None]
    breast = (
        np.abs(z - 0.5 * geom.thickness_mm) < 0.5 * chord_mm(dist, 0.5 * geom.thickness_mm)[None]
    )
    muscle = pectoral_fraction(geom, (rows, cols), spacing)[None] * interior
    volume = np.where(breast, np.float32(MU_SKIN), np.float32(0.0))
    volume[interior] = MU_FAT
    volume += (MU_GLAND - MU_FAT) * gland * (1.0 - muscle) + (MU_MUSCLE - MU_FAT) * muscle
    boxes = []
    if case.lesion is not None:
        boxes.append(_insert_lesion(case, volume, breast, spacing, dz))
    return volume, spacing, boxes


def _insert_lesion(
    case: BreastCase, volume: np.ndarray, breast: np.ndarray, spacing: float, dz: float
) -> LesionBox:
    """Replace tissue by the lesion in place (masses) or add it (calcifications); return its box."""
    lesion = case.lesion
    cx, cy, cz = lesion.centre_mm
    ex, ey, ez = lesion.extent_mm
    n, rows, cols = volume.shape

    def bounds(centre: float, extent: float, step: float, size: int) -> tuple[int, int]:
        return max(0, int((centre - extent) / step)), min(
            size, int(np.ceil((centre + extent) / step)) + 1
        )

    r0, r1 = bounds(cy, ey, spacing, rows)
    c0, c1 = bounds(cx, ex, spacing, cols)
    s0, s1 = bounds(cz, ez, dz, n)
    x = ((np.arange(c0, c1, dtype=np.float32) + 0.5) * spacing)[None, None, :]
    y = ((np.arange(r0, r1, dtype=np.float32) + 0.5) * spacing)[None, :, None]
    z = ((np.arange(s0, s1, dtype=np.float32) + 0.5) * dz)[:, None, None]
    occupancy, calc = lesion_occupancy(lesion, x, y, z, spacing, dz)
    window = (slice(s0, s1), slice(r0, r1), slice(c0, c1))
    occupancy *= breast[window]
    local = volume[window]
    volume[window] = local * (1.0 - occupancy) + occupancy * np.float32(lesion.mu) + calc
    if lesion.calcifications is not None:
        present = calc > 0.05 * float(calc.max())
    else:
        present = occupancy > 0.5
    x0, y0, x1, y1 = footprint_box(present.any(axis=0), r0, c0)
    touched = np.flatnonzero(present.any(axis=(1, 2)))
    first, last = (s0 + int(touched[0]), s0 + int(touched[-1]) + 1) if len(touched) else (s0, s0)
    centre_slice = min(n - 1, int(cz / dz))
    return LesionBox(
        lesion.kind,
        lesion.malignant,
        x0,
        y0,
        x1,
        y1,
        cx / spacing,
        cy / spacing,
        first,
        last,
        centre_slice,
    )


def _shift_phases(n_rows: int, shifts_px: np.ndarray) -> np.ndarray:
    """exp(-2 pi i f s) for rfft frequencies f along rows and shifts s [views, slices]: [F, V, S]."""
    freqs = fft.rfftfreq(n_rows).astype(np.float32)
    return np.exp(-2j * np.pi * freqs[:, None, None] * shifts_px[None].astype(np.float32)).astype(
        np.complex64
    )


def _reconstruction_filter(n_rows: int, spacing_mm: float, settings: DbtSettings) -> np.ndarray:
    """Gain per rfft frequency along the sweep: 1 at zero frequency, 1/`low_gain` above about
    `cutoff_per_mm` (detail, which limited-angle data localise in depth, is lifted over the
    large-scale content that shows in every slice), rolled off by a Hann window against noise."""
    f = fft.rfftfreq(n_rows, spacing_mm)
    nyquist = 0.5 / spacing_mm
    high_pass = settings.low_gain + (1.0 - settings.low_gain) * (
        1.0 - np.exp(-((f / settings.cutoff_per_mm) ** 2))
    )
    return (high_pass / settings.low_gain * 0.5 * (1.0 + np.cos(np.pi * f / nyquist))).astype(
        np.float32
    )


def simulate_dbt(
    case: BreastCase,
    shape: tuple[int, int, int],
    rng: np.random.Generator,
    bits: int = 12,
    settings: DbtSettings = DbtSettings(),
) -> Simulated:
    """A reconstructed DBT volume [slices, rows, cols] of `case` with its lesion boxes and slices."""
    # The batched products are many small matrices: BLAS threads only fight (10-50x slower on a
    # busy machine), so one thread it is; parallelism comes from processes (dataset.generate).
    with threadpool_limits(1):
        return _simulate_dbt(case, shape, rng, bits, settings)


def _simulate_dbt(
    case: BreastCase,
    shape: tuple[int, int, int],
    rng: np.random.Generator,
    bits: int,
    settings: DbtSettings,
) -> Simulated:
    volume, spacing, boxes = phantom_volume(case, shape, rng)
    n_slices, rows, cols = volume.shape
    thickness = case.geometry.thickness_mm
    dz = thickness / n_slices
    angles = np.deg2rad(np.linspace(-settings.arc_deg / 2, settings.arc_deg / 2, settings.n_views))
    z = (np.arange(n_slices) + 0.5) * dz
    shifts = np.tan(angles)[:, None] * z[None, :] / spacing  # [views, slices] in pixels
    pad = int(np.ceil(np.abs(shifts).max())) + 4  # keeps the circular shift from wrapping tissue
    n_rows = rows + 2 * pad
    phases = _shift_phases(n_rows, shifts)  # [F, V, S]

    # Rows first and contiguous, so every batched product below runs on contiguous matrices.
    padded = np.pad(volume.transpose(1, 0, 2), ((pad, pad), (0, 0), (0, 0)))  # [Y, S, X]
    spectrum = fft.rfft(padded, axis=0, workers=1)  # [F, S, X]
    # Projections: P_v(y) = sum_z V(y - shift_vz, z) dz / cos(theta_v).
    projected = np.matmul(phases, spectrum)  # [F, V, X]
    path = np.float32(dz) / np.cos(angles).astype(np.float32)[None, :, None]
    line_integrals = fft.irfft(projected * path, n=n_rows, axis=0, workers=1)  # [Y, V, X]

    photons = PHOTONS_PER_MM2 * spacing**2 / settings.n_views * rng.uniform(0.8, 1.25)
    sigma = 1.0 / np.sqrt(photons * np.exp(-np.clip(line_integrals, 0.0, None)))
    measured = line_integrals + sigma * rng.standard_normal(line_integrals.shape, dtype=np.float32)

    # Filtered shift-and-add: shift each view back by its slice's offset and average.
    kernel = _reconstruction_filter(n_rows, spacing, settings)[:, None, None]
    filtered = (fft.rfft(measured, axis=0, workers=1) * kernel).astype(np.complex64)
    back_phases = np.ascontiguousarray(np.conj(phases).transpose(0, 2, 1))  # [F, S, V]
    back = np.matmul(back_phases, filtered)  # [F, S, X]
    slices = fft.irfft(back, n=n_rows, axis=0, workers=1)[pad : pad + rows]  # [Y, S, X]
    mean_mu = slices.transpose(1, 0, 2) / np.float32(settings.n_views * thickness)
    sim = Simulated(to_pixels(mean_mu, MU_WHITE, bits), spacing, boxes, dz, thickness)
    return mirror(sim) if case.laterality == "R" else sim
