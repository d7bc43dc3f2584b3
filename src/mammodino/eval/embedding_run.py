"""`mammodino embed`: features of every image of a cache (or folder), batched and resumable.

Work is done in chunks; each finished chunk is written atomically under FEATS/parts/, so an
interrupted run resumes at the first missing chunk and the result is identical to a clean run.
Chunks are reused only when made from the same weights (sha256 of the loaded tensors, not the
path that named them), image size and patch-grid setting; otherwise the run starts over.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from mammodino.errors import MammodinoError, MammoReadError
from mammodino.eval.backbone import Backbone
from mammodino.eval.features import save_features

PARTS = "parts"
PARTS_KEY = "key.json"  # weights digest and settings the finished chunks were made with


def folder_rows(folder: Path, salt: str | None) -> tuple[list[dict[str, str]], list[np.ndarray]]:
    """Prepare a folder of images in memory (no cache written): rows and cache images."""
    from mammodino.io.reader import read_image
    from mammodino.preprocess.pipeline import CacheOptions, plan_cache, render_image
    from mammodino.preprocess.prepare import find_sources, with_dataset_levels
    from mammodino.preprocess.prepare_source import source_key

    sources = find_sources(folder)
    settings = with_dataset_levels(CacheOptions(), [path for path, _ in sources])
    rows, images = [], []
    for path, source in sources:
        try:
            image = read_image(path)
            plan = plan_cache(path, image.pixels, settings)
        except MammoReadError as err:
            print(f"skipped: {err}")
            continue
        g = plan.geometry
        rows.append(
            {
                "id": source_key(source, salt),
                "source": source,
                "patient_id": "",
                "laterality": image.meta.laterality,
                "view": image.meta.view,
                **{k: str(v) for k, v in g.as_row().items()},
                "cache_height": str(g.cache_height),
                "cache_width": str(g.cache_width),
            }
        )
        images.append(render_image(image.pixels, g, plan.levels).astype(np.float32) / 65535.0)
    return rows, images


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


def _chunk_tag(backbone: Backbone, ids: list[str], grid: bool) -> str:
    """Chunk files are named by what they hold, so a changed input never reuses a stale part."""
    key = f"{backbone.weights_digest}|{backbone.image_size}|{grid}|{','.join(ids)}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _start_parts(parts: Path, backbone: Backbone, grid: bool) -> None:
    """Keep finished chunks only if made with the same weights (by content), settings and device.

    Otherwise remove them, saying why in one line: features of a retrained run written to the
    same FEATS folder must never mix with the old run's.
    """
    key = {
        "weights_sha256": backbone.weights_digest,
        "image_size": backbone.image_size,
        "patch_grid": grid,
        # A GPU's features differ from a CPU's by rounding (TF32 convolutions among others): an
        # embed interrupted on one and resumed on the other must not mix the two.
        "device": backbone.device.type,
    }
    key_file = parts / PARTS_KEY
    old_parts = sorted(parts.glob("part_*.npz"))
    old = json.loads(key_file.read_text()) if key_file.is_file() else None
    if old_parts and old != key:
        if old is None:
            why = "made by an earlier version without a weights digest"
        else:
            changed = [k for k in key if old.get(k) != key[k]]
            why = ", ".join(f"{k} {str(old.get(k))[:12]} -> {str(key[k])[:12]}" for k in changed)
        print(
            f"embed: {len(old_parts)} finished chunks in {parts} do not fit ({why}): starting over"
        )
        for part in old_parts:
            part.unlink()
    key_file.write_text(json.dumps(key) + "\n")


def embed_rows(
    backbone: Backbone,
    rows: list[dict[str, str]],
    image_at,
    output: Path,
    *,
    batch_size: int = 16,
    chunk_size: int = 256,
    patch_grid: bool = False,
    progress=None,
) -> Path:
    """Embed `rows` (images from `image_at(i)`) into FEATS `output`; resumes from finished parts."""
    parts = output / PARTS
    parts.mkdir(parents=True, exist_ok=True)
    _start_parts(parts, backbone, patch_grid)
    files = []
    for start, stop in _chunks(len(rows), chunk_size):
        ids = [rows[i]["id"] for i in range(start, stop)]
        part = parts / f"part_{start:07d}_{_chunk_tag(backbone, ids, patch_grid)}.npz"
        files.append(part)
        if part.is_file():
            if progress:
                progress(stop - start)
            continue
        cls, mean, grid = [], [], []
        for b0, b1 in _chunks(stop - start, batch_size):
            images = [image_at(start + i) for i in range(b0, b1)]
            out = backbone.extract_features(images)
            cls.append(out["cls"].float().cpu().numpy())
            mean.append(out["patch_mean"].float().cpu().numpy())
            if patch_grid:
                grid.append(out["patch_tokens"].cpu().numpy().astype(np.float16))
            if progress:
                progress(b1 - b0)
        arrays = {"cls": np.concatenate(cls), "patch_mean": np.concatenate(mean)}
        if patch_grid:
            arrays["patch_grid"] = np.concatenate(grid)
        tmp = part.with_name(part.stem + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(part)
    loaded = [np.load(f) for f in files]
    side = {
        r["id"]: max(int(r.get("cache_height") or 0), int(r.get("cache_width") or 0)) for r in rows
    }
    meta = [
        {**r, "grid_x0": 0, "grid_y0": 0, "grid_x1": side[r["id"]], "grid_y1": side[r["id"]]}
        for r in rows
    ]
    if not rows:
        raise MammodinoError("no image to embed (empty manifest or folder)")
    return save_features(
        output,
        ids=[r["id"] for r in rows],
        cls=np.concatenate([p["cls"] for p in loaded]),
        patch_mean=np.concatenate([p["patch_mean"] for p in loaded]),
        meta=meta,
        patch_grid=np.concatenate([p["patch_grid"] for p in loaded]) if patch_grid else None,
    )


def set_inference_threads() -> None:
    """Use every core for inference unless the user capped threads."""
    import os

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(os.cpu_count() or 1)
