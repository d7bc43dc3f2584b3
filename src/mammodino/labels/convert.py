"""Our labels CSV, written from a data set's recipe (`mammodino labels DATASET SRC OUT.csv`).

One row per image (breast-level data sets: one per breast, `image` empty):
`image` (path as the data set lays it out), `patient_id`, `laterality` (L/R), `view`, `density`
(ACR A-D; mini-MIAS F/G/D), `birads`, `malignancy` (1/0, empty = unknown), `abnormal` (1/0),
`lesions` (JSON shapes in original pixels, see eval/localization.py; `[]` = none, empty =
unknown), `split` (the data set's own split where it publishes one), plus a few named extras.
`mammodino eval` joins it to features by `image` (path suffix) or by `patient_id` + `laterality`.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from mammodino.errors import LabelsError
from mammodino.labels.mini_mias import mini_mias
from mammodino.labels.recipes import cbis_ddsm, cmmd, embed, inbreast, rsna_screening, vindr_mammo

COLUMNS = (
    "image",
    "patient_id",
    "laterality",
    "view",
    "density",
    "birads",
    "malignancy",
    "abnormal",
    "lesions",
    "split",
)


RECIPES: dict[str, Callable[[Path], list[dict[str, str]]]] = {
    "vindr-mammo": vindr_mammo,
    "cbis-ddsm": cbis_ddsm,
    "inbreast": inbreast,
    "rsna-screening": rsna_screening,
    "cmmd": cmmd,
    "embed": embed,
    "mini-mias": mini_mias,
}


def convert_labels(dataset: str, src: str | Path, output: str | Path) -> int:
    """Convert a data set's published labels to our labels CSV; returns the number of rows."""
    if dataset not in RECIPES:
        raise LabelsError(f"unknown data set {dataset!r}; choose one of {', '.join(RECIPES)}")
    src = Path(src)
    if not src.exists():
        raise LabelsError(f"{src}: not found")
    rows = RECIPES[dataset](src)
    if not rows:
        raise LabelsError(f"{src.name}: no label rows found for {dataset}")
    columns = list(COLUMNS) + [k for k in rows[0] if k not in COLUMNS]
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)
