"""Patient-level folds, mini-MIAS pairs and nested label-efficiency subsets."""

from __future__ import annotations

import numpy as np
import pytest

from mammodino.errors import EvaluationError
from mammodino.eval.splits import (
    assert_patient_disjoint,
    label_fraction_subsets,
    patient_folds,
)
from mammodino.labels.mini_mias import mias_patient_id


def _cohort(n_patients: int = 60, seed: int = 0):
    """Patients with 1-4 images each and a per-patient class."""
    rng = np.random.default_rng(seed)
    groups, y = [], []
    for p in range(n_patients):
        label = p % 3
        for _ in range(rng.integers(1, 5)):
            groups.append(f"p{p}")
            y.append(label)
    return np.asarray(groups), np.asarray(y)


@pytest.mark.parametrize("stratify", [True, False])
def test_no_patient_in_two_folds(stratify):
    groups, y = _cohort()
    fold = patient_folds(groups, y if stratify else None, n_folds=5, seed=3)
    assert set(fold.tolist()) == {0, 1, 2, 3, 4}
    for g in np.unique(groups):
        assert len(set(fold[groups == g].tolist())) == 1
    # Every fold sees every class when stratified over 60 patients of 3 classes.
    if stratify:
        for k in range(5):
            assert set(y[fold == k].tolist()) == {0, 1, 2}


def test_folds_are_seeded_and_seed_changes_them():
    groups, y = _cohort()
    a = patient_folds(groups, y, 5, seed=1)
    assert np.array_equal(a, patient_folds(groups, y, 5, seed=1))
    assert not np.array_equal(a, patient_folds(groups, y, 5, seed=2))


def test_too_few_patients_and_crossing_detected():
    with pytest.raises(EvaluationError, match="cannot fill"):
        patient_folds(["a", "a", "b"], None, n_folds=5)
    with pytest.raises(EvaluationError, match="folds 0 and 1"):
        assert_patient_disjoint(np.array([0, 1]), ["a", "a"])


def test_mias_pairs():
    assert mias_patient_id("mdb001.png") == mias_patient_id("mdb002") == "mias001"
    assert mias_patient_id("/x/y/mdb003.png") == mias_patient_id("mdb004.pgm") == "mias002"
    assert mias_patient_id("mdb322.png") == "mias161"
    assert mias_patient_id("mdb002.png") != mias_patient_id("mdb003.png")
    assert mias_patient_id("image001.png") is None
    names = [f"mdb{i:03d}.png" for i in range(1, 323)]
    assert len({mias_patient_id(n) for n in names}) == 161


def test_label_fractions_nested_by_patient_and_cover_classes():
    groups, y = _cohort(100)
    train = np.flatnonzero(groups != "p0")
    subsets = label_fraction_subsets(train, groups, y, [0.01, 0.1, 0.5, 1.0], seed=0)
    assert np.array_equal(subsets[1.0], np.sort(train))
    previous = set()
    for f in (0.01, 0.1, 0.5, 1.0):
        members = set(subsets[f].tolist())
        assert previous <= members
        previous = members
        patients = set(groups[subsets[f]].tolist())
        # Whole patients only: every image of a chosen patient is in.
        for p in patients:
            assert set(np.flatnonzero(groups == p).tolist()) <= members
        assert set(y[subsets[f]].tolist()) == {0, 1, 2}
    assert len(set(groups[subsets[0.1]].tolist())) == 10  # ceil(0.1 * 99 patients)
    assert len(set(groups[subsets[0.01]].tolist())) == 3  # one per class beats ceil(0.99)
    again = label_fraction_subsets(train, groups, y, [0.1], seed=0)[0.1]
    assert np.array_equal(again, subsets[0.1])
    with pytest.raises(EvaluationError):
        label_fraction_subsets(train, groups, y, [0.0])
