"""benchmarks/phantom_density_probe.py: the inner box it crops and the intensity features it ranks
density with, on constructed images."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_intensity_features_rank_brightness_inside_the_mask():
    names = probe.feature_names()[: probe.N_INTENSITY]
    assert names[-1] == "area_fraction" and "glcm_contrast_d1" not in names
    mask = np.zeros((32, 32), dtype=bool)
    mask[:, :16] = True  # the same breast for every image
    images = [np.where(mask, level, 0.0).astype(np.float32) for level in (0.3, 0.3, 0.3, 0.7)]
    images[2][0, 20] = 1.0  # outside the mask: must not count
    stats = probe.intensity_features(images, [mask] * 4)
    assert stats.shape == (4, probe.N_INTENSITY)
    mean = stats[:, names.index("mean")]
    assert np.all(mean[:3] < 0) and mean[3] > 0  # standardised: dim below, bright above
    np.testing.assert_allclose(stats[:, names.index("area_fraction")], 0.0)  # equal areas
    np.testing.assert_array_equal(stats[1], stats[2])


def test_grouped_r2_recovers_a_linear_target_and_not_noise():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((200, 6))
    groups = np.repeat(np.arange(50), 4)  # four images a woman, as in the phantom
    linear = features @ np.array([1.0, -2.0, 0.5, 0.0, 0.0, 0.0])
    assert probe.grouped_r2(features, linear, groups) > 0.99
    assert probe.grouped_r2(features, rng.standard_normal(200), groups) < 0.05


def test_column_values_follow_the_monitor_rows_and_name_a_missing_column(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "file,gland_fraction,thickness_mm,view\nffdm/b.dcm,0.25,50,CC\nffdm/a.dcm,0.5,,MLO\n"
    )
    monitor = probe.as_settings(probe.load_config()).monitor
    rows = [{monitor.manifest_key: "src/a.dcm"}, {monitor.manifest_key: "src/b.dcm"}]
    np.testing.assert_allclose(
        probe.column_values(rows, labels, monitor, "gland_fraction"), [0.5, 0.25]
    )
    with pytest.raises(SystemExit, match="'thickness_mm' is empty for some images"):
        probe.column_values(rows, labels, monitor, "thickness_mm")
    with pytest.raises(SystemExit, match="'view' is not numeric"):
        probe.column_values(rows, labels, monitor, "view")
    with pytest.raises(SystemExit, match="needs columns 'file' and 'laterality'$"):
        probe.column_values(rows, labels, monitor, "laterality")
