"""Joining a labels CSV to features, turning a label column into classes, and finding patients."""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from mammodino.errors import EvaluationError
from mammodino.eval.features import Features
from mammodino.labels.mini_mias import mias_patient_id

PATH_COLUMNS = ("image", "file", "path", "image_path", "source")
MISSING = {"", "na", "nan", "none", "null", "n/a"}
# Known ordinal scales (lowest first). Values are compared case-insensitively.
ORDINAL_SCALES = (("f", "g", "d"), ("a", "b", "c", "d"))
POSITIVE_VALUES = {"1", "abnormal", "malignant", "m", "yes", "true", "cancer", "positive"}


def read_labels_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a labels CSV as dicts (whitespace around values stripped)."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"{path}: labels file not found")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        rows = [
            {k.strip(): (v or "").strip() for k, v in r.items() if k} for r in csv.DictReader(fh)
        ]
    if not rows:
        raise EvaluationError(f"{path.name}: the labels file has no rows")
    return rows


def _parts(path: str) -> tuple[str, ...]:
    return PurePosixPath(path.replace("\\", "/").lower()).parts


def _stem(name: str) -> str:
    return PurePosixPath(name).name.split(".")[0]


def join_labels(
    features: Features, rows: list[dict[str, str]], task: str | None = None, how: str = "auto"
) -> list[dict[str, str] | None]:
    """The label row of each feature row (None where no label row matches).

    `how`: `id` (labels carry the manifest `id`), `path` (a labels column `image`/`file`/... whose
    path is a suffix of the manifest `source`; a bare file name works where it is unique, the
    stem where extensions differ, and a path ending in `/` names the folder holding the image, as
    CBIS-DDSM's case folders do), `breast`
    (breast-level labels: `patient_id` + `laterality`), or `auto` (the first of these that fits).
    Several matching rows are fine if they agree on `task`.
    """
    columns = set(rows[0])
    if how == "auto":
        if "id" in columns and {r["id"] for r in rows} & set(features.ids.tolist()):
            how = "id"
        elif columns & set(PATH_COLUMNS):
            how = "path"
        elif {"patient_id", "laterality"} <= columns:
            how = "breast"
        else:
            raise EvaluationError(
                "cannot join labels to features: the labels need an `id`, an `image`/`file` path "
                "column, or `patient_id` + `laterality`"
            )
    if how == "id":
        index = defaultdict(list)
        for r in rows:
            index[r["id"]].append(r)
        found = [index.get(i, []) for i in features.ids.tolist()]
    elif how == "path":
        column = next(c for c in PATH_COLUMNS if c in columns)
        found = _join_by_path(features, rows, column)
    elif how == "breast":
        index = defaultdict(list)
        for r in rows:
            index[(r["patient_id"], r["laterality"][:1].upper())].append(r)
        found = [
            index.get((m.get("patient_id", ""), m.get("laterality", "")[:1].upper()), [])
            for m in features.meta
        ]
    else:
        raise EvaluationError(f"unknown join {how!r}; use auto, id, path or breast")
    out: list[dict[str, str] | None] = []
    for fid, matches in zip(features.ids.tolist(), found, strict=True):
        if task is not None and len({m.get(task, "") for m in matches}) > 1:
            raise EvaluationError(f"image {fid}: several label rows disagree on {task!r}")
        out.append(matches[0] if matches else None)
    return out


def _common_suffix(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def _join_by_path(features: Features, rows: list[dict[str, str]], column: str) -> list[list[dict]]:
    by_name = defaultdict(list)
    by_stem = defaultdict(list)
    by_folder = defaultdict(list)
    for r in rows:
        parts = _parts(r[column])
        if parts and r[column].endswith("/"):
            by_folder[parts[-1]].append((parts, r))
        elif parts:
            by_name[parts[-1]].append((parts, r))
            by_stem[_stem(parts[-1])].append((parts, r))
    found = []
    for meta in features.meta:
        source = _parts(meta.get("source", "") or meta.get("id", ""))
        if not source:
            found.append([])
            continue
        candidates = by_name.get(source[-1]) or by_stem.get(_stem(source[-1]), [])
        if not candidates:  # the deepest folder of the source that a label row names
            folders = [by_folder[f] for f in reversed(source[:-1]) if f in by_folder]
            candidates = folders[0] if folders else []
        side = meta.get("laterality", "")[:1].upper()
        if len(candidates) > 1 and side:
            # A patient folder with one label row per breast (CMMD): keep this image's side.
            same_side = [
                (p, r) for p, r in candidates if r.get("laterality", "")[:1].upper() == side
            ]
            candidates = same_side or candidates
        if len(candidates) > 1:
            # Several rows share the file name (CBIS-DDSM's 1-1.dcm): keep the longest path suffix.
            depths = [_common_suffix(p, source) for p, _ in candidates]
            candidates = [c for c, d in zip(candidates, depths, strict=True) if d == max(depths)]
        found.append([r for _, r in candidates])
    return found


@dataclass
class TaskLabels:
    """Class codes of the labelled images of one task."""

    index: np.ndarray  # rows of the features that carry a label
    y: np.ndarray  # class code per labelled row
    classes: list[str]  # class names, code order (ordinal: lowest first; binary: positive last)
    ordinal: bool


def _natural_key(value: str) -> tuple:
    match = re.match(r"^\s*(-?\d+(?:\.\d+)?)(.*)$", value)
    return (0, float(match.group(1)), match.group(2).lower()) if match else (1, 0.0, value.lower())


def is_ordinal_scale(names: list[str]) -> bool:
    """Whether class names form an ordered scale of more than two levels: numbers (BI-RADS 4a
    counts as 4) or a known letter scale (F/G/D, A-D). Decided by the values, never the column
    name: a binary BI-RADS >= 4 column is not ordinal."""
    lowered = {n.lower() for n in names}
    if len(lowered) <= 2:
        return False
    numeric = all(_natural_key(n)[0] == 0 for n in names)
    return numeric or any(lowered <= set(s) for s in ORDINAL_SCALES)


def encode_task(
    values: list[str | None], task: str, ordinal: str = "auto", positive: str | None = None
) -> TaskLabels:
    """Class codes for a label column; missing values ('', NA) leave an image out of the task."""
    keep = [i for i, v in enumerate(values) if v is not None and v.strip().lower() not in MISSING]
    names = sorted({values[i].strip() for i in keep}, key=_natural_key)
    if len(names) < 2:
        raise EvaluationError(
            f"task {task!r} has {len(names)} distinct value(s) among the joined images; "
            "check --task and the join (need at least 2 classes)"
        )
    lowered = tuple(n.lower() for n in names)
    scale = next((s for s in ORDINAL_SCALES if set(lowered) <= set(s)), None)
    is_ordinal = {"yes": True, "no": False, "auto": is_ordinal_scale(names)}.get(ordinal)
    if is_ordinal is None:
        raise EvaluationError(f"--ordinal must be auto, yes or no; got {ordinal!r}")
    if scale is not None and is_ordinal:
        names.sort(key=lambda n: scale.index(n.lower()))
    if len(names) == 2 and (positive or not is_ordinal):
        pos = positive.lower() if positive else None
        hit = [n for n in names if (n.lower() == pos if pos else n.lower() in POSITIVE_VALUES)]
        if positive and not hit:
            raise EvaluationError(f"--positive {positive!r} is not a value of {task!r}: {names}")
        if hit:
            names = [n for n in names if n != hit[0]] + [hit[0]]
    code = {n: c for c, n in enumerate(names)}
    y = np.asarray([code[values[i].strip()] for i in keep], dtype=np.int64)
    return TaskLabels(np.asarray(keep, dtype=np.int64), y, names, is_ordinal)


def resolve_patients(
    features: Features, joined: list[dict[str, str] | None], column: str = "patient_id"
) -> list[str]:
    """The patient of each feature row: labels column, else mini-MIAS pairs, else meta column.

    `column='none'` makes every image its own patient (only for data without repeat patients).
    mini-MIAS file names come before the manifest because its per-file ids would split the
    left/right pairs of one woman across folds.
    """
    out = []
    for i, (meta, row) in enumerate(zip(features.meta, joined, strict=True)):
        if column == "none":
            out.append(f"image{i}")
            continue
        value = (row or {}).get(column, "")
        if not value:
            name = (row or {}).get("file") or meta.get("source", "") or meta.get("id", "")
            value = mias_patient_id(name) or meta.get(column, "")
        if not value:
            raise EvaluationError(
                f"image {features.ids[i]} has no {column!r} in the labels or the features meta "
                "(pass --patient-column, or 'none' if no patient has two images)"
            )
        out.append(value)
    return out
