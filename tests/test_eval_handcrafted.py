"""Hand-crafted baseline: intensity and texture respond to what they describe; FEATS from a cache."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from helpers import write_csv
from mammodino.errors import CacheError, EvaluationError
from mammodino.eval.features import load_features
from mammodino.eval.handcrafted import extract_handcrafted, feature_names, handcrafted_features


def _breast(seed: int, level: float, texture: float, size: int = 96, blur: float = 3.0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    mask = (xx - 0) ** 2 + (yy - size / 2) ** 2 < (0.45 * size) ** 2 * 2
    noise = rng.random((size, size)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), blur) if blur else noise
    image = np.clip(
        level + texture * (smooth - smooth.mean()) * 8 + 0.02 * rng.random((size, size)), 0, 1
    )
    return np.where(mask, image, 0).astype(np.float32), mask


def test_vector_layout_and_what_it_measures():
    names = feature_names()
    dark = handcrafted_features(*_breast(0, 0.3, 0.1))
    bright = handcrafted_features(*_breast(0, 0.7, 0.1))
    assert dark.shape == (len(names),) and np.isfinite(dark).all()
    mean = names.index("mean")
    assert bright[mean] == pytest.approx(dark[mean] + 0.4, abs=0.02)
    hist = slice(0, names.index("hist_15") + 1)
    assert dark[hist].sum() == pytest.approx(1.0) and bright[hist].argmax() > dark[hist].argmax()
    # Texture is measured after a per-image contrast stretch: fine grain vs smooth structure.
    smooth = handcrafted_features(*_breast(1, 0.5, 0.1, blur=3.0))
    grainy = handcrafted_features(*_breast(1, 0.5, 0.1, blur=0.0))
    for name in ("glcm_contrast_d1", "glcm_dissimilarity_d1"):
        assert grainy[names.index(name)] > 2 * smooth[names.index(name)]
    assert grainy[names.index("glcm_homogeneity_d1")] < smooth[names.index("glcm_homogeneity_d1")]
    with pytest.raises(EvaluationError, match="differ"):
        handcrafted_features(np.zeros((4, 4)), np.zeros((5, 5), bool))


def test_extract_from_a_cache_writes_features(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rows = []
    for i, level in enumerate((0.3, 0.6)):
        image, mask = _breast(i, level, 0.1)
        cv2.imwrite(str(tmp_path / "images" / f"{i}.png"), (image * 65535).astype(np.uint16))
        cv2.imwrite(str(tmp_path / "masks" / f"{i}.png"), mask.astype(np.uint8) * 255)
        rows.append(
            {
                "id": f"id{i}",
                "source": f"mdb00{i + 1}.png",
                "image": f"images/{i}.png",
                "mask": f"masks/{i}.png",
                "laterality": "R",
                "view": "MLO",
                "patient_id": "p",
            }
        )
    write_csv(tmp_path / "manifest.csv", rows)
    extract_handcrafted(tmp_path, tmp_path / "feats")
    f = load_features(tmp_path / "feats")
    assert f.ids.tolist() == ["id0", "id1"] and f.cls.shape == (2, len(feature_names()))
    assert np.array_equal(f.cls, f.patch_mean) and f.meta[1]["source"] == "mdb002.png"
    assert f.patch_grid.shape == (2, 16, 16, 17) and f.patch_grid.dtype == np.float16
    # Patch tissue fraction (entry 6): the left edge holds the breast, the right edge background.
    assert f.patch_grid[0, 8, 0, 6] == 1.0 and f.patch_grid[0, 8, -1, 6] == 0.0
    assert f.cls[1, feature_names().index("mean")] > f.cls[0, feature_names().index("mean")]
    with pytest.raises(CacheError, match="manifest"):
        extract_handcrafted(tmp_path / "images", tmp_path / "x")
