"""Metrics against hand computations and scikit-learn; bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from mammodino.eval.metrics import (
    auprc,
    auroc,
    auroc_ovr,
    balanced_accuracy,
    bootstrap_ci,
    classification_metrics,
    confusion,
    macro_f1,
    quadratic_kappa,
    summarise_folds,
)


def test_hand_computed_values():
    y, s = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    assert auroc(y, s) == pytest.approx(3 / 4)  # 3 of 4 positive-negative pairs ranked right
    assert auprc(y, s) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    y, p = np.array([0, 0, 0, 1]), np.array([0, 1, 0, 1])
    assert balanced_accuracy(y, p) == pytest.approx((2 / 3 + 1) / 2)
    assert macro_f1(y, p) == pytest.approx((0.8 + 2 / 3) / 2)
    assert confusion(y, p, 2) == [[2, 1], [0, 1]]
    # kappa = 1 - sum(W O) / sum(W E) with W = (i-j)^2/4: 1 - 0.25 / 1.25
    assert quadratic_kappa(np.array([0, 1, 2]), np.array([0, 2, 2])) == pytest.approx(0.8)
    assert quadratic_kappa(np.array([0, 1, 2, 1]), np.array([0, 1, 2, 1])) == pytest.approx(1.0)


def test_against_sklearn_on_random_data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    proba = rng.dirichlet(np.ones(3), 200)
    proba[np.arange(200), y] += 0.3
    proba /= proba.sum(1, keepdims=True)
    pred = proba.argmax(1)
    w = rng.integers(1, 4, 200).astype(float)
    assert auroc_ovr(y, proba) == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr"))
    assert balanced_accuracy(y, pred, w) == pytest.approx(
        skm.balanced_accuracy_score(y, pred, sample_weight=w)
    )
    assert macro_f1(y, pred) == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert quadratic_kappa(y, pred) == pytest.approx(
        skm.cohen_kappa_score(y, pred, weights="quadratic")
    )
    assert confusion(y, pred, 3) == skm.confusion_matrix(y, pred).tolist()
    b = (y == 1).astype(int)
    assert auroc(b, proba[:, 1]) == pytest.approx(skm.roc_auc_score(b, proba[:, 1]))
    assert auprc(b, proba[:, 1]) == pytest.approx(skm.average_precision_score(b, proba[:, 1]))
    # Integer weights are the same as repeating rows (what the bootstrap relies on).
    rep = np.repeat(np.arange(200), w.astype(int))
    assert auroc(b, proba[:, 1], w) == pytest.approx(auroc(b[rep], proba[rep, 1]))


def _binary_problem(seed: int, n: int = 120, separation: float = 1.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    score = rng.normal(size=n) + separation * y
    return y, 1 / (1 + np.exp(-score))


@pytest.mark.parametrize("seed", range(5))
def test_intervals_contain_point_estimate(seed):
    y, s = _binary_problem(seed)
    groups = [f"p{i // 2}" for i in range(len(y))]
    proba = np.stack([1 - s, s], 1)
    figures = classification_metrics(y, proba, ordinal=False, groups=groups, n_boot=300, seed=seed)
    for key in ("auroc", "auprc", "balanced_accuracy", "macro_f1"):
        low, high = figures[key]["ci95"]
        assert low <= figures[key]["value"] <= high, key
        assert figures[key]["n_boot"] == 300
        assert 0.0 <= low < high <= 1.0


def test_bootstrap_seeded_and_patient_level_is_wider_for_clustered_data():
    y, s = _binary_problem(7, n=60)
    # Each patient contributes 4 identical images: resampling images pretends n = 240.
    y4, s4 = np.repeat(y, 4), np.repeat(s, 4)
    groups = np.repeat([f"p{i}" for i in range(60)], 4)
    image = bootstrap_ci(auroc, y4, s4, None, 500, seed=1)
    patient = bootstrap_ci(auroc, y4, s4, groups, 500, seed=1)
    assert bootstrap_ci(auroc, y4, s4, groups, 500, seed=1) == patient
    assert patient[1] - patient[0] > 1.5 * (image[1] - image[0])
    # Patient-level resampling of 4 copies equals image-level resampling of the originals.
    single = bootstrap_ci(auroc, y, s, None, 500, seed=1)
    assert patient[0] == pytest.approx(single[0], abs=0.03)


def test_structure_binary_multiclass_ordinal_and_fold_summary():
    y, s = _binary_problem(1)
    binary = classification_metrics(y, np.stack([1 - s, s], 1), n_boot=0)
    assert {"auroc", "auprc", "balanced_accuracy", "macro_f1", "confusion_matrix"} <= set(binary)
    assert "kappa_quadratic" not in binary and "ci95" not in binary["auroc"]
    y3 = np.array([0, 1, 2, 2, 1, 0])
    p3 = np.eye(3)[[0, 1, 2, 1, 1, 0]]
    multi = classification_metrics(y3, p3, ordinal=True, n_boot=0)
    assert multi["kappa_quadratic"]["value"] == pytest.approx(
        skm.cohen_kappa_score(y3, p3.argmax(1), weights="quadratic")
    )
    assert "auroc_ovr" in multi and "auroc" not in multi
    summary = summarise_folds([multi, classification_metrics(y3, np.eye(3)[y3], n_boot=0)])
    assert summary["balanced_accuracy"]["mean"] == pytest.approx(
        (multi["balanced_accuracy"]["value"] + 1.0) / 2
    )
    assert summary["balanced_accuracy"]["n"] == 2


def test_ties_and_weights_match_sklearn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    score = np.round(rng.random(300) * 0.6 + 0.3 * y, 1)  # many tied scores
    w = rng.integers(1, 5, 300).astype(float)
    assert auroc(y, score, w) == pytest.approx(skm.roc_auc_score(y, score, sample_weight=w))
    assert auprc(y, score, w) == pytest.approx(
        skm.average_precision_score(y, score, sample_weight=w)
    )
    y4, p4 = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    assert quadratic_kappa(y4, p4, w) == pytest.approx(
        skm.cohen_kappa_score(y4, p4, weights="quadratic", sample_weight=w)
    )
    assert macro_f1(y4, p4, w) == pytest.approx(
        skm.f1_score(y4, p4, average="macro", sample_weight=w)
    )
    with pytest.raises(ValueError):
        auroc(np.ones(5), np.arange(5.0))
