"""Contact sheet of a phantom data set: FFDM thumbnails with lesion boxes and a DBT slice strip."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pydicom

THUMB_HEIGHT = 256
MALIGNANT_BGR = (40, 40, 230)
BENIGN_BGR = (60, 200, 60)


def _to_bgr(pixels: np.ndarray, bits: int) -> np.ndarray:
    gray = np.clip(pixels.astype(np.float32) * (255.0 / ((1 << bits) - 1)), 0, 255).astype(np.uint8)
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)


def _thumbnail(image: np.ndarray, boxes: list[dict], title: str) -> np.ndarray:
    scale = THUMB_HEIGHT / image.shape[0]
    thumb = cv2.resize(
        image, (round(image.shape[1] * scale), THUMB_HEIGHT), interpolation=cv2.INTER_AREA
    )
    for b in boxes:
        colour = MALIGNANT_BGR if b["malignant"] == "1" else BENIGN_BGR
        p0 = (int(int(b["x0"]) * scale) - 2, int(int(b["y0"]) * scale) - 2)
        p1 = (int(int(b["x1"]) * scale) + 2, int(int(b["y1"]) * scale) + 2)
        cv2.rectangle(thumb, p0, p1, colour, 1)
    cv2.putText(
        thumb, title, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA
    )
    return thumb


def _row(tiles: list[np.ndarray], width: int) -> np.ndarray:
    row = np.zeros((THUMB_HEIGHT, width, 3), dtype=np.uint8)
    x = 0
    for tile in tiles:
        w = min(tile.shape[1], width - x)
        row[:, x : x + w] = tile[:, :w]
        x += w + 4
    return row


def write_preview(
    out_dir: str | Path,
    labels: list[dict],
    lesions: list[dict],
    max_ffdm: int = 16,
    n_slices: int = 8,
) -> Path:
    """Write OUT/preview.png; return its path."""
    out = Path(out_dir)
    by_file = defaultdict(list)
    for row in lesions:
        by_file[row["file"]].append(row)
    rows = []
    ffdm = [r for r in labels if r["modality"] == "FFDM"][:max_ffdm]
    tiles = []
    for r in ffdm:
        ds = pydicom.dcmread(out / r["file"])
        title = f"{r['laterality']}{r['view']} {r['density']} {r['lesion_type'].split('_')[0]}"
        tiles.append(
            _thumbnail(_to_bgr(ds.pixel_array, int(ds.BitsStored)), by_file[r["file"]], title)
        )
    per_row = 8
    width = max(
        [sum(t.shape[1] + 4 for t in tiles[i : i + per_row]) for i in range(0, len(tiles), per_row)]
        + [1]
    )
    dbt = next((r for r in labels if r["modality"] == "DBT" and r["lesion_present"] == "1"), None)
    dbt = dbt or next((r for r in labels if r["modality"] == "DBT"), None)
    strip = []
    if dbt is not None:
        ds = pydicom.dcmread(out / dbt["file"])
        volume = ds.pixel_array
        boxes = by_file[dbt["file"]]
        picks = np.unique(np.linspace(0, volume.shape[0] - 1, n_slices).round().astype(int))
        if boxes:
            centre = int(boxes[0]["centre_slice"])
            picks = np.unique(
                np.clip(centre + (np.arange(n_slices) - n_slices // 2) * 3, 0, volume.shape[0] - 1)
            )
        for k in picks:
            inside = [b for b in boxes if int(b["slice_start"]) <= k < int(b["slice_end"])]
            strip.append(
                _thumbnail(
                    _to_bgr(volume[k], int(ds.BitsStored)), inside, f"{dbt['case_id']} slice {k}"
                )
            )
        width = max(width, sum(t.shape[1] + 4 for t in strip))
    for i in range(0, len(tiles), per_row):
        rows.append(_row(tiles[i : i + per_row], width))
    if strip:
        rows.append(_row(strip, width))
    sheet = (
        np.vstack([np.vstack([r, np.zeros((4, width, 3), np.uint8)]) for r in rows])
        if rows
        else np.zeros((8, 8, 3), np.uint8)
    )
    path = out / "preview.png"
    cv2.imwrite(str(path), sheet)
    return path
