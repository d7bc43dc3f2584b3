"""Features of several transformer blocks, for `eval` (issue 13, item 3).

DINO v1's linear evaluation of small ViTs reads the CLS tokens of the last four blocks, not only
of the last; density, a low-level property, might live in earlier blocks. This writes a FEATS
folder whose `cls` is the concatenated CLS tokens of the chosen blocks and whose `patch_mean` is
the concatenated mean patch tokens (each block's tokens through the final norm, as DINOv2's
`get_intermediate_layers`), images in the cache's manifest order, so `mammodino eval` probes it
as it probes `embed`'s output. `--blocks 1` gives `embed`'s features (without the patch grid).

  python benchmarks/block_features.py WEIGHTS CACHE OUT --blocks 4
  python benchmarks/block_features.py WEIGHTS CACHE OUT --blocks 3,6,9,12   # 1-based block numbers
  mammodino eval --features OUT --labels LABELS.csv --task density --protocol knn logreg

Measured on mini-MIAS (whole images; docs/pretrain.md, "Probe features"): within a seed's spread
of the last block's features, and below the hand-crafted ones.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from rich.progress import track

from mammodino.errors import ConfigError, MammodinoError
from mammodino.eval.backbone import load_backbone
from mammodino.eval.features import save_features
from mammodino.preprocess.cache import read_cached_float, read_manifest


def block_indices(spec: str, depth: int) -> list[int]:
    """0-based block indices: `N` is the last N blocks, `a,b,...` are 1-based block numbers."""
    try:
        values = [int(v) for v in spec.split(",")]
    except ValueError:
        raise ConfigError(
            f"--blocks {spec!r}: give N (the last N) or 1-based numbers a,b,..."
        ) from None
    indices = list(range(depth - values[0], depth)) if len(values) == 1 else [v - 1 for v in values]
    if not indices or min(indices) < 0 or max(indices) >= depth:
        raise ConfigError(f"--blocks {spec!r}: the backbone has blocks 1-{depth}")
    return sorted(set(indices))


@torch.inference_mode()
def block_features(
    weights: str, cache: str, blocks: str, image_size: int | None, batch_size: int = 32
) -> tuple[list[dict[str, str]], np.ndarray, np.ndarray]:
    """Manifest rows, concatenated CLS [N, D x blocks] and mean patch tokens [N, D x blocks]."""
    backbone = load_backbone(weights, image_size=image_size)
    wanted = block_indices(blocks, len(backbone.model.blocks))
    rows = read_manifest(cache)
    cls, patch_mean = [], []
    for start in track(range(0, len(rows), batch_size), description="blocks"):
        images = [read_cached_float(cache, r) for r in rows[start : start + batch_size]]
        batch = torch.stack([backbone.preprocess(image) for image in images])
        outputs = backbone.model.get_intermediate_layers(batch, n=wanted, return_class_token=True)
        cls.append(torch.cat([c for _, c in outputs], dim=1).numpy())
        patch_mean.append(torch.cat([p.mean(dim=1) for p, _ in outputs], dim=1).numpy())
    return rows, np.concatenate(cls), np.concatenate(patch_mean)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", help="run folder, checkpoint, export or random:ARCH/PATCH")
    parser.add_argument("cache", help="a prepared cache")
    parser.add_argument("output", type=Path, help="the FEATS folder to write")
    parser.add_argument("--blocks", default="4", help="N (the last N) or 1-based numbers a,b,...")
    parser.add_argument(
        "--image-size", type=int, default=None, help="as `embed`'s (default: the trained size)"
    )
    args = parser.parse_args()
    rows, cls, patch_mean = block_features(args.weights, args.cache, args.blocks, args.image_size)
    path = save_features(
        args.output, ids=[r["id"] for r in rows], cls=cls, patch_mean=patch_mean, meta=rows
    )
    print(f"{len(rows)} images, {cls.shape[1]} CLS dims: {path}")


if __name__ == "__main__":
    try:
        main()
    except MammodinoError as exc:  # a bad --blocks, weights or cache: one line
        raise SystemExit(f"block_features: {exc}") from None
