"""Acceptance on real data: all of mini-MIAS prepared, findings inside masks, chest wall left.

mini-MIAS coordinates have their y origin at the bottom-left (numpy row = 1023 - y). mdb212 and
mdb214 are left out of the coverage figure: their centres lie on black background outside the
breast, annotation errors of the database (../shared/data/README.md).
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers import shared_data_dir
from mammodino.io.reader import read_image
from mammodino.preprocess.geometry import cache_to_original, original_to_cache
from mammodino.preprocess.prepare import run_prepare

ANNOTATION_ERRORS = {"mdb212", "mdb214"}
MIAS_SIZE = 1024


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def finding_coverage(mias: Path, out: Path) -> tuple[int, int, list[str]]:
    """(findings inside their cached mask, findings counted, refnums outside)."""
    manifest = {r["source"]: r for r in _rows(out / "manifest.csv")}
    inside, counted, outside = 0, 0, []
    for finding in _rows(mias / "labels_rows.csv"):
        if not finding["x"] or finding["refnum"] in ANNOTATION_ERRORS:
            continue
        row = manifest[finding["file"]]
        mask = cv2.imread(str(out / row["mask"]), cv2.IMREAD_UNCHANGED)
        y_row = MIAS_SIZE - 1 - int(finding["y_from_bottom"])
        cx, cy = (round(v) for v in original_to_cache(row, int(finding["x"]), y_row))
        hit = 0 <= cy < mask.shape[0] and 0 <= cx < mask.shape[1] and mask[cy, cx] > 0
        inside += hit
        counted += 1
        if not hit:
            outside.append(finding["refnum"])
    return inside, counted, outside


def background_share(mias: Path, out: Path, row: dict[str, str]) -> float:
    """Share of mask pixels whose original intensity is below 5% of the image's 99th percentile."""
    mask = cv2.imread(str(out / row["mask"]), cv2.IMREAD_UNCHANGED) > 0
    original = read_image(mias / row["source"]).pixels
    ys, xs = np.nonzero(mask)
    ox, oy = cache_to_original(row, xs, ys)
    ox = np.clip(np.rint(ox), 0, original.shape[1] - 1).astype(int)
    oy = np.clip(np.rint(oy), 0, original.shape[0] - 1).astype(int)
    return float((original[oy, ox] < 0.05 * np.percentile(original, 99)).mean())


@pytest.mark.realdata
@pytest.mark.multiproc
@pytest.mark.slow
def test_mini_mias_prepares_with_masks_that_hold_the_findings(tmp_path):
    mias = shared_data_dir("mini-mias")
    out = tmp_path / "cache"
    result = run_prepare(mias, out, workers=2)
    assert (result.prepared, result.skipped) == (322, 0)
    inside, counted, outside = finding_coverage(mias, out)
    print(f"findings inside mask: {inside}/{counted} = {inside / counted:.4f}; outside {outside}")
    assert counted == 117 and inside / counted >= 0.99
    rows = _rows(out / "manifest.csv")
    left = 0
    for row in rows:
        columns = np.nonzero(cv2.imread(str(out / row["mask"]), cv2.IMREAD_UNCHANGED))[1]
        left += columns.mean() < (int(row["cache_width"]) - 1) / 2
    assert left == 322
    shares = [background_share(mias, out, row) for row in rows]
    print(f"background in mask: mean {np.mean(shares):.4f}, max {np.max(shares):.4f}")
    assert np.mean(shares) <= 0.02
    pairs = {}
    for row in rows:  # left/right images of one woman share a pseudonymous patient
        pairs.setdefault(row["patient_id"], []).append(row["source"])
    assert len(pairs) == 161 and all(len(v) == 2 for v in pairs.values())


@pytest.mark.realdata
def test_mg1_prepares_with_chest_wall_left(tmp_path):
    path = shared_data_dir("dicom-samples", "nema-wg04-MG1") / "MG1_J2KI.dcm"
    result = run_prepare(path, tmp_path / "cache", workers=1)
    assert (result.prepared, result.skipped) == (1, 0)
    row = _rows(tmp_path / "cache" / "manifest.csv")[0]
    assert (row["height"], row["width"], row["laterality"], row["view"]) == (
        "4664",
        "3064",
        "L",
        "MLO",
    )
    assert row["flipped"] == "0" and int(row["cache_height"]) == 1024
    assert 0.5 < float(row["mask_fraction"]) < 0.95
