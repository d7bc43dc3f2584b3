"""iBOT patch-level loss: masked student patch tokens predict the teacher's visible ones."""

from __future__ import annotations

import torch
from torch import nn

from mammodino.errors import ConfigError
from mammodino.losses.soft_cross_entropy import soft_cross_entropy


class IBOTPatchLoss(nn.Module):
    """Cross-entropy over masked tokens, each image's tokens weighted 1/n_masked(image).

    With masks m (bool [B, N]), student patch logits s, teacher patch probabilities p (centered and
    sharpened by a centering strategy) and student temperature T_s:

        L = 1/|I| * sum_{b in I} 1/n_b * sum_{n: m_bn} -sum_k p_{bnk} log softmax(s_bn / T_s)_k

    where n_b = sum_n m_bn and I = {b : n_b > 0}: a mean over the masked tokens of each image, then a
    mean over the images that carry a mask. (DINOv2 divides by all B images instead, which scales
    its loss with the mask probability; we average over masked images, as METHOD.md s3 asks.)
    Tokens with m = False take no part and get zero gradient. Inputs are either dense ([B, N, K])
    or only the masked rows ([M, K], ordered like `masks[masks]`), which saves running the
    65536-way head on every token.
    """

    def __init__(self, student_temp: float = 0.1) -> None:
        super().__init__()
        if student_temp <= 0:
            raise ConfigError(f"ibot student_temp {student_temp} must be positive")
        self.student_temp = student_temp

    def forward(
        self, student_logits: torch.Tensor, teacher_probs: torch.Tensor, masks: torch.Tensor
    ) -> torch.Tensor:
        """Scalar loss (0 when nothing is masked, still attached to the graph)."""
        masks = masks.bool()
        if student_logits.ndim == 3:
            student_logits = student_logits[masks]
        if teacher_probs.ndim == 3:
            teacher_probs = teacher_probs[masks]
        n_masked = int(masks.sum())
        if student_logits.shape[0] != n_masked or teacher_probs.shape != student_logits.shape:
            raise ConfigError(
                f"{student_logits.shape[0]} student and {teacher_probs.shape[0]} teacher rows for "
                f"{n_masked} masked tokens"
            )
        if n_masked == 0:
            return student_logits.sum() * 0.0
        per_image = masks.sum(dim=-1)
        n_images = (per_image > 0).sum()  # a tensor: no second host sync
        token_loss = soft_cross_entropy(student_logits, teacher_probs, self.student_temp)
        # Weight of each masked token: 1/n_b of its image, rows in the order of masks[masks].
        weights = (1.0 / per_image.clamp(min=1).float()).unsqueeze(-1).expand_as(masks)[masks]
        return (token_loss * weights).sum() / n_images
