"""Fine-tuning protocol: layer-wise lr decay groups and a tiny ViT learning a constructed task."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mammodino.errors import EvaluationError
from mammodino.eval.crossval import cross_validate
from mammodino.eval.finetune import (
    FinetuneProbe,
    FinetuneSettings,
    finetune_protocol,
    optimizer_groups,
)
from mammodino.eval.splits import patient_folds
from mammodino.models.vit import build_vit


def _tiny_vit():
    torch.manual_seed(0)
    return build_vit("vit_tiny", img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2)


def test_layerwise_lr_decay_groups():
    backbone, head = _tiny_vit(), torch.nn.Linear(32, 2)
    groups = optimizer_groups(backbone, head, FinetuneSettings(lr=1e-3, layerwise_decay=0.5))
    lr_of = {n: g["lr"] for g in groups for n in g["names"]}
    assert lr_of["weight"] == pytest.approx(1e-3)  # the head
    assert lr_of["norm.weight"] == pytest.approx(1e-3)
    assert lr_of["blocks.1.attn.qkv.weight"] == pytest.approx(1e-3 * 0.5)
    assert lr_of["blocks.0.attn.qkv.weight"] == pytest.approx(1e-3 * 0.25)
    assert lr_of["patch_embed.proj.weight"] == pytest.approx(1e-3 * 0.125)
    wd_of = {n: g["weight_decay"] for g in groups for n in g["names"]}
    assert wd_of["blocks.0.attn.qkv.bias"] == 0.0 and wd_of["blocks.0.attn.qkv.weight"] > 0


def test_finetune_learns_bright_vs_dark_on_patient_folds():
    rng = np.random.default_rng(0)
    n = 40
    y = np.arange(n) % 2
    images = torch.from_numpy(rng.random((n, 1, 32, 32)).astype(np.float32) * 0.5)
    images[y == 1, :, 8:24, 8:24] += 0.5  # class 1 has a bright square
    groups = np.asarray([f"p{i // 2}" for i in range(n)])
    fold = patient_folds(groups, y, n_folds=2, seed=0)
    probe = FinetuneProbe(_tiny_vit, images, FinetuneSettings(epochs=6, batch_size=8, lr=1e-3))
    rows = np.arange(n, dtype=np.float64)[:, None]
    figures, oof = cross_validate(probe.fit_predict, rows, y, groups, fold, 2, n_boot=0)
    assert np.allclose(oof[1.0].sum(1), 1.0)
    assert figures["1"]["pooled"]["auroc"]["value"] > 0.9


def test_finetune_protocol_needs_weights_and_manifest():
    with pytest.raises(EvaluationError, match="--weights"):
        finetune_protocol(None, None, ["a"])
