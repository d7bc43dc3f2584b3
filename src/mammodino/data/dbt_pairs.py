"""Slice pairs of a DBT volume for the cross-slice contrastive loss (METHOD.md section 4).

Slice k is drawn inside the volume's tissue-bearing range (`tissue_slice_range`), slice k + d
with 1 <= |d| <= d_max slices, d_max converted from millimetres with the slice spacing. Both
slices are cut by one crop plan (the same tissue-aware boxes and flips: they stay aligned) and get
independent intensity augmentations and iBOT masks. `pair_transform` is the one-crop plan the
data set uses for the pairs of the slice loss (data/dbt_dataset.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from mammodino.data.tissue_crops import TissueMap
from mammodino.data.transform import PretrainTransform, sample_rngs
from mammodino.errors import ConfigError


def max_slice_offset(slice_spacing_mm: float, d_max_mm: float) -> int:
    """Largest |d| in slices with |d| * spacing <= d_max_mm; at least 1 (the adjacent slice)."""
    if not slice_spacing_mm > 0:
        raise ConfigError(f"DBT slice spacing must be positive, got {slice_spacing_mm} mm")
    if not d_max_mm > 0:
        raise ConfigError(f"dbt.d_max_mm must be positive, got {d_max_mm}")
    # The epsilon keeps 3.0 mm / 1.0 mm at 3 slices despite floating-point division.
    return max(1, math.floor(d_max_mm / slice_spacing_mm + 1e-9))


def draw_slice_pair(rng: np.random.Generator, first: int, last: int, d_max: int) -> tuple[int, int]:
    """(k, k + d): k uniform in [first, last], d uniform over the offsets with both slices inside."""
    if last <= first:
        raise ValueError(f"a slice pair needs two slices in range, got [{first}, {last}]")
    k = int(rng.integers(first, last + 1))
    offsets = [d for d in range(-d_max, d_max + 1) if d and first <= k + d <= last]
    return k, k + offsets[int(rng.integers(len(offsets)))]


def render_slice_pair(
    transform: PretrainTransform,
    slice_a: np.ndarray,
    slice_b: np.ndarray,
    tissue: TissueMap,
    seed: int | Sequence[int],
    intensity_max: float = 65535.0,
    index: int = 0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two sample dicts cut by one crop plan from two slices that share the volume's breast mask."""
    if slice_a.shape != slice_b.shape or slice_a.shape != tissue.shape:
        raise ValueError(
            f"slices {slice_a.shape}, {slice_b.shape} and mask {tissue.shape} must have one size"
        )
    crop_rng, aug_a, mask_a, aug_b, mask_b = sample_rngs(seed, 5)
    plan = transform.plan(crop_rng, tissue)
    first = transform.render(slice_a, tissue, plan, aug_a, mask_a, intensity_max, index)
    second = transform.render(slice_b, tissue, plan, aug_b, mask_b, intensity_max, index)
    return first, second


def pair_transform(transform: PretrainTransform, pair_size: int | None = None) -> PretrainTransform:
    """The transform of one aligned slice-pair crop: one global box, no iBOT mask, no forced blur.

    The multi-crop transform always blurs the first global crop; a pair crop gets the local blur
    probability instead so fine structure that differs between neighbouring slices survives.
    """
    crops = dataclasses.replace(
        transform.crops,
        n_global=1,
        n_local=0,
        global_size=int(pair_size or transform.crops.global_size),
    )
    if crops.global_size % transform.patch_size:
        raise ConfigError(
            f"dbt.pair_size {crops.global_size} must be a multiple of the patch size "
            f"{transform.patch_size}"
        )
    masking = dataclasses.replace(transform.masking, probability=0.0)
    blur = transform.augment.blur_p_local
    augment = dataclasses.replace(transform.augment, blur_p_global=(blur,), solarize_p=0.0)
    return PretrainTransform(crops, masking, augment, transform.patch_size)


def tissue_slice_range(slice_contrast: Sequence[float], threshold: float) -> tuple[int, int]:
    """[first, last] tissue-bearing slices: contrast >= threshold * the volume's peak contrast.

    `slice_contrast` is each slice's mean inside the breast mask minus its mean outside: slices
    beyond the compressed breast show only reconstruction haze and fall towards 0. The range is
    the contiguous run around the peak; a volume without positive contrast keeps every slice.
    """
    contrast = np.asarray(slice_contrast, dtype=np.float64)
    if contrast.size == 0:
        raise ValueError("a volume needs at least one slice")
    peak = int(contrast.argmax())
    if not contrast[peak] > 0:
        return 0, contrast.size - 1
    bearing = contrast >= threshold * contrast[peak]
    first, last = peak, peak
    while first > 0 and bearing[first - 1]:
        first -= 1
    while last < contrast.size - 1 and bearing[last + 1]:
        last += 1
    return first, last
