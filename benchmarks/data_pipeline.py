"""Pretraining data pipeline: throughput of the tissue-aware sample vs a plain pipeline, and the
tissue sampler's acceptance figures (issue 4, acceptance points 2 and 6).

Throughput: samples/s of one worker (one process, one OpenCV and one torch thread) building the full
sample (2 global + 8 local crops, patch tissue fractions, iBOT masks) from a prepared cache, against
a plain RandomResizedCrop pipeline on the same cache in the same run: same decode, crops resized the
same way, same augmentations and DINOv2 block masks, but no mask file, integral image, centre
sampling, tissue test or patch tissue. Runs alternate between the two; medians of --runs runs,
per wall-clock second and per CPU second of the worker (the CPU figure is the one that holds on a
shared machine, where the wall clock also counts other people's jobs).
`cold`: every sample decodes its files (data.cache_mb=0); `warm`: decoded images stay in the
per-worker LRU cache (both pipelines keep their images).

Acceptance: share of global crops reaching the global tau for the tissue sampler and for random
crops; masked background patches under tissue-aware masking (must be 0).

    .venv/bin/python benchmarks/data_pipeline.py --source /tmp/mias-cache
    # tiny-cpu's crops on a cache (how much tissue each sampler's crops hold), no timing:
    .venv/bin/python benchmarks/data_pipeline.py --source CACHE --config tiny-cpu \
        --skip-throughput --mask-epochs 0
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import OrderedDict
from typing import Any

import cv2
import numpy as np
import torch

from mammodino.config import load_config
from mammodino.data.augment import augment_intensity, draw_vflip, vflip
from mammodino.data.dataset import build_pretrain_dataset
from mammodino.data.image_dataset import PretrainDataset, read_cached_pixels
from mammodino.data.resumable_sampler import ResumableSampler, split_key
from mammodino.data.tissue_crops import random_resized_crop_box, resize_crop, sample_crop_box
from mammodino.data.tissue_masking import block_mask
from mammodino.data.transform import PretrainTransform, sample_rngs
from mammodino.settings import CROP_SAMPLERS


class PlainPipeline:
    """DINOv2's recipe on grayscale: RandomResizedCrop, flip, intensity augmentations, block masks."""

    def __init__(self, dataset: PretrainDataset, cache: bool) -> None:
        self.records = dataset.records
        self.transform: PretrainTransform = dataset.transform
        self.seed = dataset.seed
        self.cache: OrderedDict[int, tuple[np.ndarray, float]] | None = (
            OrderedDict() if cache else None
        )

    def load(self, index: int) -> tuple[np.ndarray, float]:
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        entry = read_cached_pixels(self.records[index].image)
        if self.cache is not None:
            self.cache[index] = entry
        return entry

    def __getitem__(self, key: int) -> dict[str, Any]:
        epoch, index = split_key(key, len(self.records))
        pixels, intensity_max = self.load(index)
        crop_rng, aug_rng, mask_rng = sample_rngs((self.seed, epoch, index))
        c, a, m = self.transform.crops, self.transform.augment, self.transform.masking
        height, width = pixels.shape
        scale = np.float32(1.0 / intensity_max)
        grid = c.global_size // self.transform.patch_size
        globals_, masks = [], []
        for i in range(c.n_global):
            box = random_resized_crop_box(crop_rng, height, width, c.global_scale, c.ratio)
            crop = resize_crop(pixels, box, c.global_size) * scale
            crop = vflip(crop) if draw_vflip(crop_rng, a.vflip_p) else crop
            globals_.append(augment_intensity(crop, aug_rng, a, "global", i))
            mask = np.zeros(grid * grid, dtype=bool)
            if mask_rng.random() < m.probability:
                target = int(grid * grid * mask_rng.uniform(*m.ratio))
                mask = block_mask(mask_rng, (grid, grid), target).reshape(-1)
            masks.append(mask)
        locals_ = []
        for i in range(c.n_local):
            box = random_resized_crop_box(crop_rng, height, width, c.local_scale, c.ratio)
            crop = resize_crop(pixels, box, c.local_size) * scale
            crop = vflip(crop) if draw_vflip(crop_rng, a.vflip_p) else crop
            locals_.append(augment_intensity(crop, aug_rng, a, "local", i))
        return {
            "global_crops": torch.from_numpy(np.stack(globals_)[:, None]),
            "local_crops": torch.from_numpy(np.stack(locals_)[:, None]),
            "masks": torch.from_numpy(np.stack(masks)),
            "index": index,
        }


def samples_per_s(pipeline: Any, keys: list[int]) -> tuple[float, float]:
    """Samples per wall-clock second and per CPU second of this process."""
    wall, cpu = time.perf_counter(), time.process_time()
    for key in keys:
        pipeline[key]
    return len(keys) / (time.perf_counter() - wall), len(keys) / (time.process_time() - cpu)


def throughput(cfg: Any, samples: int, runs: int) -> None:
    """Print medians of samples/s of both pipelines, cold and warm, and their ratio."""
    for mode, cache_mb in (("cold", 0), ("warm", 4096)):
        cfg["data"]["cache_mb"] = cache_mb
        tissue = build_pretrain_dataset(cfg)
        plain = PlainPipeline(tissue, cache=cache_mb > 0)
        n = len(tissue)
        keys = [ResumableSampler(n, seed=0).key_at(p) for p in range(samples)]
        if cache_mb:
            for key in keys:  # fill both caches first: warm measures the steady state
                tissue[key], plain[key]
        rates: dict[str, list[tuple[float, float]]] = {"tissue": [], "plain": []}
        for _ in range(runs):
            rates["tissue"].append(samples_per_s(tissue, keys))
            rates["plain"].append(samples_per_s(plain, keys))
        for clock, k in (("wall", 0), ("cpu", 1)):
            t = statistics.median(r[k] for r in rates["tissue"])
            p = statistics.median(r[k] for r in rates["plain"])
            paired = statistics.median(
                a[k] / b[k] for a, b in zip(rates["tissue"], rates["plain"], strict=True)
            )
            print(
                f"{mode} {clock:4s}: tissue-aware {t:6.1f} samples/s  plain RRC {p:6.1f} samples/s  "
                f"ratio {t / p:.3f} (median of paired runs {paired:.3f}; {runs} runs x {samples})"
            )


def acceptance(cfg: Any, draws_per_image: int, epochs: int) -> None:
    """Share of global and local crops reaching their tau per sampler; masked background patches."""
    cfg["data"]["cache_mb"] = 4096
    dataset = build_pretrain_dataset(cfg)
    c = dataset.transform.crops
    kinds = {
        "global": (c.global_scale, c.global_min_tissue),
        "local": (c.local_scale, c.local_min_tissue),
    }
    rng = np.random.default_rng(0)
    fractions = {(kind, sampler): [] for kind in kinds for sampler in CROP_SAMPLERS}
    for index in range(len(dataset)):
        _, _, tissue = dataset.load(index)
        for (kind, sampler), values in fractions.items():
            scale, tau = kinds[kind]
            for _ in range(draws_per_image):
                _, fraction = sample_crop_box(
                    rng, tissue, scale, c.ratio, tau, c.max_tries, c.dense_weight, sampler
                )
                values.append(fraction)
    for (kind, sampler), values in fractions.items():
        tau = kinds[kind][1]
        values_array = np.array(values)
        print(
            f"{kind} crops reaching tau={tau}: {sampler:6s} sampler "
            f"{100 * np.mean(values_array >= tau):6.2f}% of {values_array.size} "
            f"(mean tissue fraction {values_array.mean():.3f}; "
            f">= 0.9: {100 * np.mean(values_array >= 0.9):.1f}%)"
        )
    threshold = dataset.transform.masking.patch_tissue_threshold
    masked = masked_background = masked_zero = masked_crops = tissue_tokens = 0
    for key in range(epochs * len(dataset)):
        sample = dataset[key]
        patch_tissue = sample["global_patch_tissue"].flatten(1)
        masks = sample["masks"]
        masked += int(masks.sum())
        masked_background += int((masks & (patch_tissue < threshold)).sum())
        masked_zero += int((masks & (patch_tissue == 0)).sum())
        masked_crops += int(masks.any(1).sum())
        tissue_tokens += int((patch_tissue[masks.any(1)] >= threshold).sum())
    print(
        f"tissue-aware masking over {epochs * len(dataset)} samples: {masked_crops} masked global "
        f"crops, {masked} masked tokens ({100 * masked / max(tissue_tokens, 1):.1f}% of their "
        f"tissue tokens); masked background patches (tissue < {threshold}): {masked_background}; "
        f"masked patches with no tissue at all: {masked_zero}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source", default="/tmp/mias-cache", help="prepared cache or image folder"
    )
    parser.add_argument("--samples", type=int, default=48, help="samples per timed run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--draws", type=int, default=20, help="global crops per image (acceptance)")
    parser.add_argument("--mask-epochs", type=int, default=2, help="epochs of samples (acceptance)")
    parser.add_argument("--skip-acceptance", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--config", help="preset (e.g. tiny-cpu); default: the bundled defaults")
    parser.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    cfg = load_config(preset=args.config, overrides=[f"data.source={args.source}", *args.overrides])
    c = cfg["crops"]
    print(
        f"source {args.source}; {c['n_global']} x {c['global_size']} + {c['n_local']} x "
        f"{c['local_size']} crops, patch {cfg['model']['patch_size']}; one worker; "
        "shared 2-core machine: other jobs run at the same time, figures are noisy"
    )
    if not args.skip_throughput:
        throughput(cfg, args.samples, args.runs)
    if not args.skip_acceptance:
        acceptance(cfg, args.draws, args.mask_epochs)


if __name__ == "__main__":
    main()
