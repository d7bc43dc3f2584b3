"""The cross-slice objective of tomosynthesis (METHOD.md section 4) as one training step part.

`SliceObjective` holds the student and teacher projection heads and `SliceContrastLoss`. Its
`forward(student_backbone, teacher_backbone, batch)` runs both backbones on the batch's aligned
slice pairs (`batch["slice_pairs"]` [2, P, 1, S, S] from data/collate.py) and returns the
symmetric InfoNCE between the student's projected CLS of one slice and the teacher's projected
CLS of the other. Negatives are the pairs of other volumes in the batch, plus slices of the same
volume farther apart than `dbt.negative_gap_mm` when that is set. With `dbt.patch_level` the loss
adds `SliceContrastLoss.forward_patches` on corresponding patch tokens (same box and flip: token
n of slice k lies over token n of slice k + d); the other tissue tokens of the pair are the
negatives (tissue: `masking.patch_tissue_threshold` of `batch["slice_patch_tissue"]`).

With `dbt.patient_pairs` (FFDM only, data/patient_pairs.py) `forward_partners` is the same
InfoNCE with another image of the same woman as the positive: the student's CLS of each global
crop (already computed for DINO) against the teacher's CLS of a partner crop; other women's
partner crops in the batch are the negatives.

The teacher head follows the student head by EMA exactly like the rest of the teacher: `attach`
registers the heads as `student["slice_head"]` and `teacher["slice_head"]` of the meta
architecture, and `train/ema.py:ema_update` walks every named parameter of the student, so the
same update (same momentum schedule) reaches the head; optimiser groups and checkpoints pick it
up the same way.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from mammodino.errors import ConfigError
from mammodino.losses.slice_contrast import SliceContrastLoss, slice_negative_mask
from mammodino.models.heads import ProjectionHead
from mammodino.settings import DbtSettings

HEAD_NAME = "slice_head"


class SliceObjective(nn.Module):
    """Student/teacher projection heads and the cross-slice InfoNCE of a batch's slice pairs."""

    def __init__(
        self,
        embed_dim: int,
        proj_dim: int = 256,
        hidden_dim: int = 2048,
        temperature: float = 0.1,
        negative_gap_mm: float | None = None,
        patch_level: bool = False,
        patch_tissue_threshold: float = 0.5,
    ) -> None:
        super().__init__()
        if negative_gap_mm is not None and negative_gap_mm <= 0:
            raise ConfigError(
                f"dbt.negative_gap_mm must be positive or null, got {negative_gap_mm}"
            )
        self.student_head = ProjectionHead(embed_dim, proj_dim, hidden_dim)
        # The teacher head starts as an exact copy and only ever changes by EMA.
        self.teacher_head = copy.deepcopy(self.student_head).requires_grad_(False)
        self.loss = SliceContrastLoss(temperature)
        self.negative_gap_mm = negative_gap_mm
        self.patch_level = bool(patch_level)
        self.patch_tissue_threshold = float(patch_tissue_threshold)

    @classmethod
    def from_settings(
        cls, dbt: DbtSettings, patch_tissue_threshold: float, embed_dim: int
    ) -> SliceObjective:
        """From section `dbt` and `masking.patch_tissue_threshold` (the patch-level variant)."""
        return cls(
            embed_dim,
            proj_dim=dbt.proj_dim,
            hidden_dim=dbt.proj_hidden_dim,
            temperature=dbt.temperature,
            negative_gap_mm=dbt.negative_gap_mm,
            patch_level=dbt.patch_level,
            patch_tissue_threshold=patch_tissue_threshold,
        )

    def attach(self, student: nn.ModuleDict, teacher: nn.ModuleDict) -> None:
        """Register the heads in the meta architecture so EMA, optimiser and checkpoints see them."""
        student[HEAD_NAME] = self.student_head
        teacher[HEAD_NAME] = self.teacher_head

    def forward(
        self, student_backbone: nn.Module, teacher_backbone: nn.Module, batch: dict[str, Any]
    ) -> torch.Tensor:
        """Scalar cross-slice loss of the batch's P slice pairs (0, still in the graph, if P < 2)."""
        pairs = batch["slice_pairs"]
        n_pairs = pairs.shape[1]
        if n_pairs < 2:
            return self._no_loss()
        crops = pairs.flatten(0, 1)  # [2P, 1, S, S]: all first slices, then all second slices
        student = student_backbone.forward_features(crops)
        with torch.no_grad():
            teacher = teacher_backbone.forward_features(crops)
        volumes = batch["slice_volume"].to(crops.device)
        positions = batch["slice_position_mm"].to(crops.device)
        negatives = slice_negative_mask(volumes, positions, self.negative_gap_mm)
        loss = self._pair_loss(student["x_norm_clstoken"], teacher["x_norm_clstoken"], negatives)
        if self.patch_level:
            loss = loss + self._patch_loss(
                student["x_norm_patchtokens"],
                teacher["x_norm_patchtokens"],
                batch.get("slice_patch_tissue"),
            )
        return loss

    def forward_partners(
        self, student_cls: torch.Tensor, teacher_backbone: nn.Module, batch: dict[str, Any]
    ) -> torch.Tensor:
        """Patient-pair loss: each global crop's student CLS against the teacher's partner crop.

        `student_cls` [n_global * B, D] is the student's CLS of the batch's global crops
        (crop-major). Only the teacher runs on `batch["partner_crops"]` (no gradient), so the term
        costs one teacher pass at `dbt.pair_size` per pair. 0 (still in the graph) if P < 2.
        """
        crops = batch["partner_crops"]
        if crops.shape[0] < 2:
            return self._no_loss()
        with torch.no_grad():
            teacher = teacher_backbone.forward_features(crops)["x_norm_clstoken"]
            targets = self.teacher_head(teacher)
        rows = batch["partner_rows"].to(student_cls.device)
        batch_size = int(batch["batch_size"])
        anchors = torch.cat([student_cls[rows + v * batch_size] for v in range(batch["n_global"])])
        return self.loss.forward_partners(
            self.student_head(anchors), targets, batch["partner_groups"]
        )

    def _no_loss(self) -> torch.Tensor:
        """0 for a batch with fewer than two pairs (one pair has no negative).

        Tied to the student head, so every rank's graph stays alike under DDP.
        """
        return sum(p.sum() for p in self.student_head.parameters()) * 0.0

    def _pair_loss(
        self, student: torch.Tensor, teacher: torch.Tensor, negatives: torch.Tensor
    ) -> torch.Tensor:
        """InfoNCE of features [2P, D] (first slices, then second slices) through the heads."""
        with torch.no_grad():
            teacher_proj = self.teacher_head(teacher)
        student_a, student_b = self.student_head(student).chunk(2)
        teacher_a, teacher_b = teacher_proj.chunk(2)
        return self.loss(student_a, student_b, teacher_a, teacher_b, negatives)

    def _patch_loss(
        self, student: torch.Tensor, teacher: torch.Tensor, patch_tissue: torch.Tensor | None
    ) -> torch.Tensor:
        """Patch-level InfoNCE of aligned tokens [2P, N, D] (tissue tokens as anchors/negatives)."""
        with torch.no_grad():
            teacher_a, teacher_b = self.teacher_head(teacher).chunk(2)
        student_a, student_b = self.student_head(student).chunk(2)
        valid = None
        if patch_tissue is not None and patch_tissue.numel():
            valid = patch_tissue.to(student.device) >= self.patch_tissue_threshold
        return self.loss.forward_patches(student_a, student_b, teacher_a, teacher_b, valid)
