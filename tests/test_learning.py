"""Learning regression: a short pretraining on phantoms must leave the uniform plateau and learn
density (issue 13, acceptance 5). Fails if the plateau comes back.

512 phantom mammograms (128 women, density classes A-D by glandular fraction), ViT-Tiny/16 at
64 px global / 32 px local crops (16 and 4 tokens), `tiny-cpu`'s small-data regime as shipped
(batch-statistics head, EMA centering, its tissue-aware crops, mild intensity jitter; only sizes
differ: TINY_TRAIN's widths and one register, a 256-wide head), 400 steps of 16 with fixed seeds. Asserted: loss/dino ends at least 0.5 below
ln K, teacher entropy at most 0.8, no plateau/collapse warning, and the frozen teacher's kNN
density accuracy (the online monitor: whole images at 64 px, k 10, neighbours from other women
only; mean of the probes at steps 300, 350 and 400) at least 0.15 above its step-0 value.

Measured (`train.seed` 0-4, one thread each; `loss/dino` 0.9-1.5 below ln K, teacher entropy
0.39-0.50): gains +0.278 / +0.340 / +0.360 / +0.228 / +0.372 (kNN 0.31-0.35 -> 0.57-0.69); with
the crops held inside the breast (`crops.global_min_tissue=0.9 crops.local_min_tissue=0.9`) +0.314
to +0.380. A run on the plateau (no batch-statistics head, Sinkhorn-Knopp, LayerScale 1e-5) gains
-0.005 and warns. The test runs seed 0 with one thread (conftest): about 3 minutes with the
phantoms on an AVX-512 core, 4.4-5.8 on an AVX2-only one. Cheaper variants measured there
(seeds 0-4) each lose a seed: 250 steps ends 0.12-0.24 below ln K on seeds 1, 3, 4 (seed 3 gains
+0.005); 48 px global crops 0.13 below on seed 1; batch 12 0.09-0.45 below on seeds 1, 3, 4;
batch 10 0.18 below on seed 1; 8 blocks instead of 12 ends 0.18-0.37 below on three of seeds
0-3, 6 blocks 0.12-0.45 below on all four; 200 steps at twice the learning rate 0.13-0.23 below
on seeds 0 and 1; a 128-wide ViT (2 heads) 0.17-0.20 below on seeds 0 and 1, in 169 s; an MLP
2x wide instead of 4x 0.22 below on seed 0 and +0.01 on seed 1, in 235 s (docs/pretrain.md).
So the size stays.

Until the phantoms were thickness-equalised (docs/phantom.md) this test could only assert +0.06:
the breast's brightness followed compressed thickness (r 0.79) more than glandular fraction
(r 0.51), the teacher's cosine neighbours were breasts of like thickness, and 50-odd settings all
ended at kNN 0.34-0.45 (docs/pretrain.md, "The learning regression test").
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from helpers import TINY_TRAIN
from mammodino.config import load_config
from mammodino.train.loop import train

STEPS = 400
N_PHANTOMS = 512  # 128 women: a density probe steady enough to assert on (docstring)
N_PROTOTYPES = 64  # TINY_TRAIN's heads


@pytest.fixture(scope="module")
def phantom_cache(tmp_path_factory):
    from mammodino.cli import main

    root = tmp_path_factory.mktemp("learning")
    src, cache = root / "phantom", root / "cache"
    argv = ["synth", str(src), "--ffdm", str(N_PHANTOMS), "--dbt", "0", "--seed", "0"]
    assert main([*argv, "--ffdm-shape", "256", "200", "--workers", "1"]) == 0
    prepare = ["prepare", str(src / "ffdm"), str(cache), "--workers", "1", "--no-progress"]
    assert main([*prepare, "prepare.cache_size=128"]) == 0
    return src, cache


@pytest.mark.slow
def test_short_pretraining_leaves_the_plateau_and_learns_density(phantom_cache, tmp_path):
    src, cache = phantom_cache
    cfg = load_config(
        preset="tiny-cpu",
        overrides=[
            *TINY_TRAIN,  # sizes only: the regime itself is tiny-cpu's
            # A wider head than TINY_TRAIN's 32/16 (ViT-Tiny embeds 192): more kNN gain.
            "heads.dino_hidden_dim=256",
            "heads.dino_bottleneck_dim=64",
            # tiny-cpu's patch 16; 64 px crops keep TINY_TRAIN's cost (16 and 4 tokens).
            "model.patch_size=16",
            "crops.global_size=64",
            "crops.local_size=32",
            f"data.source={cache}",
            f"optim.max_steps={STEPS}",
            f"optim.epochs={STEPS // 10}",
            "optim.steps_per_epoch=10",
            "train.log_every=20",
            "train.checkpoint_every=0",
            "train.malloc_tunables=false",
            f"monitor.source={cache}",
            f"monitor.labels={src / 'labels.csv'}",
            "monitor.label_column=density",
            "monitor.image_size=64",
            "monitor.every=50",
            "monitor.k=10",
        ],
    )
    run = tmp_path / "run"
    train(cfg, run, show_progress=False)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    knn = {r["step"]: r["monitor/knn_acc"] for r in records if "monitor/knn_acc" in r}
    trained = [r for r in records if "loss/dino" in r]
    ln_k = math.log(N_PROTOTYPES)
    # The last 100 steps and the last three probes (300, 350, 400), not one noisy value each.
    dino = float(np.mean([r["loss/dino"] for r in trained[-5:]]))
    entropy = float(np.mean([r["dino/teacher_entropy"] for r in trained[-5:]]))
    assert dino <= ln_k - 0.5, (dino, ln_k)
    assert entropy <= 0.8, entropy
    late = float(np.mean([knn[s] for s in (STEPS - 100, STEPS - 50, STEPS)]))
    assert late >= knn[0] + 0.15, knn
    assert not any("warning" in r for r in records), "the plateau/collapse detector fired"
