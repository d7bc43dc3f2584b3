"""One synthetic breast: density class, glandular fraction, tissue volume and lesion.

Fibroglandular tissue is a 3-D power-law Gaussian field (beta = 3, the figure measured on real
mammograms by Burgess et al. 2001) plus a smooth envelope that keeps a subcutaneous and a
retromammary fat layer, thresholded so that a set share of the breast interior is glandular.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from mammodino.synth.geometry import (
    BreastGeometry,
    breast_mask,
    chord_mm,
    draw_geometry,
    edge_distance_mm,
    pectoral_fraction,
)
from mammodino.synth.lesions import LESION_TYPES, Lesion, draw_lesion
from mammodino.synth.noise import power_law_noise

# Attenuation at about 20 keV (1/mm), Johns and Yaffe 1987; skin and muscle taken as glandular-like.
MU_FAT = 0.0456
MU_GLAND = 0.0802
MU_SKIN = 0.080
MU_MUSCLE = 0.081
DENSITY_CLASSES = ("a", "b", "c", "d")
# Volumetric glandular fraction of the breast interior per ACR class (adjacent ranges: the class
# follows from the fraction, but thickness, exposure and texture blur it in the image).
GLAND_FRACTION = {"a": (0.03, 0.14), "b": (0.14, 0.30), "c": (0.30, 0.50), "d": (0.50, 0.75)}
TEXTURE_BETA = 3.0
TEXTURE_WIDTH = 0.12  # width of the soft threshold, in noise standard deviations (partial volume)


@dataclass(frozen=True)
class BreastTraits:
    """What the views of one breast share: density, glandular fraction and lesion kind/shape."""

    density: str
    gland_fraction: float
    lesion: Lesion | None  # shape only; each view places it


@dataclass(frozen=True)
class BreastCase:
    """One breast in one view, ready to be imaged."""

    traits: BreastTraits
    laterality: str
    geometry: BreastGeometry
    lesion: Lesion | None  # placed in this view's frame

    @property
    def view(self) -> str:
        """'CC' or 'MLO'."""
        return self.geometry.view


def draw_traits(
    patient_rng: np.random.Generator, breast_rng: np.random.Generator, lesion_fraction: float
) -> BreastTraits:
    """Density class (uniform over a-d) and glandular fraction of the patient (both breasts
    alike, within a few percent), and an optional lesion shape of this breast."""
    density = DENSITY_CLASSES[int(patient_rng.integers(0, 4))]
    low, high = GLAND_FRACTION[density]
    gland_fraction = float(
        np.clip(patient_rng.uniform(low, high) * breast_rng.uniform(0.93, 1.07), 0.02, 0.8)
    )
    lesion = None
    if breast_rng.random() < lesion_fraction:
        kind = LESION_TYPES[int(breast_rng.integers(0, len(LESION_TYPES)))]
        lesion = draw_lesion(kind, (0.0, 0.0, 0.0), breast_rng)
    return BreastTraits(density, gland_fraction, lesion)


def place_case(
    traits: BreastTraits,
    laterality: str,
    view: str,
    field_mm: tuple[float, float],
    rng: np.random.Generator,
) -> BreastCase:
    """Draw this view's outline and put the breast's lesion at a random position inside it."""
    geom = draw_geometry(view, field_mm, rng)
    lesion = None
    if traits.lesion is not None:
        spacing = 1.0
        shape = (int(field_mm[0] / spacing), int(field_mm[1] / spacing))
        mask = breast_mask(geom, shape, spacing)
        dist = edge_distance_mm(mask, spacing, geom)
        core = max(traits.lesion.radii_mm)
        ok = (dist > core + 6.0) & (pectoral_fraction(geom, shape, spacing) == 0)
        ok[:, : int(np.ceil(core + 4.0))] = False  # not cut by the chest wall edge
        rows, cols = np.nonzero(ok)
        if len(rows) == 0:
            rows, cols = np.nonzero(dist >= dist.max())
        i = int(rng.integers(0, len(rows)))
        margin = min(core, 0.45 * geom.thickness_mm) + geom.skin_mm + 1.0
        z = rng.uniform(margin, max(margin, geom.thickness_mm - margin))
        centre = ((cols[i] + 0.5) * spacing, (rows[i] + 0.5) * spacing, float(z))
        lesion = dataclasses.replace(traits.lesion, centre_mm=centre)
    return BreastCase(traits, laterality, geom, lesion)


def glandular_volume(
    case: BreastCase,
    dist_mm: np.ndarray,
    x_mm: np.ndarray,
    spacing_mm: float,
    n_slices: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Glandular share (0-1) and interior mask of each voxel, both [n_slices, rows, cols].

    `dist_mm` is the distance to the skin line of each column of voxels, `x_mm` their distance
    from the chest wall; z slices split the compressed thickness evenly.
    """
    geom = case.geometry
    t = geom.thickness_mm
    dz = t / n_slices
    z = ((np.arange(n_slices, dtype=np.float32) + 0.5) * dz)[:, None, None]
    half_interior = 0.5 * chord_mm(dist_mm - geom.skin_mm, 0.5 * t - geom.skin_mm)
    height = np.abs(z - 0.5 * t)
    interior = height < half_interior[None]
    field = power_law_noise(
        (n_slices, *dist_mm.shape), (dz, spacing_mm, spacing_mm), TEXTURE_BETA, rng
    )
    # Envelope (in noise std): fat under the skin, behind the gland (near the chest wall) and near
    # the top and bottom of the compressed breast; the glandular cone fills the centre.
    lateral = np.clip(dist_mm / 15.0, 0.0, 1.0) - 1.0 - np.clip(1.0 - x_mm / 12.0, 0.0, 1.0)
    field += (1.2 * lateral)[None]
    field -= 1.0 * (height / (0.5 * t)) ** 2
    inside = field[interior]
    sample = inside[:: max(1, inside.size // 200_000)]
    threshold = np.quantile(sample, 1.0 - case.traits.gland_fraction)
    gland = np.clip((field - threshold) / TEXTURE_WIDTH + 0.5, 0.0, 1.0)
    gland *= interior
    return gland.astype(np.float32, copy=False), interior
