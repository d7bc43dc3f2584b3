"""Tissue-aware iBOT block masks: background never masked, ratio of tissue tokens, DINOv2 parity."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from helpers import settings_of
from mammodino.data.tissue_masking import (
    block_mask,
    dense_anchor_weights,
    patch_means,
    sample_crop_mask,
)
from mammodino.errors import ConfigError
from mammodino.settings import MaskingSettings

DEFAULTS = settings_of().masking


def masking(**changes) -> MaskingSettings:
    """The default masking settings with some values changed."""
    return dataclasses.replace(DEFAULTS, **changes)


def tissue_grid(n: int = 16, tissue_cols: int = 6, seed: int | None = None) -> np.ndarray:
    """Patch tissue fractions: left columns tissue (1.0), a 0.4 border column, the rest 0."""
    grid = np.zeros((n, n), dtype=np.float32)
    grid[:, :tissue_cols] = 1.0
    grid[:, tissue_cols] = 0.4
    if seed is not None:
        grid *= np.random.default_rng(seed).random((n, n)) < 0.9  # holes inside the breast
    return grid


class DINOv2MaskingGenerator:
    """DINOv2's MaskingGenerator (dinov2/data/masking.py), its `random` calls mapped onto numpy."""

    def __init__(
        self, input_size, num_masking_patches=None, min_num_patches=4, max_num_patches=None
    ):
        self.height, self.width = input_size
        self.min_num_patches = min_num_patches
        self.max_num_patches = num_masking_patches if max_num_patches is None else max_num_patches
        self.log_aspect_ratio = (math.log(0.3), math.log(1 / 0.3))

    def _mask(self, mask, max_mask_patches, rng):
        delta = 0
        for _ in range(10):
            target_area = (
                self.min_num_patches + (max_mask_patches - self.min_num_patches) * rng.random()
            )
            lo, hi = self.log_aspect_ratio
            aspect_ratio = math.exp(lo + (hi - lo) * rng.random())
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < self.width and h < self.height:
                top = int(rng.integers(0, self.height - h + 1))
                left = int(rng.integers(0, self.width - w + 1))
                num_masked = mask[top : top + h, left : left + w].sum()
                if 0 < h * w - num_masked <= max_mask_patches:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if mask[i, j] == 0:
                                mask[i, j] = 1
                                delta += 1
                if delta > 0:
                    break
        return delta

    def __call__(self, num_masking_patches, rng):
        mask = np.zeros((self.height, self.width), dtype=bool)
        mask_count = 0
        while mask_count < num_masking_patches:
            max_mask_patches = min(num_masking_patches - mask_count, self.max_num_patches)
            delta = self._mask(mask, max_mask_patches, rng)
            if delta == 0:
                break
            mask_count += delta
        return mask


def test_random_mode_is_dinov2_block_masking():
    reference = DINOv2MaskingGenerator((16, 16), max_num_patches=0.5 * 256)
    for seed in range(50):
        target = [0, 10, 51, 128][seed % 4]
        ours = block_mask(np.random.default_rng(seed), (16, 16), target)
        theirs = reference(target, np.random.default_rng(seed))
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("seed", range(5))
def test_tissue_masks_never_touch_background(seed):
    config = masking(probability=1.0, ratio=(0.1, 0.5))
    grid = tissue_grid(seed=seed)
    rng = np.random.default_rng(seed)
    background = (grid < config.patch_tissue_threshold).reshape(-1)
    masked_background = 0
    for _ in range(200):
        mask = sample_crop_mask(rng, grid, config)
        masked_background += int((mask & background).sum())
        assert mask.any()
    assert masked_background == 0


def test_mask_ratio_is_relative_to_tissue_tokens():
    grid = tissue_grid(tissue_cols=8)  # 128 tissue patches of 256
    config = masking(probability=1.0, ratio=(0.3, 0.3))
    rng = np.random.default_rng(0)
    counts = np.array([sample_crop_mask(rng, grid, config).sum() for _ in range(300)])
    target = int(0.3 * 128)
    assert counts.max() <= target
    assert counts.mean() >= 0.95 * target
    random_config = masking(mode="random", probability=1.0, ratio=(0.3, 0.3))
    counts_random = [sample_crop_mask(rng, grid, random_config).sum() for _ in range(300)]
    assert np.mean(counts_random) >= 0.95 * int(0.3 * 256)


def test_random_mode_masks_background_too():
    grid = tissue_grid()
    config = masking(mode="random", probability=1.0, ratio=(0.5, 0.5))
    rng = np.random.default_rng(1)
    background = (grid < 0.5).reshape(-1)
    assert sum(int((sample_crop_mask(rng, grid, config) & background).sum()) for _ in range(20)) > 0


def test_too_little_tissue_gives_no_mask():
    grid = np.zeros((8, 8), dtype=np.float32)
    grid[0, :3] = 1.0  # 3 tissue patches < min_tissue_patches 4
    config = masking(probability=1.0, min_tissue_patches=4)
    rng = np.random.default_rng(2)
    assert not any(sample_crop_mask(rng, grid, config).any() for _ in range(50))


def test_masking_probability_by_sampling():
    grid = tissue_grid()
    for p in (0.0, 0.5, 0.8, 1.0):
        config = masking(probability=p, ratio=(0.2, 0.4))
        rng = np.random.default_rng(3)
        n = 2000
        masked = sum(bool(sample_crop_mask(rng, grid, config).any()) for _ in range(n))
        assert abs(masked / n - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-12


def test_ratio_drawn_uniformly_over_its_range():
    grid = np.ones((16, 16), dtype=np.float32)
    config = masking(probability=1.0, ratio=(0.1, 0.5))
    rng = np.random.default_rng(4)
    shares = np.array([sample_crop_mask(rng, grid, config).mean() for _ in range(1000)])
    assert shares.min() >= 0.08 and shares.max() <= 0.5
    assert shares.mean() == pytest.approx(0.3, abs=0.02)


def test_masking_settings_parse_and_validate():
    config = settings_of("masking.mode=random", "masking.ratio=[0.2, 0.3]",
                         "masking.block_aspect=[0.5, 2]").masking  # fmt: skip
    assert config.ratio == (0.2, 0.3) and config.block_aspect == (0.5, 2.0)
    with pytest.raises(ConfigError, match="masking.mode"):
        masking(mode="everywhere")
    with pytest.raises(ConfigError, match="masking.probability"):
        settings_of("masking.probability=1.5")
    with pytest.raises(ConfigError, match="masking.dense_weight"):
        masking(dense_weight=-1.0)


def test_patch_means_by_hand():
    image = np.arange(16, dtype=np.float32).reshape(4, 4)
    expected = [[(0 + 1 + 4 + 5) / 4, (2 + 3 + 6 + 7) / 4], [(8 + 9 + 12 + 13) / 4, 12.5]]
    assert patch_means(image, 2) == pytest.approx(np.array(expected))


def test_dense_anchor_weights_by_hand():
    brightness = np.array([[0.2, 0.4], [0.6, 0.9]])
    allowed = np.array([[True, True], [True, False]])  # the brightest patch is background
    weights = dense_anchor_weights(brightness, allowed, dense_weight=3.0)
    # Rescaled over the allowed patches: 0.2 -> 0, 0.4 -> 0.5, 0.6 -> 1.
    assert weights == pytest.approx(np.array([[1.0, 2.5], [4.0, 0.0]]))
    flat = dense_anchor_weights(np.full((2, 2), 0.5), allowed, dense_weight=3.0)
    assert flat == pytest.approx(np.array([[1.0, 1.0], [1.0, 0.0]]))  # no contrast: uniform


def half_bright_grid(n: int = 16) -> np.ndarray:
    """Patch brightness: left half 0.9 (dense tissue), right half 0.2 (fat)."""
    brightness = np.full((n, n), 0.2, dtype=np.float32)
    brightness[:, : n // 2] = 0.9
    return brightness


@pytest.mark.parametrize(("dense_weight", "low", "high"), [(0.0, 0.45, 0.55), (9.0, 0.75, 0.85)])
def test_dense_weight_moves_masks_onto_bright_tissue(dense_weight, low, high):
    # Anchors on the bright half with odds 10 : 1 at weight 9; blocks spill across the middle,
    # so the masked share lands near 0.8 rather than 10 / 11.
    grid, brightness = np.ones((16, 16), dtype=np.float32), half_bright_grid()
    config = masking(probability=1.0, ratio=(0.1, 0.3), dense_weight=dense_weight)
    rng = np.random.default_rng(5)
    masks = np.stack([sample_crop_mask(rng, grid, config, brightness) for _ in range(500)])
    on_bright = masks.reshape(-1, 16, 16)[:, :, :8].sum() / masks.sum()
    assert low <= on_bright <= high


def test_dense_weight_keeps_background_unmasked_and_zero_weight_changes_nothing():
    grid, brightness = tissue_grid(seed=6), half_bright_grid()
    background = (grid < 0.5).reshape(-1)
    dense = masking(probability=1.0, dense_weight=9.0)
    rng = np.random.default_rng(6)
    assert not any((sample_crop_mask(rng, grid, dense, brightness) & background).any()
                   for _ in range(200))  # fmt: skip
    plain = masking(probability=1.0)
    with_brightness = [sample_crop_mask(np.random.default_rng(i), grid, plain, brightness)
                       for i in range(20)]  # fmt: skip
    without = [sample_crop_mask(np.random.default_rng(i), grid, plain) for i in range(20)]
    assert all(np.array_equal(a, b) for a, b in zip(with_brightness, without, strict=True))
