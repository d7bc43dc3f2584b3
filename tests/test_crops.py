"""Tissue-aware crop boxes: integral-image fractions, tau, fallback, random mode, dense weighting."""

from __future__ import annotations

import numpy as np
import pytest

from mammodino.data.tissue_crops import (
    CropBox,
    TissueMap,
    box_tissue_fraction,
    integral_image,
    patch_tissue_fractions,
    random_resized_crop_box,
    resize_crop,
    sample_crop_box,
)
from mammodino.errors import ConfigError

GLOBAL_SCALE = (0.32, 1.0)
RATIO = (0.75, 4 / 3)


def half_breast_mask(height: int = 48, width: int = 64, breast_width: int = 20) -> np.ndarray:
    """A mask whose breast fills the left `breast_width` columns (chest wall on the left)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[:, :breast_width] = 255
    return mask


def test_box_tissue_fraction_equals_brute_force():
    rng = np.random.default_rng(0)
    mask = (rng.random((37, 53)) < 0.4).astype(np.uint8)
    integral = integral_image(mask)
    for _ in range(300):
        x0, x1 = sorted(rng.integers(0, 54, 2))
        y0, y1 = sorted(rng.integers(0, 38, 2))
        box = CropBox(int(x0), int(y0), int(x1), int(y1))
        expected = mask[y0:y1, x0:x1].mean() if box.width and box.height else 0.0
        assert box_tissue_fraction(integral, box) == pytest.approx(expected, abs=1e-12)


def test_patch_tissue_fractions_equal_block_means():
    rng = np.random.default_rng(1)
    mask = (rng.random((40, 50)) < 0.5).astype(np.uint8)
    box = CropBox(5, 3, 37, 35)  # 32 x 32 pixels -> 64 px output, 16 px patches: 8 x 8 pixel blocks
    fractions = patch_tissue_fractions(integral_image(mask), box, out_size=64, patch_size=16)
    expected = mask[3:35, 5:37].reshape(4, 8, 4, 8).mean(axis=(1, 3))
    assert fractions.shape == (4, 4)
    np.testing.assert_allclose(fractions, expected, atol=1e-6)


def test_patch_tissue_fractions_tiny_crop_stays_inside_and_finite():
    mask = half_breast_mask()
    fractions = patch_tissue_fractions(integral_image(mask), CropBox(18, 0, 21, 2), 32, 8)
    assert fractions.shape == (4, 4)
    assert np.all(np.isfinite(fractions)) and fractions.min() >= 0 and fractions.max() <= 1
    assert fractions[:, 0].min() == 1.0 and fractions[:, -1].max() == 0.0


def test_crop_boxes_inside_image_and_scale_in_range():
    tissue = TissueMap.from_mask(half_breast_mask())
    rng = np.random.default_rng(2)
    for sampler in ("tissue", "random"):
        for _ in range(500):
            box, fraction = sample_crop_box(rng, tissue, GLOBAL_SCALE, RATIO, 0.5, 10, 0.0, sampler)
            assert 0 <= box.x0 < box.x1 <= 64 and 0 <= box.y0 < box.y1 <= 48
            # rounding of w and h moves the area fraction a little around the drawn scale
            assert 0.28 <= box.width * box.height / (64 * 48) <= 1.0
            assert fraction == pytest.approx(box_tissue_fraction(tissue.integral, box))


def test_tissue_sampler_honours_tau_when_reachable():
    tissue = TissueMap.from_mask(half_breast_mask(breast_width=30))
    rng = np.random.default_rng(3)
    fractions = [sample_crop_box(rng, tissue, GLOBAL_SCALE, RATIO, 0.5, 10)[1] for _ in range(1000)]
    random_fractions = [
        sample_crop_box(rng, tissue, GLOBAL_SCALE, RATIO, 0.5, 10, sampler="random")[1]
        for _ in range(1000)
    ]
    assert np.mean(np.array(fractions) >= 0.5) >= 0.99
    assert np.mean(np.array(random_fractions) >= 0.5) < 0.8


def test_fallback_keeps_candidate_with_most_tissue():
    tissue = TissueMap.from_mask(half_breast_mask())
    for seed in range(20):
        # tau above 1 is never reached: all 5 candidates are drawn, the best is kept
        box, fraction = sample_crop_box(
            np.random.default_rng(seed), tissue, (0.05, 0.3), RATIO, 1.5, 5
        )
        replay = np.random.default_rng(seed)
        candidates = [sample_crop_box(replay, tissue, (0.05, 0.3), RATIO, 1.5, 1) for _ in range(5)]
        best = max(candidates, key=lambda c: c[1])
        assert fraction == best[1] == max(c[1] for c in candidates)
        assert box == best[0]


def test_random_sampler_is_plain_random_resized_crop():
    tissue = TissueMap.from_mask(half_breast_mask())
    a, b = np.random.default_rng(4), np.random.default_rng(4)
    for _ in range(100):
        box, _ = sample_crop_box(a, tissue, GLOBAL_SCALE, RATIO, 0.9, 10, 5.0, "random")
        assert box == random_resized_crop_box(b, 48, 64, GLOBAL_SCALE, RATIO)


def test_random_resized_crop_positions_are_uniform():
    rng = np.random.default_rng(5)
    boxes = [random_resized_crop_box(rng, 48, 64, (0.1, 0.1), (1.0, 1.0)) for _ in range(2000)]
    assert {b.width for b in boxes} == {18} and {b.height for b in boxes} == {18}
    assert np.mean([b.x0 / (64 - 18) for b in boxes]) == pytest.approx(0.5, abs=0.03)
    assert np.mean([b.y0 / (48 - 18) for b in boxes]) == pytest.approx(0.5, abs=0.03)


def test_unknown_sampler_is_a_config_error():
    tissue = TissueMap.from_mask(half_breast_mask())
    with pytest.raises(ConfigError, match="crops.sampler"):
        sample_crop_box(np.random.default_rng(0), tissue, GLOBAL_SCALE, RATIO, 0.5, sampler="x")


@pytest.mark.parametrize("dense_weight", [0.0, 9.0])
def test_centres_uniform_over_breast_or_weighted_toward_dense_tissue(dense_weight):
    mask = half_breast_mask(40, 40, 20)
    intensity = np.zeros((40, 40), dtype=np.uint16)
    intensity[:20, :20] = 65535  # dense upper half of the breast
    tissue = TissueMap.from_mask(mask, intensity, 65535.0)
    rng = np.random.default_rng(6)
    centres = np.array([tissue.sample_centre(rng, dense_weight) for _ in range(2000)])
    assert np.all(mask[centres[:, 0], centres[:, 1]] > 0)
    share_dense = np.mean(centres[:, 0] < 20)
    expected = (1 + dense_weight) / (2 + dense_weight)  # weights 1 + w * intensity over two halves
    assert abs(share_dense - expected) <= 4 * np.sqrt(expected * (1 - expected) / 2000)


def test_centre_of_a_single_pixel_breast_uses_exact_fallback():
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[40, 7] = 1
    tissue = TissueMap.from_mask(mask, np.ones((64, 64), np.float32))
    rng = np.random.default_rng(7)
    assert {tissue.sample_centre(rng, w) for w in (0.0, 2.0) for _ in range(5)} == {(40, 7)}


def test_resize_crop_area_average_and_linear():
    image = np.arange(64 * 48, dtype=np.uint16).reshape(48, 64)
    small = resize_crop(image, CropBox(0, 0, 32, 32), 16)
    assert small.shape == (16, 16) and small.dtype == np.uint16
    assert small[0, 0] == pytest.approx(image[:2, :2].mean(), abs=1)
    big = resize_crop(image.astype(np.float32), CropBox(10, 10, 18, 18), 32)
    assert big.shape == (32, 32) and big.min() >= image[10:18, 10:18].min()
