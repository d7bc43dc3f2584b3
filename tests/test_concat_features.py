"""benchmarks/concat_features.py: several FEATS side by side, matched by id, equal weight each."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import load_benchmark
from mammodino.errors import EvaluationError
from mammodino.eval.features import Features, load_features, save_features


@pytest.fixture
def concat():
    return load_benchmark("concat_features")


def _features(ids, cls, patch_mean=None):
    meta = [{"id": i, "patient_id": f"p{i}"} for i in ids]
    patch_mean = cls if patch_mean is None else patch_mean
    return Features(
        ids=np.asarray(ids),
        cls=np.asarray(cls, float),
        patch_mean=np.asarray(patch_mean, float),
        meta=meta,
    )


def test_columns_are_z_scored_and_each_source_weighs_the_same(concat):
    x = np.array([[1.0, 10.0, 5.0], [3.0, 30.0, 5.0], [5.0, 50.0, 5.0], [7.0, 70.0, 5.0]])
    weighted = concat.equal_weight_columns(x)
    z = (np.array([1.0, 3.0, 5.0, 7.0]) - 4.0) / np.sqrt(5.0)  # population sd of 1, 3, 5, 7
    np.testing.assert_allclose(weighted[:, 0], z / np.sqrt(3))
    np.testing.assert_allclose(weighted[:, 1], z / np.sqrt(3))
    np.testing.assert_array_equal(weighted[:, 2], 0.0)  # a constant column carries nothing
    # Mean squared row norm = (columns that vary) / width, whatever the scale of the source.
    assert np.mean((weighted**2).sum(axis=1)) == pytest.approx(2 / 3)


def test_rows_follow_the_first_sources_order_by_id(concat):
    a = _features(["x", "y", "z"], [[0.0], [1.0], [2.0]], [[5.0], [6.0], [9.0]])
    b = _features(["z", "x", "y"], [[20.0, 1.0], [0.0, 3.0], [10.0, 2.0]])
    joined = concat.concatenate([a, b])
    assert list(joined.ids) == ["x", "y", "z"]
    assert joined.cls.shape == (3, 3) and joined.patch_mean.shape == (3, 3)
    # b's first column is 0, 10, 20 in a's order: the same ranks as a's own column.
    assert np.all(np.diff(joined.cls[:, 0]) > 0) and np.all(np.diff(joined.cls[:, 1]) > 0)
    np.testing.assert_allclose(joined.cls[:, 1], joined.cls[:, 0] * np.sqrt(1 / 2))
    assert [r["patient_id"] for r in joined.meta] == ["px", "py", "pz"]


def test_sources_with_other_images_are_refused(concat):
    a = _features(["x", "y", "z"], [[0.0], [1.0], [2.0]])
    with pytest.raises(EvaluationError, match="other images"):
        concat.concatenate([a, _features(["x", "y", "w"], [[0.0], [1.0], [2.0]])])
    with pytest.raises(EvaluationError, match="other images"):
        concat.concatenate([a, _features(["x", "y"], [[0.0], [1.0]])])
    with pytest.raises(EvaluationError, match="at least two"):
        concat.concatenate([a])


def test_the_script_writes_feats_that_eval_reads(concat, tmp_path, capsys):
    rng = np.random.default_rng(0)
    ids = [f"i{n}" for n in range(6)]
    meta = [{"id": i, "patient_id": f"p{n // 2}"} for n, i in enumerate(ids)]
    save_features(tmp_path / "a", ids, rng.normal(size=(6, 4)), rng.normal(size=(6, 4)), meta)
    save_features(
        tmp_path / "b", ids[::-1], rng.normal(size=(6, 2)), rng.normal(size=(6, 2)), meta[::-1]
    )
    assert concat.main([str(tmp_path / "out"), str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    joined = load_features(tmp_path / "out")
    assert list(joined.ids) == ids and joined.cls.shape == (6, 6)
    assert "6 images, cls 6 + patch_mean 6 columns from 2 sources" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="concat_features: .*no features file"):
        concat.main([str(tmp_path / "out2"), str(tmp_path / "a"), str(tmp_path / "missing")])
