"""Benchmark of `prepare` on a 12-bit 4664 x 3064 mammogram (NEMA MG1_J2KI, else synthetic).

Prints decode ms and preprocessing ms (mask + orientation + crop + resize + write of image and
mask; median of 5, one OpenCV thread as in a prepare worker) against the 150 ms target, and the
throughput speed-up of 2 worker processes over 1 on N copies of the image against 1.7x (median
of R runs; pool start-up included, which is why too few copies understate it).

  .venv/bin/python benchmarks/prepare.py [--copies 24] [--runs 3] [--repeats 5]

The figures depend on machine load: `uptime` is printed with them.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MG1 = ROOT.parent / "shared" / "data" / "dicom-samples" / "nema-wg04-MG1" / "MG1_J2KI.dcm"
PREPROCESS_TARGET_MS = 150.0
SPEEDUP_TARGET = 1.7


def synthetic_mammogram(path: Path) -> Path:
    """A 12-bit 4664 x 3064 DICOM with a half-ellipse breast, written uncompressed."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import synthetic_breast, write_dicom

    return write_dicom(path, synthetic_breast(4664, 3064, label=True, bits=12))


def median_ms(function, repeats: int) -> float:
    """Median wall time of `function()` over `repeats` calls, in ms."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def preprocess_once(path: Path, pixels: np.ndarray, out: Path) -> None:
    """Mask + orientation + crop (plan), resize (render) and write image and mask."""
    from mammodino.preprocess.pipeline import (
        CacheOptions,
        plan_cache,
        render_image,
        render_mask,
        write_png_atomic,
    )

    plan = plan_cache(path, pixels, CacheOptions())
    write_png_atomic(out / "image.png", render_image(pixels, plan.geometry, plan.levels))
    write_png_atomic(out / "mask.png", render_mask(plan.mask, plan.geometry))


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def prepare_seconds(source: Path, copies: int, workers: int, scratch: Path) -> tuple[float, float]:
    """(wall s, CPU s) of run_prepare on `copies` links to one image, pool start-up included."""
    from mammodino.preprocess.prepare import run_prepare

    src = scratch / f"src-{workers}"
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(scratch / f"out-{workers}", ignore_errors=True)
    src.mkdir()
    for k in range(copies):
        os.symlink(source, src / f"copy{k:03d}.dcm")
    cpu, start = _cpu_seconds(), time.perf_counter()
    result = run_prepare(src, scratch / f"out-{workers}", workers=workers)
    elapsed = time.perf_counter() - start
    assert result.prepared == copies, result.errors
    return elapsed, _cpu_seconds() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=24, help="images for the worker speed-up")
    parser.add_argument("--runs", type=int, default=3, help="speed-up runs; the median is quoted")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from mammodino.io.reader import read_image

    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        source = MG1 if MG1.exists() else synthetic_mammogram(scratch / "synthetic.dcm")
        image = read_image(source)
        h, w = image.pixels.shape
        print(f"image: {source.name}, {h} x {w}, {image.meta.bits_stored}-bit")
        print(f"load: {os.getloadavg()[0]:.1f} (1-min average on {os.cpu_count()} cores)")
        decode = median_ms(lambda: read_image(source), args.repeats)
        print(f"decode: {decode:.0f} ms (median of {args.repeats})")
        preprocess = median_ms(lambda: preprocess_once(source, image.pixels, scratch), args.repeats)
        verdict = "ok" if preprocess <= PREPROCESS_TARGET_MS else "over"
        print(
            f"preprocess (mask+orientation+crop+resize+write): {preprocess:.0f} ms "
            f"(median of {args.repeats}); target {PREPROCESS_TARGET_MS:.0f} ms: "
            f"{preprocess / PREPROCESS_TARGET_MS:.2f}x of target, {verdict}"
        )
        runs = []
        for _ in range(args.runs):
            one, cpu_one = prepare_seconds(source, args.copies, 1, scratch)
            two, cpu_two = prepare_seconds(source, args.copies, 2, scratch)
            runs.append((one / two, one, two, cpu_one, cpu_two))
            print(
                f"  run {len(runs)}: 1 worker {one:.1f} s ({cpu_one:.1f} CPU s), "
                f"2 workers {two:.1f} s ({cpu_two:.1f} CPU s): {one / two:.2f}x"
            )
        speedup, one, two, cpu_one, cpu_two = sorted(runs)[len(runs) // 2]
        verdict = "ok" if speedup >= SPEEDUP_TARGET else "under"
        print(
            f"prepare {args.copies} images, median of {args.runs} runs: 1 worker {one:.1f} s "
            f"({args.copies / one:.2f} images/s), 2 workers {two:.1f} s "
            f"({args.copies / two:.2f} images/s); speed-up {speedup:.2f}x "
            f"(target {SPEEDUP_TARGET}x: {verdict})"
        )
        # CPU seconds show whether the work itself grew with workers or the cores were busy.
        print(
            f"CPU time: 1 worker {cpu_one:.1f} s ({cpu_one / one:.2f} cores), 2 workers "
            f"{cpu_two:.1f} s ({cpu_two / two:.2f} cores of 2)"
        )
        print(f"load after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
