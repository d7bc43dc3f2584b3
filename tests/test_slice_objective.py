"""SliceObjective with tiny ViTs: the loss of the batch's slice pairs, gradients, EMA of the head."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from helpers import TINY_SLICE_MODEL
from mammodino.config import load_config
from mammodino.losses.slice_contrast import SliceContrastLoss, slice_negative_mask
from mammodino.models.vit import build_vit
from mammodino.settings import Settings
from mammodino.train.ema import ema_update
from mammodino.train.meta_arch import MammoDINO
from mammodino.train.param_groups import build_param_groups
from mammodino.train.slice_objective import SliceObjective

TINY = [*TINY_SLICE_MODEL, "model.drop_path_rate=0.0", "crops.global_size=32"]


def tiny_backbones() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    student = build_vit("vit_tiny", img_size=32, patch_size=8, num_register_tokens=0)
    teacher = copy.deepcopy(student).requires_grad_(False).eval()
    return student, teacher


def pair_batch(n_pairs: int, volumes: list[int] | None = None) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    volumes = volumes if volumes is not None else list(range(n_pairs))
    return {
        "slice_pairs": torch.rand(2, n_pairs, 1, 32, 32, generator=generator),
        "slice_volume": torch.tensor(volumes, dtype=torch.long),
        "slice_offset_mm": torch.ones(n_pairs),
        "slice_position_mm": torch.arange(n_pairs, dtype=torch.float32) * 10,
        "slice_patch_tissue": torch.ones(n_pairs, 16),
    }


def test_objective_equals_the_loss_on_the_projected_cls():
    student, teacher = tiny_backbones()
    objective = SliceObjective(192, proj_dim=16, hidden_dim=32, temperature=0.2)
    batch = pair_batch(4)
    loss = objective(student, teacher, batch)
    crops = batch["slice_pairs"].flatten(0, 1)
    with torch.no_grad():
        s = objective.student_head(student.forward_features(crops)["x_norm_clstoken"])
        t = objective.teacher_head(teacher.forward_features(crops)["x_norm_clstoken"])
    expected = SliceContrastLoss(0.2)(*s.chunk(2), *t.chunk(2))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # Four unrelated pairs at a fresh init: close to the chance level log(B) (no trivial collapse).
    assert 0.5 * math.log(4) < loss.item() < 2 * math.log(4)


def test_gradients_reach_the_student_only():
    student, teacher = tiny_backbones()
    objective = SliceObjective(192, proj_dim=16, hidden_dim=32)
    objective(student, teacher, pair_batch(3)).backward()
    assert student.cls_token.grad is not None and student.cls_token.grad.abs().sum() > 0
    assert all(p.grad is not None for p in objective.student_head.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in objective.teacher_head.parameters())


def test_no_or_one_pair_gives_zero_still_differentiable():
    student, teacher = tiny_backbones()
    objective = SliceObjective(192, proj_dim=16, hidden_dim=32)
    for n in (0, 1):
        loss = objective(student, teacher, pair_batch(n))
        assert loss.item() == 0.0
        loss.backward()


def test_same_volume_pairs_are_negatives_only_beyond_the_gap():
    student, teacher = tiny_backbones()
    batch = pair_batch(3, volumes=[0, 0, 1])  # positions 0, 10, 20 mm
    near = SliceObjective(192, proj_dim=16, hidden_dim=32, negative_gap_mm=None)
    far = SliceObjective(192, proj_dim=16, hidden_dim=32, negative_gap_mm=5.0)
    far.load_state_dict(near.state_dict())
    # Same weights: a far same-volume negative can only add to the denominator.
    assert far(student, teacher, batch).item() > near(student, teacher, batch).item()
    mask = slice_negative_mask(batch["slice_volume"], batch["slice_position_mm"])
    assert not mask[0, 1] and mask[0, 2]


def test_patch_level_variant_adds_a_finite_term():
    student, teacher = tiny_backbones()
    plain = SliceObjective(192, proj_dim=16, hidden_dim=32)
    patches = SliceObjective(192, proj_dim=16, hidden_dim=32, patch_level=True)
    patches.load_state_dict(plain.state_dict())
    batch = pair_batch(3)
    extra = patches(student, teacher, batch) - plain(student, teacher, batch)
    assert torch.isfinite(extra) and extra.item() > 0


def test_heads_attached_to_the_meta_architecture_follow_ema_and_optimiser():
    cfg = load_config(overrides=TINY)
    settings = Settings.from_config(cfg)
    model = MammoDINO(settings)
    embed_dim = model.student["backbone"].embed_dim
    objective = SliceObjective.from_settings(
        settings.dbt, settings.masking.patch_tissue_threshold, embed_dim
    )
    objective.attach(model.student, model.teacher)
    assert model.teacher["slice_head"] is objective.teacher_head
    groups = build_param_groups(model.student, settings.optim, model.depth)
    grouped = {id(p) for g in groups for p in g["params"]}
    assert all(id(p) in grouped for p in objective.student_head.parameters())
    before = [p.clone() for p in objective.teacher_head.parameters()]
    with torch.no_grad():
        for p in objective.student_head.parameters():
            p.add_(1.0)
    ema_update(model.student, model.teacher, 0.9)
    for old, new in zip(before, objective.teacher_head.parameters(), strict=True):
        assert torch.allclose(new, old + 0.1, atol=1e-5)
    batch = pair_batch(2)
    loss = objective(model.student["backbone"], model.teacher["backbone"], batch)
    assert torch.isfinite(loss)
