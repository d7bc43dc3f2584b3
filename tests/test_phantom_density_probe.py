"""benchmarks/phantom_density_probe.py: the inner box it crops and the brightness statistics it
ranks density with, on constructed images."""

from __future__ import annotations

import numpy as np

from helpers import load_benchmark

probe = load_benchmark("phantom_density_probe")


def test_inner_box_keeps_the_central_rows_on_the_chest_wall_side():
    image = np.zeros((40, 20), dtype=np.float32)
    image[10:30, :10] = 1.0  # exactly the central half of the rows, chest-wall half of the columns
    box = probe.inner_box(image, 0.5, 8)
    assert box.shape == (8, 8)
    np.testing.assert_allclose(box, 1.0)
    whole = probe.inner_box(image, 1.0, 8)
    assert 0.2 < whole.mean() < 0.3  # the whole image: a quarter of it is the box


def test_brightness_statistics_ignore_background_and_rank_brightness():
    dim, bright = np.zeros((3, 16, 16), dtype=np.float32), np.zeros((3, 16, 16), dtype=np.float32)
    dim[:, :, :8], bright[:, :, :8] = 0.3, 0.7  # same breast area, different brightness
    stats = probe.brightness_statistics(np.concatenate([dim, bright]))
    assert stats.shape == (6, 8)
    mean = stats[:, 0]
    assert np.all(mean[:3] < 0) and np.all(mean[3:] > 0)  # standardised: dim below, bright above
    np.testing.assert_allclose(stats[:, -1], 0.0)  # equal breast areas standardise to 0
    empty = probe.brightness_statistics(np.zeros((2, 4, 4), dtype=np.float32))
    assert np.all(np.isfinite(empty))
