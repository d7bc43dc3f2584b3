"""Localization metrics on constructed heat maps, lesion masks, and the patch probe end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mammodino.errors import EvaluationError
from mammodino.eval.features import Features
from mammodino.eval.localization import (
    evaluate_localization,
    lesion_patch_mask,
    parse_lesions,
    patch_auroc,
    pointing_hit,
    shapes_to_grid,
)


def test_lesion_patch_masks():
    disc = lesion_patch_mask([{"type": "circle", "x": 2.5, "y": 3.5, "r": 1.0}], 8, 8)
    assert sorted(zip(*np.nonzero(disc), strict=True)) == [(2, 2), (3, 1), (3, 2), (3, 3), (4, 2)]
    # A calcification smaller than a patch still marks the patch holding its centre.
    tiny = lesion_patch_mask([{"type": "circle", "x": 5.2, "y": 6.7, "r": 0.1}], 8, 8)
    assert list(zip(*np.nonzero(tiny), strict=True)) == [(6, 5)]
    box = lesion_patch_mask([{"type": "box", "x0": 1, "y0": 1, "x1": 3, "y1": 2}], 8, 8)
    assert sorted(zip(*np.nonzero(box), strict=True)) == [(1, 1), (1, 2)]
    outside = lesion_patch_mask([{"type": "circle", "x": -5, "y": -5, "r": 1}], 4, 4)
    assert not outside.any()


def test_pointing_game_tolerance_of_one_patch():
    mask = np.zeros((8, 8), bool)
    mask[4, 4] = True
    for (i, j), hit in {
        (4, 4): True,
        (5, 5): True,
        (3, 5): True,
        (6, 4): False,
        (2, 2): False,
    }.items():
        heat = np.zeros((8, 8))
        heat[i, j] = 1.0
        assert pointing_hit(heat, mask) is hit, (i, j)
    heat = np.zeros((8, 8))
    heat[5, 5] = 1.0
    assert pointing_hit(heat, mask, tolerance=0) is False
    heat[0, 0] = 1.0  # a tie: argmax takes the first maximum in row-major order
    assert pointing_hit(heat, mask) is False


def test_patch_auroc_on_constructed_maps():
    rng = np.random.default_rng(0)
    masks = [rng.random((6, 6)) < 0.2 for _ in range(5)]
    perfect = [m.astype(float) + 0.1 * rng.random(m.shape) for m in masks]
    assert patch_auroc(perfect, masks) == 1.0
    assert patch_auroc([-h for h in perfect], masks) == 0.0
    noise = [rng.random(m.shape) for m in masks]
    assert 0.3 < patch_auroc(noise, masks) < 0.7
    # Hand count: 1 lesion patch scored 0.5 against negatives 0.2, 0.5, 0.9 -> (1 + 0.5) / 3.
    assert patch_auroc(
        [np.array([[0.5, 0.2], [0.5, 0.9]])], [np.array([[1, 0], [0, 0]], bool)]
    ) == (pytest.approx(1.5 / 3))


def test_parse_lesions_and_mapping():
    assert parse_lesions("") is None and parse_lesions("[]") == []
    with pytest.raises(EvaluationError):
        parse_lesions("[{'type': 'x'}]")
    meta = {"width": "64", "height": "32"}
    # Identity geometry; the grid covers the whole 64 x 32 cache image with 8 x 4 patches.
    shapes = shapes_to_grid(
        [
            {"type": "circle", "x": 15.5, "y": 7.5, "r": 8},
            {"type": "box", "x0": 39.5, "y0": -0.5, "x1": 23.5, "y1": 15.5},
        ],
        meta,
        4,
        8,
        to_cache=lambda m, x, y: (x, y),
    )
    assert shapes[0] == {"type": "circle", "x": 2.0, "y": 1.0, "r": 1.0}
    assert shapes[1] == {"type": "box", "x0": 3.0, "y0": 0.0, "x1": 5.0, "y1": 2.0}


def _synthetic(n_patients=30, grid=8, dim=16, seed=0, fixed_lesion=None):
    """Two images per patient; half carry a lesion whose patches have a shifted token.

    `fixed_lesion` (x, y): every lesion there, and no token shifted (position is the only cue).
    """
    rng = np.random.default_rng(seed)
    n = 2 * n_patients
    tokens = rng.normal(size=(n, grid, grid, dim)).astype(np.float16)
    rows, meta = [], []
    for i in range(n):
        meta.append(
            {
                "id": f"i{i}",
                "source": f"i{i}.png",
                "width": str(grid * 16),
                "height": str(grid * 16),
            }
        )
        if i % 2:
            cx, cy = rng.integers(20, grid * 16 - 20, 2) if fixed_lesion is None else fixed_lesion
            shape = {"type": "circle", "x": int(cx), "y": int(cy), "r": 12}
            mask = lesion_patch_mask(
                shapes_to_grid([shape], meta[-1], grid, grid, lambda m, x, y: (x, y)), grid, grid
            )
            if fixed_lesion is None:
                tokens[i][mask, :4] += 3.0
            rows.append({"lesions": json.dumps([shape])})
        else:
            rows.append({"lesions": "[]"})
    rows[-2] = {"lesions": ""}  # unknown: left out
    feats = Features(
        ids=np.asarray([m["id"] for m in meta]),
        cls=np.zeros((n, dim)),
        patch_mean=np.zeros((n, dim)),
        meta=meta,
        patch_grid=tokens,
    )
    patients = [f"p{i // 2}" for i in range(n)]
    return feats, rows, patients


def test_patch_probe_finds_constructed_lesions():
    feats, rows, patients = _synthetic()
    result, arrays = evaluate_localization(
        feats, rows, patients, n_folds=3, seed=0, n_boot=100, to_cache=lambda m, x, y: (x, y)
    )
    assert result["n_images"] == 59 and result["n_images_with_lesions"] == 30
    assert result["hit_rate"]["value"] >= 0.9
    assert result["patch_auroc"]["value"] > 0.95
    assert 0.0 < result["hit_rate_chance"] < 0.5
    # Lesions anywhere: where they usually are says little next to what the tokens say.
    prior = result["position_prior"]
    assert prior["hit_rate"] < 0.6 and prior["patch_auroc"] < 0.8
    for key in ("hit_rate", "patch_auroc"):
        low, high = result[key]["ci95"]
        assert low <= result[key]["value"] <= high
    assert arrays["heatmaps"].shape == (59, 8, 8) and len(arrays["ids"]) == 59


def test_position_prior_is_what_position_alone_gives():
    """Every lesion at one place, tokens pure noise: the prior finds them, the probe's lead is 0."""
    feats, rows, patients = _synthetic(fixed_lesion=(40, 72))
    result, _ = evaluate_localization(
        feats, rows, patients, n_folds=3, seed=0, n_boot=0, to_cache=lambda m, x, y: (x, y)
    )
    prior = result["position_prior"]
    assert prior["hit_rate"] == 1.0
    assert prior["patch_auroc"] > 0.95
    # The probe sees noise tokens only (no position): about chance, far below the prior.
    assert result["patch_auroc"]["value"] < 0.65
    assert result["patch_auroc"]["value"] < prior["patch_auroc"] - 0.3


def test_localization_needs_patch_grid():
    feats, rows, patients = _synthetic(4)
    feats.patch_grid = None
    with pytest.raises(EvaluationError, match="patch_grid"):
        evaluate_localization(feats, rows, patients, n_folds=2)


def test_mapping_through_the_cache_geometry():
    # 100 x 80 original, flipped, crop x 10..90, scale 0.5 -> a 40 x 40 cache, 4 x 4 patches.
    meta = {
        "height": "80",
        "width": "100",
        "flipped": "1",
        "crop_x0": "10",
        "crop_y0": "0",
        "crop_x1": "90",
        "crop_y1": "80",
        "scale_x": "0.5",
        "scale_y": "0.5",
        "cache_width": "40",
        "cache_height": "40",
    }
    [circle] = shapes_to_grid([{"type": "circle", "x": 79.5, "y": 40, "r": 20}], meta, 4, 4)
    assert circle["x"] == pytest.approx(0.5) and circle["y"] == pytest.approx(2.025)
    assert circle["r"] == pytest.approx(1.0)


def test_missing_geometry_is_a_clear_error():
    with pytest.raises(EvaluationError, match="cache geometry"):
        shapes_to_grid([{"type": "circle", "x": 1, "y": 1, "r": 1}], {"id": "a"}, 4, 4)
