"""The MammoDINO meta-architecture: student and EMA teacher (ViT + DINO head [+ iBOT head]) and
the three named steps of a training iteration, as DINOv3 splits them:

1. `get_teacher_output`: the teacher sees the unmasked global crops; its CLS logits and the
   logits of the tokens the student will see masked become target probabilities (centering or
   Sinkhorn-Knopp at the current teacher temperature).
2. `get_student_output`: the student sees masked global crops and the local crops.
3. `compute_losses`: DINO (CLS, cross-view), iBOT (masked tissue tokens), KoLeo (student CLS of
   each global crop), with `dbt.slice_loss_weight` > 0 the DBT cross-slice InfoNCE of the
   batch's slice pairs (train/slice_objective.py), weighted into `loss`; with
   `dbt.patient_pairs` the same InfoNCE between images of one woman (`loss/pair`).

Everything in a micro-batch stays in that micro-batch: centering/Sinkhorn normalise over its
crops and tokens, KoLeo looks for neighbours among its images. Gradient accumulation therefore
sums the gradients of micro-batch losses; it is not the loss of one big batch.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mammodino.config import Config
from mammodino.errors import ConfigError
from mammodino.losses import DINOLoss, IBOTPatchLoss, KoLeoLoss, build_centering
from mammodino.models.heads import DINOHead
from mammodino.models.vit import build_vit, compile_blocks
from mammodino.settings import ModelSettings, Settings, as_settings
from mammodino.train.health import (
    cls_spread,
    normalised_entropy,
    student_teacher_agreement,
    used_prototypes,
)
from mammodino.train.slice_objective import SliceObjective


def build_backbone(
    model: ModelSettings, img_size: int, activation_checkpointing: bool = False
) -> nn.Module:
    """The student ViT of section `model` at `img_size` (the global crop size)."""
    return build_vit(
        model.arch,
        img_size=img_size,
        patch_size=model.patch_size,
        in_chans=model.in_chans,
        num_register_tokens=model.num_register_tokens,
        layerscale_init=model.layerscale_init,
        drop_path_rate=model.drop_path_rate,
        activation_checkpointing=activation_checkpointing,
    )


class MammoDINO(nn.Module):
    """Student, teacher, their heads, the losses and the centering state of one run."""

    def __init__(self, cfg: Settings | Config) -> None:
        super().__init__()
        s = as_settings(cfg)
        heads, dino = s.heads, s.dino
        backbone = build_backbone(
            s.model, s.crops.global_size, s.distributed.activation_checkpointing
        )
        head_args = {
            "hidden_dim": heads.dino_hidden_dim,
            "bottleneck_dim": heads.dino_bottleneck_dim,
            "nlayers": heads.dino_nlayers,
            "batch_norm": heads.dino_batch_norm,
        }
        student = {
            "backbone": backbone,
            "dino_head": DINOHead(backbone.embed_dim, heads.dino_out_dim, **head_args),
        }
        self.separate_ibot_head = heads.ibot_separate_head
        ibot_dim = heads.ibot_out_dim if self.separate_ibot_head else heads.dino_out_dim
        if self.separate_ibot_head:
            student["ibot_head"] = DINOHead(backbone.embed_dim, ibot_dim, **head_args)
        self.student = nn.ModuleDict(student)
        # The teacher starts as an exact copy; it never gets gradients, only EMA updates, and
        # stays in eval mode (no drop path).
        self.teacher = copy.deepcopy(self.student)
        self.teacher.requires_grad_(False)
        self.teacher.eval()

        self.weights = {
            "dino": dino.loss_weight,
            "ibot": s.ibot.loss_weight,
            "koleo": dino.koleo_loss_weight,
        }
        # DBT cross-slice objective (docs/tomosynthesis.md): its projection heads join the student
        # and teacher, so EMA, optimiser groups and checkpoints cover them. Weight 0 builds none,
        # and so does data.dbt_fraction=0: such batches never carry slice pairs (FFDM-only runs
        # keep their parameters and checkpoint layout).
        # Patient pairs (dbt.patient_pairs, FFDM only) share its heads and weight, logged as `pair`.
        self.slice_objective = None
        self.slice_pairs = s.dbt.slice_loss_weight > 0 and s.data.dbt_fraction > 0
        self.patient_pairs = s.dbt.uses_patient_pairs
        if self.patient_pairs and s.dbt.patch_level:
            raise ConfigError(
                "dbt.patch_level aligns the tokens of two slices of one volume; the images of a "
                "patient pair are not aligned: set dbt.patch_level=false"
            )
        if self.slice_pairs or self.patient_pairs:
            self.slice_objective = SliceObjective.from_settings(
                s.dbt, s.masking.patch_tissue_threshold, backbone.embed_dim
            )
            self.slice_objective.attach(self.student, self.teacher)
        if self.slice_pairs:
            self.weights["slice"] = s.dbt.slice_loss_weight
        if self.patient_pairs:
            self.weights["pair"] = s.dbt.slice_loss_weight
        self.dino_centering = build_centering(
            dino.centering, heads.dino_out_dim, dino.center_momentum, dino.sinkhorn_iterations
        )
        self.ibot_centering = build_centering(
            dino.centering, ibot_dim, dino.center_momentum, dino.sinkhorn_iterations
        )
        self.dino_loss = DINOLoss(dino.student_temp)
        self.ibot_loss = IBOTPatchLoss(dino.student_temp)
        self.koleo_loss = KoLeoLoss()
        # Teacher argmax prototypes since the last log line (dino/prototypes_used_window): a flag
        # per prototype on the device, so that no step waits for the host to read argmaxes.
        self.prototypes_seen: torch.Tensor | None = None

    @property
    def depth(self) -> int:
        """Number of transformer blocks (for layer-wise lr decay)."""
        return len(self.student["backbone"].blocks)

    def compile_blocks(self) -> int:
        """`torch.compile` every transformer block of student and teacher (`train.compile`).

        Heads stay eager: their row count (masked tokens) changes every step. Returns the blocks
        compiled.
        """
        return compile_blocks(self.student["backbone"], self.teacher["backbone"])

    def init_backbones(self, source: str | Path) -> list[str]:
        """Start student and teacher backbones from a file (ours, DINOv2 hub, HF folder, timm).

        models/convert.py maps the names, RGB -> 1 channel and the position embedding to the
        training size; returns the optional keys the file lacked (e.g. no mask token).
        """
        from mammodino.models.convert import load_backbone_weights

        absent = load_backbone_weights(self.student["backbone"], source)
        self.teacher["backbone"].load_state_dict(self.student["backbone"].state_dict())
        return absent

    def train(self, mode: bool = True) -> MammoDINO:
        """Train mode for the student only; the teacher always runs in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    @staticmethod
    def _heads(parts: nn.ModuleDict, cls: torch.Tensor, masked: torch.Tensor, separate: bool):
        """(CLS logits, masked-token logits); one head call on both when the head is shared."""
        if separate:
            return parts["dino_head"](cls), parts["ibot_head"](masked)
        # With a batch-norm head, CLS rows are standardised among CLS rows, not drowned in the far
        # more numerous masked tokens; still one call, as DDP wants.
        groups = (cls.shape[0], masked.shape[0])
        logits = parts["dino_head"](torch.cat([cls, masked]), groups)
        return logits[: cls.shape[0]], logits[cls.shape[0] :]

    @torch.no_grad()
    def get_teacher_output(self, batch: dict[str, Any], teacher_temp: float) -> dict[str, Any]:
        """Teacher target probabilities of the global crops' CLS and of the masked tokens."""
        out = self.teacher["backbone"].forward_features(batch["global_crops"])
        masked = out["x_norm_patchtokens"][batch["masks"]]
        cls_logits, patch_logits = self._heads(
            self.teacher, out["x_norm_clstoken"], masked, self.separate_ibot_head
        )
        dino_probs = self.dino_centering.teacher_probs(cls_logits, teacher_temp)
        self.dino_centering.update(cls_logits)
        ibot_probs = self.ibot_centering.teacher_probs(patch_logits, teacher_temp)
        self.ibot_centering.update(patch_logits)
        return {
            "dino_probs": dino_probs,
            "ibot_probs": ibot_probs,
            "cls": out["x_norm_clstoken"],
        }

    def get_student_output(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Student CLS features and logits of masked global crops and local crops."""
        backbone, masks = self.student["backbone"], batch["masks"]
        has_local = batch["local_crops"].numel() > 0
        crops = (
            [batch["global_crops"], batch["local_crops"]] if has_local else [batch["global_crops"]]
        )
        outs = backbone.forward_features(crops, [masks, None] if has_local else [masks])
        global_cls = outs[0]["x_norm_clstoken"]
        cls = torch.cat([global_cls, outs[1]["x_norm_clstoken"]]) if has_local else global_cls
        masked = outs[0]["x_norm_patchtokens"][masks]
        cls_logits, patch_logits = self._heads(self.student, cls, masked, self.separate_ibot_head)
        n_global_rows = global_cls.shape[0]
        return {
            "global_cls": global_cls,
            "global_logits": cls_logits[:n_global_rows],
            "local_logits": cls_logits[n_global_rows:] if has_local else None,
            "masked_logits": patch_logits,
        }

    def compute_losses(
        self, student: dict[str, Any], teacher: dict[str, Any], batch: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        """`loss` = sum of weight * term; each term (unweighted) under `loss/<name>`."""
        n_global = int(batch["n_global"])
        dino = self.dino_loss(
            student["global_logits"], teacher["dino_probs"], n_global, student["local_logits"]
        )
        ibot = self.ibot_loss(student["masked_logits"], teacher["ibot_probs"], batch["masks"])
        # DINOv2: KoLeo within each global crop's batch, summed over the global crops.
        koleo = sum(self.koleo_loss(c) for c in student["global_cls"].chunk(n_global))
        terms = {"dino": dino, "ibot": ibot, "koleo": koleo}
        if self.slice_pairs:
            terms["slice"] = self.slice_objective(
                self.student["backbone"], self.teacher["backbone"], batch
            )
        if self.patient_pairs:
            terms["pair"] = self.slice_objective.forward_partners(
                student["global_cls"], self.teacher["backbone"], batch
            )
        total = sum(self.weights[name] * value for name, value in terms.items())
        return {"loss": total, **{f"loss/{name}": value for name, value in terms.items()}}

    def forward(self, batch: dict[str, Any], teacher_temp: float) -> dict[str, torch.Tensor]:
        """The losses of one micro-batch (teacher output, student output, loss computation).

        Also the learning-health signals of train/health.py (`dino/teacher_entropy`,
        `dino/prototypes_used`, `dino/agreement`, `cls/std`, `cls/effective_rank`): near-uniform
        targets or collapsed embeddings are the plateau of docs/pretrain.md.
        """
        teacher = self.get_teacher_output(batch, teacher_temp)
        student = self.get_student_output(batch)
        losses = self.compute_losses(student, teacher, batch)
        return {**losses, **self.health(student, teacher, int(batch["n_global"]))}

    def pop_prototypes_seen(self) -> int:
        """Distinct teacher argmax prototypes since the last call (the loop calls it per log)."""
        seen, self.prototypes_seen = self.prototypes_seen, None
        return 0 if seen is None else int(seen.sum())

    @torch.no_grad()
    def health(
        self, student: dict[str, Any], teacher: dict[str, Any], n_global: int
    ) -> dict[str, torch.Tensor]:
        """Learning-health signals of one micro-batch (train/health.py)."""
        probs = teacher["dino_probs"]
        used = used_prototypes(probs)
        seen = self.prototypes_seen
        self.prototypes_seen = used if seen is None else seen | used
        agreement = student_teacher_agreement(
            probs, student["global_logits"], n_global, student["local_logits"]
        )
        return {
            "dino/teacher_entropy": normalised_entropy(probs),
            "dino/prototypes_used": used.sum().float(),
            "dino/agreement": agreement,
            **cls_spread(teacher["cls"]),
        }
