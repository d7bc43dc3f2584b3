"""Slice pairs of a DBT volume for the cross-slice contrastive loss (METHOD.md section 4).

Slice k is drawn inside the volume's tissue-bearing range, slice k + d with 1 <= |d| <= d_max
slices, d_max converted from millimetres with the slice spacing. Both slices are cut by one crop
plan (the same tissue-aware boxes and flips: they stay aligned) and get independent intensity
augmentations and iBOT masks.
"""

from __future__ import annotations

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
