"""Frozen features of every image: CLS, mean of patch tokens, optionally the patch grid.

Examples:
  mammodino embed --weights runs/tiny --input /tmp/mias-cache --output feats/tiny
  mammodino embed --weights random:vit_tiny/16 --input /tmp/mias-cache --output feats/random

--weights takes a run folder (its teacher backbone), a checkpoint file, an export of ours, a
public DINOv2/RAD-DINO/timm file, or random:ARCH/PATCH. --input takes a prepared cache (folder or
its manifest.csv) or a folder of images (prepared in memory). The output FEATS folder holds
features.npz and meta.csv (see docs/evaluation.md); a rerun resumes from finished chunks.
"""

from __future__ import annotations

import argparse
import sys

HELP = "frozen backbone features per image (CLS, patch mean, patch grid)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights", required=True, help="run folder, checkpoint, export, random:ARCH/P"
    )
    parser.add_argument("--input", required=True, help="prepared cache (or manifest.csv) or folder")
    parser.add_argument("--output", required=True, help="FEATS folder to write")
    parser.add_argument("--image-size", type=int, help="input side in pixels (default: trained)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patch-grid", action="store_true", help="also save the patch grid")
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when present, else CPU), cpu, cuda, cuda:1, ...",
    )
    parser.add_argument("--salt", help="salt of ids for a folder input")
    parser.add_argument("--no-progress", action="store_true")


def _warn_on_other_intensity(weights: str, cache) -> None:
    """One line when the run trained on images stretched otherwise than the input's."""
    from mammodino.eval.weights_source import training_intensity
    from mammodino.preprocess.prepare import recorded_intensity

    trained = training_intensity(weights)
    given = recorded_intensity(cache) if cache is not None else "dataset"  # a folder: defaults
    if trained is not None and given is not None and trained != given:
        print(
            f"warning: {weights} trained on a cache prepared with --intensity {trained}, the input"
            f" was prepared with --intensity {given}: its images are scaled otherwise"
            " (docs/prepare.md, Intensity)",
            file=sys.stderr,
        )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mammodino.errors import MammodinoError
    from mammodino.eval.weights_source import check_weights_source
    from mammodino.preprocess.cache import (
        cache_folder,
        is_prepared_cache,
        read_cached_float,
        read_manifest,
    )

    # Arguments first, torch after: a wrong --weights or --input is one line at once.
    check_weights_source(args.weights)
    source = Path(args.input)
    cached = is_prepared_cache(source)
    if not cached and not source.is_dir():
        raise MammodinoError(f"{source}: neither a prepared cache nor a folder of images")
    _warn_on_other_intensity(args.weights, source if cached else None)

    from rich.progress import Progress

    from mammodino.eval.backbone import load_backbone
    from mammodino.eval.embedding_run import embed_rows, folder_rows, set_inference_threads
    from mammodino.train.hardware import resolve_device

    device = resolve_device(args.device, "--device")
    set_inference_threads()
    if cached:
        cache = cache_folder(source)
        rows = read_manifest(source, required=("id", "image"))

        def image_at(i: int):
            return read_cached_float(cache, rows[i])
    else:
        rows, images = folder_rows(source, args.salt)
        image_at = images.__getitem__
    backbone = load_backbone(args.weights, args.image_size, device)
    with Progress(disable=args.no_progress) as bar:
        task = bar.add_task("embed", total=len(rows))
        path = embed_rows(
            backbone,
            rows,
            image_at,
            Path(args.output),
            batch_size=args.batch_size,
            patch_grid=args.patch_grid,
            progress=lambda n: bar.advance(task, n),
        )
    print(f"{len(rows)} images embedded at {backbone.image_size} px -> {path}")
    return 0
