"""Learning-health signals against hand computations, and the plateau/collapse detector."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from helpers import settings_of
from mammodino.train.health import (
    HealthDetector,
    cls_spread,
    normalised_entropy,
    prototypes_used,
    student_teacher_agreement,
)

K = 16


def test_uniform_targets_use_one_prototype_and_have_entropy_one():
    probs = torch.full((8, K), 1.0 / K)
    assert float(normalised_entropy(probs)) == pytest.approx(1.0, abs=1e-6)
    # Ties resolve to the first index: every row's argmax is prototype 0.
    assert float(prototypes_used(probs)) == 1.0


def test_one_hot_targets_count_distinct_prototypes():
    rows = torch.tensor([3, 3, 5, 7, 7, 7, 9, 1])
    probs = torch.nn.functional.one_hot(rows, K).float()
    assert float(normalised_entropy(probs)) == pytest.approx(0.0, abs=1e-6)
    assert float(prototypes_used(probs)) == 5.0  # {1, 3, 5, 7, 9}


def test_agreement_counts_cross_view_pairs_like_the_dino_loss():
    batch, n_global = 4, 2
    teacher_ids = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 5]])  # crop-major rows
    teacher = torch.nn.functional.one_hot(teacher_ids.flatten(), K).float()
    # Student global crop 0 against teacher crop 1: matches at b = 0, 1, 2 (3 of 4);
    # student global crop 1 against teacher crop 0: matches at b = 0 only (1 of 4).
    student_global = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 9, 0, 8, 8, 8]), K).float()
    # One local crop: against teacher crop 0 matches b = 0, 1, 2, 3; against crop 1 b = 0, 1, 2.
    student_local = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3]), K).float()
    global_only = student_teacher_agreement(teacher, student_global, n_global)
    assert float(global_only) == pytest.approx((3 + 1) / 8)
    with_local = student_teacher_agreement(teacher, student_global, n_global, student_local)
    assert float(with_local) == pytest.approx((3 + 1 + 4 + 3) / (8 + 8))
    assert batch * n_global == teacher.shape[0]


def test_collapsed_cls_has_zero_spread_and_rank_one():
    cls = torch.randn(1, 32).repeat(10, 1)
    spread = cls_spread(cls)
    assert float(spread["cls/std"]) == pytest.approx(0.0, abs=1e-6)
    assert float(spread["cls/effective_rank"]) == pytest.approx(1.0)


def test_effective_rank_of_a_known_spectrum():
    # Centred rows +-e1, +-e2 (4 points): two equal singular values -> effective rank exactly 2.
    cls = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0]])
    spread = cls_spread(cls)
    assert float(spread["cls/effective_rank"]) == pytest.approx(2.0, rel=1e-5)
    # Per dimension std over the 4 rows: e1 and e2 columns sqrt(2/3), the third 0 -> mean.
    assert float(spread["cls/std"]) == pytest.approx(2 * math.sqrt(2 / 3) / 3, rel=1e-5)
    # Three points on one axis, one on another: centred singular values by hand.
    points = torch.tensor([[1.0, 0], [1.0, 0], [1.0, 0], [0, 1.0]])
    singular = torch.linalg.svdvals(points - points.mean(dim=0))
    p = singular / singular.sum()
    expected = math.exp(float(-(p * p.clamp_min(1e-30).log()).sum()))
    assert singular[1] < 1e-6  # a line: one direction of spread
    assert float(cls_spread(points)["cls/effective_rank"]) == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(1.0, abs=1e-5)


def detector_of(n_prototypes: int, **changes) -> HealthDetector:
    """The detector of the default `health` section with some values changed."""
    health = dataclasses.replace(settings_of().health, **changes)
    return HealthDetector.from_settings(health, n_prototypes)


def _records(losses, ranks):
    return [
        {"step": 10 * (i + 1), "loss/dino": loss, "cls/effective_rank": rank}
        for i, (loss, rank) in enumerate(zip(losses, ranks, strict=True))
    ]


def test_detector_fires_once_on_a_constructed_plateau():
    detector = detector_of(4096, patience=5)
    ln_k = math.log(4096)
    fired = [detector.update(r) for r in _records([ln_k - 0.01] * 8, [6.0] * 8)]
    kinds = [[kind for kind, _ in f] for f in fired]
    assert kinds == [[], [], [], [], ["plateau"], [], [], []]
    message = fired[4][0][1]
    assert "step 50" in message and "8.318" in message and "heads.dino_batch_norm" in message


def test_detector_silent_on_a_healthy_run_and_rearms_after_leaving():
    ln_k = math.log(1024)
    detector = detector_of(1024, patience=3)
    healthy = _records([ln_k * f for f in (0.999, 0.97, 0.9, 0.8, 0.7, 0.6)], [5.0] * 6)
    assert all(detector.update(r) == [] for r in healthy)
    # Back to the plateau, away, and back again: two warnings, one per episode.
    episode = _records([ln_k] * 3 + [0.5 * ln_k] + [ln_k] * 3, [5.0] * 7)
    fired = [kind for r in episode for kind, _ in detector.update(r)]
    assert fired == ["plateau", "plateau"]


def test_detector_reports_collapse_of_the_cls_embeddings():
    detector = detector_of(64, patience=2, min_effective_rank=1.5)
    records = _records([1.0] * 3, [1.05, 1.02, 1.01])
    fired = [kind for r in records for kind, _ in detector.update(r)]
    assert fired == ["collapse"]
    # Records without loss terms (monitor-only lines) neither extend nor break a streak.
    assert detector.update({"step": 40, "monitor/knn_acc": 0.5}) == []


def test_finish_warns_when_a_short_run_ends_on_the_plateau():
    # The old demo's shape: 32 records near ln K, noise breaking every streak before patience 20.
    ln_k = math.log(4096)
    detector = detector_of(4096, patience=20)
    noisy = [ln_k - (0.12 if i % 8 == 7 else 0.03) for i in range(32)]
    assert all(detector.update(r) == [] for r in _records(noisy, [6.0] * 32))
    fired = detector.finish(320)
    assert [kind for kind, _ in fired] == ["plateau"]
    # Mean of the last 8 records (a quarter): seven at ln K - 0.03, one at ln K - 0.12.
    mean = ln_k - (7 * 0.03 + 0.12) / 8
    assert f"averaged {mean:.3f} over its last 8 logged steps" in fired[0][1]
    assert fired[0][1].startswith("step 320: the run ended on the plateau")
    assert "heads.dino_batch_norm" in fired[0][1] and "more steps (optim.epochs)" in fired[0][1]


def test_finish_silent_on_a_run_that_left_the_plateau_or_already_warned():
    ln_k = math.log(64)
    # Starts at ln K, as every run does, and leaves it: the end is what counts.
    detector = detector_of(64, patience=20)
    leaving = [ln_k] * 12 + [ln_k - 0.1 * i for i in range(1, 13)]
    assert all(detector.update(r) == [] for r in _records(leaving, [6.0] * 24))
    assert detector.finish(240) == []
    # The streak warning of an episode that lasts to the end is not repeated.
    detector = detector_of(64, patience=5)
    fired = [kind for r in _records([ln_k] * 10, [6.0] * 10) for kind, _ in detector.update(r)]
    assert fired == ["plateau"] and detector.finish(100) == []
    # Too few records to judge (fewer than patience / 2): silent, whatever they show.
    short = detector_of(64, patience=20)
    assert all(short.update(r) == [] for r in _records([ln_k] * 9, [1.0] * 9))
    assert short.finish(90) == []


def test_finish_reports_a_run_that_ended_collapsed():
    detector = detector_of(64, patience=20, min_effective_rank=1.5)
    ranks = [6.0] * 8 + [1.6, 1.2] * 4  # dips that never make a streak; last quarter mean 1.4
    assert all(detector.update(r) == [] for r in _records([1.0] * 16, ranks))
    fired = detector.finish(160)
    assert [kind for kind, _ in fired] == ["collapse"]
    assert "effective rank averaged 1.40 < 1.5 over its last 4 logged steps" in fired[0][1]
