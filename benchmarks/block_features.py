"""Features of several transformer blocks, for `eval` (issue 13, item 3).

DINO v1's linear evaluation of small ViTs reads the CLS tokens of the last four blocks, not only
of the last; density, a low-level property, might live in earlier blocks. This writes a FEATS
folder whose `cls` is the concatenated CLS tokens of the chosen blocks and whose `patch_mean` is
the concatenated mean patch tokens (each block's tokens through the final norm, as DINOv2's
`get_intermediate_layers`), written by `embed`'s own writer (`embed_rows`: manifest order,
resumable chunks), so `mammodino eval` probes it as it probes `embed`'s output. `--blocks 1`
gives `embed`'s features (without the patch grid).

  python benchmarks/block_features.py WEIGHTS CACHE OUT --blocks 4
  python benchmarks/block_features.py WEIGHTS CACHE OUT --blocks 3,6,9,12   # 1-based block numbers
  mammodino eval --features OUT --labels LABELS.csv --task density --protocol knn logreg

Measured on mini-MIAS (whole images; docs/pretrain.md, "Probe features"): within a seed's spread
of the last block's features, and below the hand-crafted ones.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from mammodino.errors import ConfigError, MammodinoError
from mammodino.eval.backbone import Backbone, load_backbone
from mammodino.eval.embedding_run import embed_rows
from mammodino.preprocess.cache import cache_folder, read_cached_float, read_manifest


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


@dataclass
class BlockBackbone(Backbone):
    """A frozen backbone whose features are the CLS and mean patch tokens of several blocks,
    concatenated: `embed_rows` writes them as it writes the last block's."""

    blocks: tuple[int, ...] = ()

    @cached_property
    def weights_digest(self) -> str:
        # The blocks are part of what the features depend on: `embed_rows` never reuses a
        # finished chunk of other blocks.
        key = f"{Backbone.weights_digest.func(self)}|blocks {self.blocks}"
        return hashlib.sha256(key.encode()).hexdigest()

    @torch.inference_mode()
    def extract_features(self, images: Sequence[np.ndarray]) -> dict:
        batch = torch.stack([self.preprocess(np.asarray(image)) for image in images])
        outputs = self.model.get_intermediate_layers(
            batch, n=list(self.blocks), return_class_token=True
        )
        return {
            "cls": torch.cat([c for _, c in outputs], dim=1),
            "patch_mean": torch.cat([p.mean(dim=1) for p, _ in outputs], dim=1),
        }


def block_features(
    weights: str, cache: str, blocks: str, image_size: int | None, output: Path
) -> Path:
    """Write the FEATS folder `output` of `blocks` for every image of `cache`; its features.npz."""
    backbone = load_backbone(weights, image_size=image_size)
    wanted = tuple(block_indices(blocks, len(backbone.model.blocks)))
    backbone = BlockBackbone(backbone.model, backbone.image_size, backbone.source, wanted)
    rows, folder = read_manifest(cache, required=("id", "image")), cache_folder(cache)
    with Progress() as bar:
        task = bar.add_task("blocks", total=len(rows))
        return embed_rows(
            backbone,
            rows,
            lambda i: read_cached_float(folder, rows[i]),
            output,
            progress=lambda n: bar.advance(task, n),
        )


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
    path = block_features(args.weights, args.cache, args.blocks, args.image_size, args.output)
    print(f"features of blocks {args.blocks}: {path}")


if __name__ == "__main__":
    try:
        main()
    except MammodinoError as exc:  # a bad --blocks, weights or cache: one line
        raise SystemExit(f"block_features: {exc}") from None
