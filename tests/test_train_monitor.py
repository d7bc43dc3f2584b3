"""The online k-NN monitor: hand-checked votes, patient exclusion, balanced accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from mammodino.errors import ConfigError
from mammodino.train.monitor import (
    join_key,
    knn_balanced_accuracy,
    labelled_cache_rows,
    labels_by_join_key,
    square_thumbnail,
)


def test_knn_separable_classes_score_one():
    features = np.array([[1, 0.1], [1, 0.0], [1, -0.1], [0.1, 1], [0, 1], [-0.1, 1]], float)
    labels = np.array([0, 0, 0, 1, 1, 1])
    groups = np.arange(6).astype(str)
    assert knn_balanced_accuracy(features, labels, groups, k=2) == 1.0


def test_same_patient_neighbours_are_excluded():
    # Images 0 and 1 are one patient's two breasts: identical features, label 0. Without the
    # exclusion each would vote for the other and score 1; with it, both see only class 1.
    features = np.array([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    labels = np.array([0, 0, 1, 1])
    groups = np.array(["p1", "p1", "p2", "p3"])
    assert knn_balanced_accuracy(features, labels, groups, k=1) == pytest.approx(0.5)
    assert knn_balanced_accuracy(features, labels, np.array(["a", "b", "c", "d"]), k=1) == 1.0


def test_balanced_accuracy_weighs_classes_equally():
    # 4 of class 0 all right, 1 of class 1 wrong: plain accuracy 0.8, balanced 0.5
    features = np.array([[1, 0], [1, 0.01], [1, 0.02], [1, 0.03], [1, 0.5]], float)
    labels = np.array([0, 0, 0, 0, 1])
    assert knn_balanced_accuracy(features, labels, np.arange(5), k=1) == pytest.approx(0.5)


def test_square_thumbnail_keeps_aspect():
    tall = np.ones((20, 10), np.float32)
    thumb = square_thumbnail(tall, 10)
    assert thumb.shape == (10, 10)
    assert thumb[:, :5].min() == pytest.approx(1.0) and thumb[:, 5:].max() == 0.0


def test_labels_join_on_file_names_and_skip_empty_or_short_rows(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("file,density\nffdm/a.dcm, B \nffdm/b.dcm,\nffdm/c.dcm\n")
    assert labels_by_join_key(labels, "file", "density") == {"a.dcm": "B"}
    assert join_key({"source": "/data/src/a.dcm"}, "source") == "a.dcm"
    assert join_key({}, "source") == ""
    with pytest.raises(ConfigError, match="needs columns 'file' and 'birads'$"):
        labels_by_join_key(labels, "file", "birads")


def test_monitor_names_its_settings_when_a_label_column_is_missing(tmp_path):
    from mammodino.config import load_config
    from mammodino.settings import as_settings

    (tmp_path / "labels.csv").write_text("file,density\na.dcm,B\n")
    monitor = as_settings(load_config(overrides=["monitor.label_column=birads"])).monitor
    with pytest.raises(ConfigError, match=r"\(monitor.labels_key, monitor.label_column\)$"):
        labelled_cache_rows(tmp_path, tmp_path / "labels.csv", monitor)


@pytest.mark.realdata
def test_mini_mias_density_labels_join_the_cache_manifest(mini_mias_dir, tmp_path):
    import csv

    from mammodino.config import load_config
    from mammodino.settings import Settings
    from mammodino.train.monitor import KNNMonitor

    names = sorted(p.name for p in mini_mias_dir.glob("mdb*.png"))[:24]
    with (tmp_path / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "source", "image", "mask"])
        writer.writerows([f"id{i}", n, str(mini_mias_dir / n), ""] for i, n in enumerate(names))
    cfg = load_config(
        overrides=[
            "monitor.every=10",
            f"monitor.source={tmp_path}",
            f"monitor.labels={mini_mias_dir / 'labels_per_image.csv'}",
            "monitor.label_column=tissue_FGD",
            "monitor.image_size=32",
        ]
    )
    settings = Settings.from_config(cfg)
    monitor = KNNMonitor.from_settings(settings.monitor, settings.crops.global_size)
    assert monitor.images.shape == (24, 1, 32, 32)
    assert set(monitor.labels) == {0, 1, 2}  # D, F, G
    # no patient_id column: mini-MIAS names pair mdb001+mdb002 as one woman
    assert list(monitor.groups[:4]) == ["mias001", "mias001", "mias002", "mias002"]
