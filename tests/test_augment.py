"""Grayscale augmentations: hand-computed values and every probability measured by sampling."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from helpers import settings_of
from mammodino.data.augment import (
    adjust_brightness,
    adjust_contrast,
    adjust_gamma,
    augment_intensity,
    draw_vflip,
    gaussian_blur,
    solarize,
    vflip,
    window_level,
)
from mammodino.errors import ConfigError
from mammodino.settings import AugmentSettings

DRAWS = 2000
DEFAULTS = settings_of().augment
OFF = {
    "brightness_p": 0.0,
    "contrast_p": 0.0,
    "gamma_p": 0.0,
    "window_p": 0.0,
    "blur_p_global": (0.0,),
    "blur_p_local": 0.0,
    "noise_p": 0.0,
    "solarize_p": 0.0,
    "vflip_p": 0.0,
}


def within_binomial(hits: int, p: float, n: int = DRAWS) -> bool:
    """Observed share within 4 standard deviations of p (exact for p in {0, 1})."""
    return abs(hits / n - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-12


def only(**enabled) -> AugmentSettings:
    """A config with every augmentation off except the given ones."""
    return dataclasses.replace(DEFAULTS, **{**OFF, **enabled})


def applied_share(config: AugmentSettings, kind: str, index: int, seed: int = 0) -> int:
    """How many of DRAWS crops came out changed."""
    rng = np.random.default_rng(seed)
    x = np.random.default_rng(99).uniform(0.1, 0.9, (8, 8)).astype(np.float32)
    return sum(
        not np.array_equal(augment_intensity(x.copy(), rng, config, kind, index), x)
        for _ in range(DRAWS)
    )


@pytest.mark.parametrize(
    "key, p",
    [
        ("brightness_p", 0.8),
        ("contrast_p", 0.8),
        ("gamma_p", 0.5),
        ("window_p", 0.5),
        ("noise_p", 0.2),
    ],
)
def test_probability_of_each_intensity_augmentation(key, p):
    config = only(**{key: p})
    for kind, index in (("global", 0), ("global", 1), ("local", 3)):
        assert within_binomial(applied_share(config, kind, index), p)


def test_blur_probabilities_per_crop_type():
    # p is the probability of blurring (DINOv2 passes 1 - p to RandomApply: its first crop never blurs)
    # sigma from 1 up: a 0.1-pixel blur leaves float32 pixels unchanged and would count as not applied
    config = only(blur_p_global=(1.0, 0.1), blur_p_local=0.5, blur_sigma=(1.0, 2.0))
    assert applied_share(config, "global", 0) == DRAWS
    assert within_binomial(applied_share(config, "global", 1), 0.1)
    assert within_binomial(applied_share(config, "local", 0), 0.5)
    assert within_binomial(applied_share(config, "local", 7), 0.5)


def test_solarize_only_on_second_global_crop():
    config = only(solarize_p=0.2)
    assert within_binomial(applied_share(config, "global", 1), 0.2)
    assert applied_share(config, "global", 0) == 0
    assert applied_share(config, "local", 1) == 0


def test_default_probabilities_together():
    config = DEFAULTS
    assert config.blur_p("global", 0) == 1.0 and config.blur_p("global", 1) == 0.1
    assert config.blur_p("global", 5) == 0.1 and config.blur_p("local", 0) == 0.5


def test_vflip_probability_and_rows_reversed():
    rng = np.random.default_rng(1)
    flips = sum(draw_vflip(rng, 0.5) for _ in range(DRAWS))
    assert within_binomial(flips, 0.5)
    assert sum(draw_vflip(rng, 0.0) for _ in range(100)) == 0
    image = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(vflip(image), image[::-1])
    assert vflip(image).flags.c_contiguous


def test_hand_computed_values():
    x = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(adjust_brightness(x, 1.2), [[0, 0.3], [0.6, 1.0]], atol=1e-6)
    mean = x.mean()  # 0.4375
    np.testing.assert_allclose(adjust_contrast(x, 0.5), mean + 0.5 * (x - mean), atol=1e-6)
    np.testing.assert_allclose(adjust_gamma(x, 2.0), [[0, 0.0625], [0.25, 1.0]], atol=1e-6)
    np.testing.assert_allclose(window_level(x, 0.25, 0.75), [[0, 0], [0.5, 1.0]], atol=1e-6)
    np.testing.assert_allclose(solarize(x), [[0, 0.25], [0.5, 0.0]], atol=1e-6)


def test_blur_keeps_mean_and_smooths():
    x = np.zeros((21, 21), dtype=np.float32)
    x[10, 10] = 1.0
    y = gaussian_blur(x, 1.5)
    assert y.sum() == pytest.approx(1.0, abs=1e-4)
    assert y[10, 10] == pytest.approx(1 / (2 * math.pi * 1.5**2), rel=0.05)


def test_outputs_stay_float32_in_unit_range():
    config = dataclasses.replace(DEFAULTS, noise_p=1.0, noise_std=0.5, brightness=0.9)
    rng = np.random.default_rng(2)
    x = rng.random((16, 16), dtype=np.float32)
    for i in range(200):
        y = augment_intensity(x, rng, config, "global" if i % 2 else "local", i % 2)
        assert y.dtype == np.float32 and y.min() >= 0.0 and y.max() <= 1.0


def test_settings_parse_and_validate():
    config = settings_of("augment.blur_p_global=[0.9, 0.2]", "augment.gamma=[0.8, 1.2]").augment
    assert config.blur_p_global == (0.9, 0.2) and config.gamma == (0.8, 1.2)
    with pytest.raises(ConfigError, match="probabilities"):
        dataclasses.replace(DEFAULTS, noise_p=1.5)
    with pytest.raises(ValueError, match="crop kind"):
        augment_intensity(np.zeros((4, 4), np.float32), np.random.default_rng(0), config, "x", 0)
