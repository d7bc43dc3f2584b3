"""Cross-slice contrastive loss for tomosynthesis: neighbouring slices of a volume are positives."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mammodino.errors import ConfigError


def slice_negative_mask(
    volume_ids: torch.Tensor, slice_positions_mm: torch.Tensor, gap_mm: float | None = None
) -> torch.Tensor:
    """bool [B, B]: True where sample j may serve as a negative of anchor i.

    Other volumes are always negatives; slices of the same volume only when `gap_mm` is given and
    they lie more than `gap_mm` apart (nearer slices show the same anatomy and are no negatives).
    """
    different = volume_ids.unsqueeze(0) != volume_ids.unsqueeze(1)
    if gap_mm is None:
        return different
    distance = (slice_positions_mm.unsqueeze(0) - slice_positions_mm.unsqueeze(1)).abs()
    return different | (distance > gap_mm)


class SliceContrastLoss(nn.Module):
    """Symmetric InfoNCE between student slice-A and teacher slice-B projections and vice versa.

    With L2-normalised projections u (student) and w (teacher), temperature tau and the allowed
    negatives N_i (all j != i unless `negative_mask` says otherwise):

        l(u, w) = 1/B * sum_i -log( exp(u_i.w_i/tau) / (exp(u_i.w_i/tau) + sum_{j in N_i} exp(u_i.w_j/tau)) )
        L = ( l(u_A, w_B) + l(u_B, w_A) ) / 2

    The teacher side carries no gradient (pass it detached or from the EMA teacher).
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"dbt.temperature {temperature} must be positive")
        self.temperature = temperature

    def forward(
        self,
        student_a: torch.Tensor,
        student_b: torch.Tensor,
        teacher_a: torch.Tensor,
        teacher_b: torch.Tensor,
        negative_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scalar loss of projections [B, P] of slice A and slice B of the same B volumes."""
        if not student_a.shape == student_b.shape == teacher_a.shape == teacher_b.shape:
            raise ConfigError("slice contrast: student and teacher projections differ in shape")
        return 0.5 * (
            self._info_nce(student_a, teacher_b, negative_mask)
            + self._info_nce(student_b, teacher_a, negative_mask)
        )

    def forward_patches(
        self,
        student_a: torch.Tensor,
        student_b: torch.Tensor,
        teacher_a: torch.Tensor,
        teacher_b: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Patch-level variant on aligned patch tokens [B, N, P] of the two slices.

        Token n of slice A and token n of slice B are positives; the other valid tokens of the same
        image pair are negatives. `valid` (bool [B, N], e.g. tissue patches) keeps background
        tokens out as anchors and as negatives. Same symmetric formula as `forward`, averaged over
        valid anchor tokens.
        """
        if not student_a.shape == student_b.shape == teacher_a.shape == teacher_b.shape:
            raise ConfigError("slice contrast: student and teacher patch tokens differ in shape")
        return 0.5 * (
            self._patch_info_nce(student_a, teacher_b, valid)
            + self._patch_info_nce(student_b, teacher_a, valid)
        )

    def forward_partners(
        self, student: torch.Tensor, teacher: torch.Tensor, groups: torch.Tensor
    ) -> torch.Tensor:
        """InfoNCE of anchors [V * P, D] (V views of P samples, view-major) against targets [P, D].

        Anchor k's positive is target k mod P (a crop of another image of the same patient);
        targets of other patient `groups` [P] are its negatives, those of its own patient are left
        out. Averaged over the anchors.
        """
        n_targets = teacher.shape[0]
        if student.shape[0] % n_targets or student.shape[1:] != teacher.shape[1:]:
            raise ConfigError("patient pairs: student anchors and teacher targets do not match")
        u = F.normalize(student.float(), dim=-1)
        w = F.normalize(teacher.detach().float(), dim=-1)
        logits = u @ w.t() / self.temperature  # [V * P, P]
        labels = torch.arange(n_targets, device=logits.device).repeat(student.shape[0] // n_targets)
        groups = groups.to(logits.device)
        allowed = groups[labels].unsqueeze(1) != groups.unsqueeze(0)
        allowed[torch.arange(labels.numel(), device=logits.device), labels] = True
        return F.cross_entropy(logits.masked_fill(~allowed, float("-inf")), labels)

    def _patch_info_nce(
        self, anchors: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None
    ) -> torch.Tensor:
        u = F.normalize(anchors.float(), dim=-1)
        w = F.normalize(targets.detach().float(), dim=-1)
        logits = u @ w.transpose(1, 2) / self.temperature  # [B, N, N]
        b, n, _ = logits.shape
        if valid is None:
            valid = torch.ones(b, n, dtype=torch.bool, device=logits.device)
        valid = valid.to(logits.device).bool()
        eye = torch.eye(n, dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(~(valid.unsqueeze(1) | eye), float("-inf"))
        labels = torch.arange(n, device=logits.device).expand(b, n)
        losses = F.cross_entropy(logits.reshape(b * n, n), labels.reshape(-1), reduction="none")
        weights = valid.reshape(-1).float()
        return (losses * weights).sum() / weights.sum().clamp(min=1.0)

    def _info_nce(
        self, anchors: torch.Tensor, targets: torch.Tensor, negative_mask: torch.Tensor | None
    ) -> torch.Tensor:
        u = F.normalize(anchors.float(), dim=-1)
        w = F.normalize(targets.detach().float(), dim=-1)
        logits = u @ w.t() / self.temperature
        if negative_mask is not None:
            eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
            logits = logits.masked_fill(~(negative_mask.to(logits.device) | eye), float("-inf"))
        labels = torch.arange(logits.shape[0], device=logits.device)
        return F.cross_entropy(logits, labels)
