"""Teacher EMA: the update is exact (issue 4, acceptance 1)."""

from __future__ import annotations

import torch
from torch import nn

from mammodino.train.ema import copy_student_to_teacher, ema_update


def test_ema_update_is_exact():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.Linear(7, 3))
    teacher = nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.Linear(7, 3))
    old_teacher = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    momentum = 0.9921875  # exact in binary, so the expected value is exact too
    ema_update(student, teacher, momentum)
    for name, param in teacher.named_parameters():
        student_param = dict(student.named_parameters())[name]
        expected = old_teacher[name] * momentum + student_param.detach() * (1 - momentum)
        assert torch.equal(param, expected), name


def test_momentum_one_keeps_teacher_and_copy_matches_student():
    torch.manual_seed(0)
    student, teacher = nn.Linear(4, 4), nn.Linear(4, 4)
    copy_student_to_teacher(student, teacher)
    assert torch.equal(student.weight, teacher.weight)
    frozen = teacher.weight.detach().clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    ema_update(student, teacher, 1.0)
    assert torch.equal(teacher.weight, frozen)
