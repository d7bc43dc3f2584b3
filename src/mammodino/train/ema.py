"""The teacher: an exponential moving average of the student's weights."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def copy_student_to_teacher(student: nn.Module, teacher: nn.Module) -> None:
    """Start the teacher as an exact copy of the student (same parameter names required)."""
    teacher_params = dict(teacher.named_parameters())
    for name, param in student.named_parameters():
        teacher_params[name].copy_(param)


@torch.no_grad()
def ema_update(student: nn.Module, teacher: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, for every parameter.

    One multi-tensor (`_foreach`) kernel per operation instead of a Python loop over hundreds of
    tensors, as DINOv2 does. Parameters are matched by name, so a teacher built without the
    student's drop path still lines up.
    """
    teacher_params = dict(teacher.named_parameters())
    student_list, teacher_list = [], []
    for name, param in student.named_parameters():
        student_list.append(param.detach())
        teacher_list.append(teacher_params[name])
    torch._foreach_mul_(teacher_list, momentum)
    torch._foreach_add_(teacher_list, student_list, alpha=1.0 - momentum)
