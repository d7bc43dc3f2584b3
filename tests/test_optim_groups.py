"""Optimiser groups: per-block lr under layer decay, patch-embed multiplier, no-decay params,
last-layer freeze (issue 4, acceptance 1)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import settings_of
from mammodino.train.param_groups import apply_schedules, build_optimizer, build_param_groups


class _Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(dim, 3 * dim)
        self.ls1 = nn.Module()
        self.ls1.gamma = nn.Parameter(torch.ones(dim))


class _Backbone(nn.Module):
    """DINOv2 parameter names, nothing else."""

    def __init__(self, dim: int = 8, depth: int = 3) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, 2, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(1, dim, 4, 4)
        self.blocks = nn.ModuleList(_Block(dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)


class _Head(nn.Module):
    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.mlp = nn.Linear(dim, dim)
        self.last_layer = nn.Linear(dim, 16, bias=False)


def _groups(decay=0.9, patch_mult=0.2):
    student = nn.ModuleDict({"backbone": _Backbone(), "dino_head": _Head()})
    optim = settings_of(
        f"optim.layerwise_decay={decay}", f"optim.patch_embed_lr_mult={patch_mult}"
    ).optim
    groups = build_param_groups(student, optim, depth=3)
    by_name = {n: g for g in groups for n in g["names"]}
    return student, optim, groups, by_name


def test_per_block_lr_under_layer_decay():
    _, optim, groups, by_name = _groups()
    # depth 3: embeddings layer 0 -> 0.9**4, block i -> 0.9**(3 - i), final norm -> 1
    assert by_name["backbone.cls_token"]["lr_multiplier"] == pytest.approx(0.9**4)
    assert by_name["backbone.pos_embed"]["lr_multiplier"] == pytest.approx(0.9**4)
    for i in range(3):
        mult = by_name[f"backbone.blocks.{i}.attn.qkv.weight"]["lr_multiplier"]
        assert mult == pytest.approx(0.9 ** (3 - i))
    assert by_name["backbone.norm.weight"]["lr_multiplier"] == 1.0
    assert by_name["dino_head.mlp.weight"]["lr_multiplier"] == 1.0
    assert by_name["backbone.patch_embed.proj.weight"]["lr_multiplier"] == pytest.approx(
        0.9**4 * 0.2
    )
    # the lr each block's weights actually get from the optimiser at a given schedule value
    optimizer = build_optimizer(groups, optim.betas)
    apply_schedules(optimizer, {"lr": 1e-3, "last_layer_lr": 0.0, "wd": 0.04})
    lr_of = {n: g["lr"] for g in optimizer.param_groups for n in g["names"]}
    assert [lr_of[f"backbone.blocks.{i}.attn.qkv.weight"] for i in range(3)] == pytest.approx(
        [1e-3 * 0.9**3, 1e-3 * 0.9**2, 1e-3 * 0.9]
    )
    assert lr_of["dino_head.last_layer.weight"] == 0.0  # frozen: last-layer schedule is 0


def test_no_weight_decay_for_bias_norm_gamma_tokens():
    _, _, _, by_name = _groups()
    for name in (
        "backbone.cls_token",
        "backbone.pos_embed",
        "backbone.register_tokens",
        "backbone.mask_token",
        "backbone.blocks.0.norm1.weight",
        "backbone.blocks.0.attn.qkv.bias",
        "backbone.blocks.1.ls1.gamma",
        "backbone.norm.bias",
        "dino_head.mlp.bias",
    ):
        assert by_name[name]["wd_multiplier"] == 0.0, name
    for name in ("backbone.blocks.2.attn.qkv.weight", "dino_head.mlp.weight"):
        assert by_name[name]["wd_multiplier"] == 1.0, name


def test_groups_are_fused_and_cover_every_parameter_once():
    student, _, groups, _ = _groups()
    keys = [(g["lr_multiplier"], g["wd_multiplier"], g["is_last_layer"]) for g in groups]
    assert len(keys) == len(set(keys))
    names = [n for g in groups for n in g["names"]]
    assert sorted(names) == sorted(
        f"{part}.{n}" for part, m in student.items() for n, _ in m.named_parameters()
    )
    assert [g["is_last_layer"] for g in groups].count(True) == 1


def test_frozen_last_layer_does_not_move_and_others_do():
    student, optim, groups, _ = _groups()
    optimizer = build_optimizer(groups, optim.betas)
    apply_schedules(optimizer, {"lr": 1e-2, "last_layer_lr": 0.0, "wd": 0.04})
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    x = torch.randn(4, 8)
    student["dino_head"].last_layer(student["dino_head"].mlp(x)).square().mean().backward()
    optimizer.step()
    after = dict(student.named_parameters())
    assert torch.equal(before["dino_head.last_layer.weight"], after["dino_head.last_layer.weight"])
    assert not torch.equal(before["dino_head.mlp.weight"], after["dino_head.mlp.weight"])
