"""DINO image-level loss: cross-entropy between teacher and student crop distributions."""

from __future__ import annotations

import torch
from torch import nn

from mammodino.errors import ConfigError
from mammodino.losses.soft_cross_entropy import soft_cross_entropy


class DINOLoss(nn.Module):
    """Mean cross-entropy over (student crop, teacher global crop) pairs of different views.

    With student logits s (global and local crops), teacher probabilities p (global crops, already
    centered/sharpened by a centering strategy) and student temperature T_s:

        L = 1/|P| * sum_{(i, j) in P} 1/B * sum_b  -sum_k p_{j,b,k} log softmax(s_{i,b} / T_s)_k

    where P holds every (student crop i, teacher global crop j) except i == j for global crops:
    n_g * (n_g - 1) global pairs plus n_l * n_g local pairs, exactly the terms DINOv2 averages.
    Tensors are crop-major like the collate output: rows [c*B:(c+1)*B] belong to crop c.
    """

    def __init__(self, student_temp: float = 0.1) -> None:
        super().__init__()
        if student_temp <= 0:
            raise ConfigError(f"dino.student_temp {student_temp} must be positive")
        self.student_temp = student_temp

    def forward(
        self,
        student_global_logits: torch.Tensor,
        teacher_probs: torch.Tensor,
        n_global: int,
        student_local_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scalar loss; global logits [n_g*B, K], teacher probs [n_g*B, K], local [n_l*B, K]."""
        if n_global < 1 or teacher_probs.shape[0] % n_global:
            raise ConfigError(f"{teacher_probs.shape[0]} teacher rows do not split into {n_global}")
        if student_global_logits.shape != teacher_probs.shape:
            raise ConfigError(
                f"student global logits {tuple(student_global_logits.shape)} and teacher "
                f"probabilities {tuple(teacher_probs.shape)} differ in shape"
            )
        batch = teacher_probs.shape[0] // n_global
        teacher = teacher_probs.float().reshape(n_global, batch, -1)
        # Sum over teacher crops once per student crop: sum_j p_j . log q_i = (sum_j p_j) . log q_i.
        teacher_total = teacher.sum(dim=0, keepdim=True)
        total = student_global_logits.new_zeros((), dtype=torch.float32)
        n_pairs = 0
        if n_global > 1:
            # Every teacher crop except the student's own view.
            others = teacher_total - teacher
            logits = student_global_logits.reshape(n_global, batch, -1)
            total = total + soft_cross_entropy(logits, others, self.student_temp).sum() / batch
            n_pairs += n_global * (n_global - 1)
        if student_local_logits is not None and student_local_logits.numel():
            if student_local_logits.shape[0] % batch:
                raise ConfigError(
                    f"{student_local_logits.shape[0]} local rows are not a multiple of batch {batch}"
                )
            n_local = student_local_logits.shape[0] // batch
            logits = student_local_logits.reshape(n_local, batch, -1)
            loss = soft_cross_entropy(logits, teacher_total, self.student_temp)
            total = total + loss.sum() / batch
            n_pairs += n_local * n_global
        if n_pairs == 0:
            raise ConfigError("the DINO loss needs 2 global crops or at least one local crop")
        return total / n_pairs
