"""Fine-tuning protocol: backbone + linear head trained end to end with layer-wise lr decay.

It plugs into the same cross-validation as the probes (same patient-level folds and label
fractions): `FinetuneProbe.fit_predict` takes row positions instead of feature vectors and looks
the images up in a preloaded tensor. The backbone comes from a loader function, so any weights
(MammoDINO, the DINOv2 recipe, random init) are fine-tuned the same way; every fold starts
from a fresh copy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mammodino.errors import EvaluationError
from mammodino.preprocess.cache import (
    cache_folder,
    manifest_file,
    read_cached_float,
    read_manifest,
)


@dataclass
class FinetuneSettings:
    """Optimisation of one fine-tuning run (DINOv2/BEiT-style layer decay)."""

    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-4  # head and last block; block i gets lr * decay ** (depth - i)
    layerwise_decay: float = 0.75
    weight_decay: float = 0.05


def load_cache_images(
    cache: str | Path,
    rows: Sequence[dict[str, str]],
    size: int,
    preprocess: Callable[[np.ndarray], object] | None = None,
):
    """Cache images of manifest rows as a float tensor [N, 1, size, size] in [0, 1].

    `preprocess(image) -> [1, size, size]` is the backbone's own (embed's square canvas); without
    it the image is resized to the square.
    """
    import cv2
    import torch

    out = torch.empty(len(rows), 1, size, size)
    for i, row in enumerate(rows):
        scaled = read_cached_float(cache, row)
        if preprocess is not None:
            out[i] = torch.as_tensor(preprocess(scaled)).cpu().reshape(1, size, size)
        else:
            out[i, 0] = torch.from_numpy(
                cv2.resize(scaled, (size, size), interpolation=cv2.INTER_AREA)
            )
    return out


def optimizer_groups(backbone, head, settings: FinetuneSettings) -> list[dict]:
    """AdamW groups: layer-wise decayed lr for the backbone, full lr for the head."""
    from mammodino.train.param_groups import fuse_groups, param_multipliers

    depth = len(backbone.blocks)
    records = param_multipliers(
        backbone,
        is_backbone=True,
        depth=depth,
        layerwise_decay=settings.layerwise_decay,
        patch_embed_lr_mult=1.0,
    )
    records += param_multipliers(
        head, is_backbone=False, depth=depth, layerwise_decay=1.0, patch_embed_lr_mult=1.0
    )
    groups = fuse_groups(records)
    for group in groups:
        group["lr"] = settings.lr * group["lr_multiplier"]
        group["weight_decay"] = settings.weight_decay * group["wd_multiplier"]
    return groups


class FinetuneProbe:
    """Fine-tunes `load_backbone()` (+ a linear head on its CLS token) per fold."""

    def __init__(self, load_backbone: Callable[[], object], images, settings: FinetuneSettings):
        self.load_backbone = load_backbone
        self.images = images
        self.settings = settings

    def fit_predict(self, x_train, y_train, x_test, n_classes, groups_train=None, seed=0):
        """Probabilities of the test rows after fine-tuning on the training rows.

        `x_train`/`x_test` hold row positions into `images` in their first column.
        """
        import torch

        s = self.settings
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        backbone = self.load_backbone()
        head = torch.nn.Linear(backbone.embed_dim, n_classes)
        optim = torch.optim.AdamW(optimizer_groups(backbone, head, s))
        train_rows = torch.as_tensor(np.asarray(x_train)[:, 0].astype(np.int64))
        labels = torch.as_tensor(np.asarray(y_train, dtype=np.int64))
        counts = torch.bincount(labels, minlength=n_classes).double()
        weight = torch.where(counts > 0, len(labels) / (n_classes * counts.clamp(min=1)), 0.0)
        loss_fn = torch.nn.CrossEntropyLoss(weight=weight.float())
        steps = s.epochs * max(1, -(-len(labels) // s.batch_size))
        # Cosine decay of every group's lr to zero over the run.
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optim, lambda step: 0.5 * (1 + np.cos(np.pi * min(step, steps) / steps))
        )
        backbone.train()
        for _ in range(s.epochs):
            order = torch.randperm(len(labels), generator=generator)
            for start in range(0, len(order), s.batch_size):
                batch = order[start : start + s.batch_size]
                x = self.images[train_rows[batch]]
                # Horizontal flips: left and right breasts are mirror images of each other.
                flip = torch.rand(len(batch), generator=generator) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
                loss = loss_fn(head(backbone(x)), labels[batch])
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
                schedule.step()
        backbone.eval()
        test_rows = torch.as_tensor(np.asarray(x_test)[:, 0].astype(np.int64))
        out = []
        with torch.no_grad():
            for start in range(0, len(test_rows), s.batch_size):
                logits = head(backbone(self.images[test_rows[start : start + s.batch_size]]))
                logits[:, counts == 0] = -torch.inf
                out.append(torch.softmax(logits, dim=1))
        return torch.cat(out).double().numpy()


def finetune_protocol(
    weights: str | None,
    manifest: str | None,
    ids: Sequence[str],
    settings: FinetuneSettings | None = None,
):
    """The fit_predict of `--protocol finetune`: backbone from `weights`, images from the cache."""
    if not weights or not manifest:
        raise EvaluationError("--protocol finetune needs --weights and --manifest (the cache's)")
    from mammodino.eval.backbone import load_backbone

    by_id = {r["id"]: r for r in read_manifest(manifest, required=("id", "image"))}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise EvaluationError(
            f"{len(missing)} feature ids are not in {manifest_file(manifest).name}"
        )

    def load():
        # load_backbone gives a frozen Backbone (model + preprocessing); fine-tuning unfreezes it.
        return load_backbone(weights).model.requires_grad_(True)

    frozen = load_backbone(weights)
    images = load_cache_images(
        cache_folder(manifest), [by_id[i] for i in ids], frozen.image_size, frozen.preprocess
    )
    return FinetuneProbe(load, images, settings or FinetuneSettings()).fit_predict
