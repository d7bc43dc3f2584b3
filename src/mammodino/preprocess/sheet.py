"""Contact sheet of a prepared cache: thumbnails with mask outlines, to check masks by eye."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from mammodino.preprocess.cache import read_cached_mask, read_cached_pair

MASK_COLOUR = (0, 0, 255)  # BGR red: the breast mask outline
PECTORAL_COLOUR = (255, 200, 0)  # BGR cyan-blue: the pectoral outline
LABEL_COLOUR = (0, 255, 0)


def pick_rows(rows: list[dict[str, str]], limit: int) -> list[dict[str, str]]:
    """At most `limit` rows spread evenly over the manifest (first and last included)."""
    if len(rows) <= limit:
        return rows
    picks = np.linspace(0, len(rows) - 1, limit).round().astype(int)
    return [rows[i] for i in picks]


def _outline(canvas: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> None:
    contours, _ = cv2.findContours(
        (mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    cv2.drawContours(canvas, contours, -1, colour, 1)


def thumbnail(out: Path, row: dict[str, str], height: int) -> np.ndarray:
    """One tile: image scaled to `height` rows (8-bit for display only), outlines, label."""
    image, mask = read_cached_pair(out, row)
    width = max(1, round(image.shape[1] * height / image.shape[0]))
    small = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    canvas = cv2.cvtColor((small // 257).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    _outline(
        canvas, cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST), MASK_COLOUR
    )
    if row.get("pectoral") and (out / row["pectoral"]).is_file():
        muscle = read_cached_mask(out / row["pectoral"])
        small_muscle = cv2.resize(muscle, (width, height), interpolation=cv2.INTER_NEAREST)
        _outline(canvas, small_muscle, PECTORAL_COLOUR)
    label = Path(row["source"]).stem[:18]
    cv2.putText(canvas, label, (3, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, LABEL_COLOUR, 1, cv2.LINE_AA)
    return canvas


def contact_sheet(
    out: str | Path, rows: list[dict[str, str]], tile_height: int = 192, columns: int = 8
) -> np.ndarray:
    """BGR uint8 sheet of the given manifest rows, `columns` tiles per line."""
    out = Path(out)
    tiles = [thumbnail(out, row, tile_height) for row in rows]
    tile_width = max(t.shape[1] for t in tiles)
    lines = []
    for start in range(0, len(tiles), columns):
        line = np.zeros((tile_height, tile_width * columns, 3), np.uint8)
        for k, tile in enumerate(tiles[start : start + columns]):
            line[:, k * tile_width : k * tile_width + tile.shape[1]] = tile
        lines.append(line)
    return np.vstack(lines)
