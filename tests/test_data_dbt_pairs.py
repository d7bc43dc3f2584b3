"""DBT slice pairs: offsets within d_max in mm, both slices in range, one crop plan for both."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mammodino.config import load_config
from mammodino.data.dbt_pairs import draw_slice_pair, max_slice_offset, render_slice_pair
from mammodino.data.tissue_crops import TissueMap
from mammodino.data.transform import PretrainTransform
from mammodino.errors import ConfigError
from mammodino.settings import Settings

AUGMENT_PROBABILITIES = (
    "brightness_p",
    "contrast_p",
    "gamma_p",
    "window_p",
    "blur_p_local",
    "noise_p",
    "solarize_p",
)


@pytest.mark.parametrize(
    "spacing_mm, d_max_mm, expected", [(1.0, 3.0, 3), (0.5, 3.0, 6), (1.0, 2.5, 2), (5.0, 3.0, 1)]
)
def test_max_slice_offset_in_mm(spacing_mm, d_max_mm, expected):
    assert max_slice_offset(spacing_mm, d_max_mm) == expected


def test_max_slice_offset_rejects_bad_values():
    with pytest.raises(ConfigError, match="spacing"):
        max_slice_offset(0.0, 3.0)
    with pytest.raises(ConfigError, match="d_max_mm"):
        max_slice_offset(1.0, 0.0)


def test_slice_pairs_stay_in_range_and_within_d_max():
    rng = np.random.default_rng(0)
    spacing_mm, d_max_mm = 1.0, 3.0
    d_max = max_slice_offset(spacing_mm, d_max_mm)
    offsets, starts = set(), set()
    for _ in range(2000):
        k, other = draw_slice_pair(rng, 5, 40, d_max)
        assert 5 <= k <= 40 and 5 <= other <= 40
        assert 1 <= abs(other - k) * spacing_mm <= d_max_mm
        offsets.add(other - k)
        starts.add(k)
    assert offsets == {-3, -2, -1, 1, 2, 3}
    assert starts == set(range(5, 41))
    assert draw_slice_pair(rng, 7, 8, 5) in {(7, 8), (8, 7)}
    with pytest.raises(ValueError):
        draw_slice_pair(rng, 4, 4, 2)


def test_both_slices_get_the_same_boxes_and_independent_augmentations():
    config = load_config(
        overrides=[
            "crops.global_size=32",
            "crops.local_size=16",
            "crops.n_local=2",
            "model.patch_size=8",
        ]
    )
    transform = PretrainTransform.from_settings(Settings.from_config(config))
    rng = np.random.default_rng(1)
    volume = rng.integers(1000, 60000, (2, 64, 48)).astype(np.uint16)
    mask = np.zeros((64, 48), np.uint8)
    mask[8:56, :30] = 255
    tissue = TissueMap.from_mask(mask)
    a, b = render_slice_pair(transform, volume[0], volume[0], tissue, (0, 0, 3))
    assert torch.equal(a["global_patch_tissue"], b["global_patch_tissue"])
    assert not torch.equal(a["global_crops"], b["global_crops"])  # independent augmentations
    no_intensity = dataclasses.replace(
        transform.augment,
        **dict.fromkeys(AUGMENT_PROBABILITIES, 0.0),
        blur_p_global=(0.0,),
    )
    plain = PretrainTransform(transform.crops, transform.masking, no_intensity, 8)
    a, b = render_slice_pair(plain, volume[0], volume[0], tissue, (0, 0, 3))
    assert torch.equal(a["global_crops"], b["global_crops"])  # same boxes and flips
    assert torch.equal(a["local_crops"], b["local_crops"])
    with pytest.raises(ValueError, match="one size"):
        render_slice_pair(transform, volume[0], volume[1][:60], tissue, 0)
