"""Fine-tuning protocol: layer-wise lr decay groups and a tiny ViT learning a constructed task."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import write_csv
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


@pytest.mark.slow
def test_eval_cli_finetune_on_a_cache(tmp_path):
    import json

    import cv2

    from mammodino.cli import main
    from mammodino.eval.features import save_features

    (tmp_path / "images").mkdir()
    rows = []
    for i in range(8):
        image = np.full((48, 32), 0.2 + 0.6 * (i % 2), np.float32)
        cv2.imwrite(str(tmp_path / "images" / f"{i}.png"), (image * 65535).astype(np.uint16))
        rows.append(
            {
                "id": f"id{i}",
                "source": f"s{i}.png",
                "image": f"images/{i}.png",
                "patient_id": f"p{i // 2}",
                "laterality": "LR"[i % 2],
                "view": "CC",
                "cache_height": "48",
                "cache_width": "32",
            }
        )
    write_csv(tmp_path / "manifest.csv", rows)
    save_features(
        tmp_path / "feats", [r["id"] for r in rows], np.zeros((8, 4)), np.zeros((8, 4)), rows
    )
    (tmp_path / "labels.csv").write_text(
        "id,bright\n" + "".join(f"id{i},{i % 2}\n" for i in range(8))
    )
    out = tmp_path / "res"
    assert (
        main(
            [
                "eval",
                "--features",
                str(tmp_path / "feats"),
                "--labels",
                str(tmp_path / "labels.csv"),
                "--task",
                "bright",
                "--protocol",
                "finetune",
                "--weights",
                "random:vit_tiny/16",
                "--manifest",
                str(tmp_path / "manifest.csv"),
                "--folds",
                "2",
                "--finetune-epochs",
                "1",
                "--bootstrap",
                "0",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads((out / "results.json").read_text())["protocols"]["finetune"]["1"]
    assert [f["n_test"] for f in result["per_fold"]] == [4, 4]
    assert 0.0 <= result["pooled"]["auroc"]["value"] <= 1.0
