"""Patient-level splits: k-fold cross-validation where a patient never crosses folds, and nested
label-efficiency subsets of the training patients."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mammodino.errors import EvaluationError


def patient_folds(
    groups: Sequence[str], y: Sequence | None = None, n_folds: int = 5, seed: int = 0
) -> np.ndarray:
    """Fold number (0..n_folds-1) of each sample; all images of a patient share one fold.

    With `y` the folds are stratified by class (scikit-learn's StratifiedGroupKFold), so each fold
    sees every class where the data allow it.
    """
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    groups = np.asarray([str(g) for g in groups])
    n_patients = len(np.unique(groups))
    if n_folds < 2:
        raise EvaluationError(f"--folds must be at least 2; got {n_folds}")
    if n_patients < n_folds:
        raise EvaluationError(
            f"{n_patients} patients cannot fill {n_folds} folds (lower --folds or add data)"
        )
    fold = np.full(len(groups), -1, dtype=np.int64)
    dummy = np.zeros((len(groups), 1))
    if y is not None:
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(dummy, np.asarray(y), groups)
    else:
        # GroupKFold has no seed: shuffle the patient order ourselves for a seeded assignment.
        rng = np.random.default_rng(seed)
        names = np.unique(groups)
        rank = dict(zip(names, rng.permutation(len(names)), strict=True))
        splits = GroupKFold(n_splits=n_folds).split(dummy, groups=[rank[g] for g in groups])
    for k, (_, test) in enumerate(splits):
        fold[test] = k
    assert_patient_disjoint(fold, groups)
    return fold


def assert_patient_disjoint(fold: np.ndarray, groups: Sequence[str]) -> None:
    """Raise if any patient has images in two folds."""
    seen: dict[str, int] = {}
    for f, g in zip(fold.tolist(), groups, strict=True):
        if seen.setdefault(str(g), f) != f:
            raise EvaluationError(f"a patient has images in folds {seen[str(g)]} and {f}")


def label_fraction_subsets(
    train_index: np.ndarray,
    groups: Sequence[str],
    y: Sequence,
    fractions: Sequence[float],
    seed: int = 0,
) -> dict[float, np.ndarray]:
    """Nested subsets of the training images, drawn by patient: fraction -> sorted image indices.

    One seeded patient order serves every fraction, so the 1% patients are inside the 10% ones.
    The order starts with one patient per class, so even the smallest subset sees every class;
    each subset holds at least that many patients.
    """
    groups = np.asarray([str(g) for g in groups])
    y = np.asarray(y)
    train_index = np.asarray(train_index)
    for f in fractions:
        if not 0 < f <= 1:
            raise EvaluationError(f"label fraction {f} is not in (0, 1]")
    rng = np.random.default_rng(seed)
    patients = np.unique(groups[train_index])
    order = list(rng.permutation(patients))
    patient_classes = {p: set() for p in patients}
    for i in train_index:
        patient_classes[groups[i]].add(y[i].item() if hasattr(y[i], "item") else y[i])
    first: list[str] = []
    for c in sorted({v for s in patient_classes.values() for v in s}, key=str):
        if not any(c in patient_classes[p] for p in first):
            first.append(next(p for p in order if c in patient_classes[p] and p not in first))
    order = first + [p for p in order if p not in first]
    rank = {p: r for r, p in enumerate(order)}
    out: dict[float, np.ndarray] = {}
    for f in fractions:
        n = max(len(first), math.ceil(f * len(patients)))
        chosen = np.asarray([rank[groups[i]] < n for i in train_index])
        out[float(f)] = np.sort(train_index[chosen])
    return out
