"""Phantom generation speed against the 120 s limit, and the realism figures of the data it wrote.

  .venv/bin/python benchmarks/synth.py                 # 200 FFDM 1024x800 + 20 DBT 40x512x400, 3 runs
  .venv/bin/python benchmarks/synth.py --runs 1 --ffdm 40 --dbt 4

Prints the median wall time of full `generate` runs (DICOM writing included) and its ratio to the
limit, with the CPU time the runs used (on a shared, overloaded machine CPU time / workers is the
better estimate of the wall time on an idle one), then, on the first run's files: the density-class balanced accuracy of a logistic
regression on 16-bin breast histograms (patient-grouped 5-fold CV), the texture power-spectrum
beta of CC images, and how often a DBT lesion's plain contrast peaks within +-1 slice of its depth.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom

from mammodino.synth.analysis import (
    breast_histogram,
    interior_rois,
    lesion_contrast_by_slice,
    power_law_beta,
    radial_power_spectrum,
)
from mammodino.synth.dataset import SynthSettings, generate

LIMIT_S = 120.0


def density_balanced_accuracy(out: Path, labels: list[dict]) -> float:
    """Cross-validated balanced accuracy of density from 16-bin histograms (patients grouped)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = [r for r in labels if r["modality"] == "FFDM"]
    features = np.array(
        [
            breast_histogram(pydicom.dcmread(out / r["file"]).pixel_array, int(r["bits_stored"]))
            for r in rows
        ]
    )
    classes = np.array([r["density"] for r in rows])
    groups = [r["patient_id"] for r in rows]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    predicted = cross_val_predict(model, features, classes, groups=groups, cv=GroupKFold(5))
    return float(balanced_accuracy_score(classes, predicted))


def texture_beta(
    out: Path, labels: list[dict], band: tuple[float, float] = (0.1, 1.0)
) -> tuple[float, list[float]]:
    """beta (power ~ 1/f^beta) of the mean interior spectrum of CC images, and per image."""
    spectra, per_image = [], []
    for r in labels:
        if r["modality"] != "FFDM" or r["view"] != "CC":
            continue
        pixels = pydicom.dcmread(out / r["file"]).pixel_array
        spacing = float(r["spacing_mm"])
        rois = interior_rois(
            pixels, pixels > 0.05 * 4095, int(round(25.6 / spacing)), int(round(20 / spacing))
        )
        if rois:
            freqs, power = radial_power_spectrum(rois, spacing)
            spectra.append(power)
            per_image.append(power_law_beta(freqs, power, band))
    return power_law_beta(freqs, np.mean(spectra, axis=0), band), per_image


def dbt_peak_rate(out: Path, lesions: list[dict]) -> dict[str, tuple[int, int]]:
    """Per lesion type: (lesions whose plain contrast peaks within +-1 slice of the centre, all)."""
    rates: dict[str, list[int]] = {}
    for row in lesions:
        if not row["centre_slice"]:
            continue
        volume = pydicom.dcmread(out / row["file"]).pixel_array
        box = tuple(int(row[k]) for k in ("x0", "y0", "x1", "y1"))
        error = int(np.argmax(lesion_contrast_by_slice(volume, box))) - int(row["centre_slice"])
        hit, total = rates.get(row["lesion_type"], [0, 0])
        rates[row["lesion_type"]] = [hit + int(abs(error) <= 1), total + 1]
    return {k: (v[0], v[1]) for k, v in rates.items()}


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the worker pool)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ffdm", type=int, default=200)
    parser.add_argument("--dbt", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    settings = SynthSettings(args.ffdm, args.dbt, seed=args.seed)
    load = os.getloadavg()[0]
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load:.1f} at start (shared machine: timings are noisy)"
    )
    times, cpu = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            out = Path(tmp) / f"run{run}"
            cpu_before = _cpu_seconds()
            start = time.perf_counter()
            generate(out, settings, workers=args.workers)
            times.append(time.perf_counter() - start)
            cpu.append(_cpu_seconds() - cpu_before)
            print(f"run {run + 1}: {times[-1]:.1f} s wall, {cpu[-1]:.1f} CPU s")
        median = statistics.median(times)
        print(
            f"{args.ffdm} FFDM {settings.ffdm_shape} + {args.dbt} DBT {settings.dbt_shape}, {args.workers} workers: "
            f"median {median:.1f} s over {args.runs} runs = {median / LIMIT_S:.2f} x the {LIMIT_S:.0f} s limit "
            f"(load average now {os.getloadavg()[0]:.1f})"
        )
        idle = statistics.median(cpu) / args.workers
        print(
            f"CPU time: median {statistics.median(cpu):.1f} CPU s; / {args.workers} workers = {idle:.1f} s = {idle / LIMIT_S:.2f} x the limit on an idle machine"
        )
        out = Path(tmp) / "run0"
        with open(out / "labels.csv", newline="") as fh:
            labels = list(csv.DictReader(fh))
        with open(out / "lesions.csv", newline="") as fh:
            lesions = list(csv.DictReader(fh))
        if args.ffdm >= 20:
            print(
                f"density from 16-bin histograms, logistic regression, 5-fold patient CV: balanced accuracy {density_balanced_accuracy(out, labels):.3f} (n={args.ffdm})"
            )
            beta, per_image = texture_beta(out, labels)
            print(
                f"texture beta (power ~ 1/f^beta, 0.1-1 cycles/mm, CC interior): {beta:.2f} mean spectrum; per image {min(per_image):.2f}-{max(per_image):.2f}"
            )
        for kind, (hit, total) in sorted(dbt_peak_rate(out, lesions).items()):
            print(f"DBT {kind}: plain contrast peaks within +-1 slice for {hit}/{total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
