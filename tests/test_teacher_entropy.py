"""The plateau diagnostic: normalised entropy of the teacher's DINO targets."""

from __future__ import annotations

import math

import pytest
import torch

from mammodino.train.health import normalised_entropy


def test_uniform_rows_give_one_and_one_hot_rows_give_zero():
    assert float(normalised_entropy(torch.full((3, 64), 1 / 64))) == pytest.approx(1.0, abs=1e-6)
    assert float(normalised_entropy(torch.eye(8))) == pytest.approx(0.0, abs=1e-6)


def test_hand_computed_mean_over_rows():
    probs = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    expected = (math.log(2) + math.log(4)) / 2 / math.log(4)  # 0.75
    assert float(normalised_entropy(probs)) == pytest.approx(expected, rel=1e-6)


def test_empty_input_is_zero_not_nan():
    assert float(normalised_entropy(torch.empty(0, 16))) == 0.0
