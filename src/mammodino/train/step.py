"""One optimiser step: accumulated forward/backward -> non-finite check -> clip -> AdamW -> EMA.

Gradient accumulation: the step sums the gradients of its micro-batches, each loss divided by
their number; what stays per micro-batch is listed in train/loop.py. A non-finite loss term (or,
outside fp16, a non-finite gradient norm) skips the step: no optimiser or EMA update, and the
result names the terms and the parameters with non-finite gradients. With fp16 the GradScaler
skips steps whose gradients overflow by itself (that is how it finds its scale), so only losses
count there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch

from mammodino.train.ema import ema_update


@dataclass
class StepResult:
    """Loss terms of one optimiser step (mean over micro-batches) and what went wrong, if anything."""

    losses: dict[str, float]
    grad_norm: float = float("nan")
    skipped: bool = False
    bad_terms: list[str] = field(default_factory=list)
    bad_params: list[str] = field(default_factory=list)


def nonfinite_grad_names(module: torch.nn.Module) -> list[str]:
    """Names of parameters whose gradient holds NaN or inf."""
    return [
        name
        for name, p in module.named_parameters()
        if p.grad is not None and not bool(torch.isfinite(p.grad).all())
    ]


def optimizer_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    micro_batches: list[dict[str, Any]],
    values: dict[str, float],
    *,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager],
    clip_grad: float,
    frozen: bool,
    freeze_in_place: bool,
    fp16: bool,
) -> StepResult:
    """One step of `model` (MammoDINO) over `micro_batches` at the schedule `values`.

    `frozen`: the backbone gets no update this step (continued pretraining's head warm-up);
    `freeze_in_place` also switches its `requires_grad` (one process: no backward through it),
    else its gradients are dropped (DDP/FSDP2 keep the parameters they were built with).
    """
    student, n = model.student, len(micro_batches)
    if freeze_in_place:
        student["backbone"].requires_grad_(not frozen)
    totals: dict[str, torch.Tensor] = {}
    for batch in micro_batches:
        batch = {
            k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()
        }
        with autocast():
            losses = model(batch, values["teacher_temp"])
        scaler.scale(losses["loss"] / n).backward()
        # Every `loss` / `loss/<term>` the model returns is logged (issue 5 adds loss/slice).
        for key, value in losses.items():
            value = torch.as_tensor(value).detach().to(device, torch.float32) / n
            totals[key] = totals[key] + value if key in totals else value
    # One host sync for all logged values (each float() would wait for the device).
    sums = dict(zip(totals, torch.stack(list(totals.values())).tolist(), strict=True))
    bad_terms = [k for k, v in sums.items() if not math.isfinite(v) and k != "loss"]
    if not bad_terms and not math.isfinite(sums["loss"]):
        bad_terms = ["loss"]  # finite terms, non-finite weighted sum (an inf weight)
    grad_norm = float("nan")
    if frozen:
        # No gradient: AdamW skips these parameters (no update, no moments, no decay).
        for param in student["backbone"].parameters():
            param.grad = None
    if not bad_terms:
        scaler.unscale_(optimizer)
        # DINOv2 clips the backbone and each head separately.
        norms = [
            torch.nn.utils.clip_grad_norm_(m.parameters(), clip_grad) for m in student.values()
        ]
        grad_norm = float(torch.stack(norms).norm())
        if not math.isfinite(grad_norm) and not fp16:
            bad_terms = ["gradients"]
    if bad_terms:
        result = StepResult(sums, grad_norm, True, bad_terms, nonfinite_grad_names(student))
        optimizer.zero_grad(set_to_none=True)
        return result
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    for part, module in student.items():
        if not (frozen and part == "backbone"):  # a frozen backbone's EMA is the identity
            ema_update(module, model.teacher[part], values["momentum"])
    return StepResult(sums, grad_norm)
