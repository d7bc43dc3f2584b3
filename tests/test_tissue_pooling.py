"""benchmarks/tissue_pooling.py: the mean patch token over the breast, on embed's canvas."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import load_benchmark, write_cache
from mammodino.eval.features import load_features, save_features


@pytest.fixture
def pooling():
    return load_benchmark("tissue_pooling")


def test_fractions_follow_embeds_top_left_canvas(pooling):
    # A 4 x 2 image whose left column is breast: on the 4 x 4 canvas, column 0 of rows 0-3.
    mask = np.array([[255, 0]] * 4, dtype=np.uint8)
    fractions = pooling.grid_tissue_fractions(mask, (2, 2))
    np.testing.assert_allclose(fractions, [[0.5, 0.0], [0.5, 0.0]])


def test_weighted_and_thresholded_means(pooling):
    tokens = np.zeros((2, 2, 1))
    tokens[..., 0] = [[1.0, 3.0], [5.0, 7.0]]
    fractions = np.array([[1.0, 0.5], [0.2, 0.0]])
    weighted = pooling.tissue_mean(tokens, fractions, None)
    assert weighted[0] == pytest.approx((1.0 + 1.5 + 1.0) / 1.7)
    assert pooling.tissue_mean(tokens, fractions, 0.5)[0] == pytest.approx(2.0)
    # No patch reaches the threshold: the plain mean, as embed writes it.
    assert pooling.tissue_mean(tokens, fractions, 1.0)[0] == pytest.approx(1.0)
    assert pooling.tissue_mean(tokens, np.zeros((2, 2)), None)[0] == pytest.approx(4.0)


def test_the_script_rewrites_patch_mean_only(pooling, tmp_path, capsys):
    cache = write_cache(tmp_path / "cache", count=3)  # half discs against the left edge
    ids = ["id0", "id1", "id2"]
    meta = [{"id": i, "patient_id": f"p{n}"} for n, i in enumerate(ids)]
    # Token value = column index of the 4 x 4 grid: the breast (left) patches hold the low values.
    grid = np.broadcast_to(np.arange(4.0)[None, None, :, None], (3, 4, 4, 2)).copy()
    cls = np.arange(6.0).reshape(3, 2)
    save_features(
        tmp_path / "feats", ids, cls, grid.mean(axis=(1, 2)), meta, grid.astype(np.float16)
    )
    assert pooling.main([str(tmp_path / "feats"), str(cache), str(tmp_path / "out")]) == 0
    out = load_features(tmp_path / "out")
    np.testing.assert_array_equal(out.cls, cls)
    assert list(out.ids) == ids and [r["patient_id"] for r in out.meta] == ["p0", "p1", "p2"]
    # embed's plain mean is 1.5; breast patches lie left, so the pooled mean is well below it.
    assert np.all(out.patch_mean < 1.0) and np.all(out.patch_mean > 0.0)
    assert "0 images pooled over the whole grid" in capsys.readouterr().out
    save_features(tmp_path / "nogrid", ids, cls, cls, meta)
    with pytest.raises(SystemExit, match="tissue_pooling: .*no patch grid"):
        pooling.main([str(tmp_path / "nogrid"), str(cache), str(tmp_path / "out2")])
