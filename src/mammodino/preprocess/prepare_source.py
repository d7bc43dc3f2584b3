"""Prepare one source file into the cache: images, masks and its manifest rows.

Runs inside a worker process. Each finished source leaves `rows/<key>.json` (written last,
atomically), which is how a rerun knows the source is done.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mammodino.errors import MammoReadError
from mammodino.io.meta import ImageMeta, MammoImage
from mammodino.io.pseudonym import pseudonymous_id
from mammodino.io.reader import read_image
from mammodino.io.volumes import is_volume, mean_projection, open_volume
from mammodino.labels.mini_mias import mias_woman
from mammodino.preprocess.cache import MANIFEST_COLUMNS
from mammodino.preprocess.pipeline import (
    CacheOptions,
    plan_cache,
    render_image,
    render_mask,
    render_pectoral,
    write_png_atomic,
)

PATIENT_RULES = ("auto", "none", "mini-mias")


@dataclass(frozen=True)
class SourceTask:
    """One file to prepare and everything a worker needs to name its outputs."""

    path: str  # absolute
    source: str  # relative to SRC: what the manifest shows
    out: str
    settings: CacheOptions
    salt: str | None
    patient_key: str = ""  # from --patients CSV; '' when not given
    patient_rule: str = "auto"


def source_key(source: str, salt: str | None) -> str:
    """Pseudonymous key of a source path: names its outputs and its row file."""
    return pseudonymous_id(f"source:{source}", salt)


def row_file(out: str | Path, key: str) -> Path:
    """Where a finished source's manifest rows are kept."""
    return Path(out) / "rows" / f"{key}.json"


def _patient(task: SourceTask, meta: ImageMeta) -> tuple[str, str]:
    """(pseudonymous patient id, where its key came from)."""
    if meta.patient_key:
        return pseudonymous_id(f"patient:{meta.patient_key}", task.salt), "dicom"
    if task.patient_key:
        return pseudonymous_id(f"patient:{task.patient_key}", task.salt), "csv"
    woman = mias_woman(task.source) if task.patient_rule in ("auto", "mini-mias") else None
    if woman is not None:
        return pseudonymous_id(f"patient:mini-mias-{woman}", task.salt), "rule"
    return pseudonymous_id(f"patient:{task.source}", task.salt), "image"


def _fmt(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def prepare_source(task: SourceTask) -> list[dict[str, Any]]:
    """Prepare every frame of one file; returns its manifest rows (raises MammoReadError)."""
    out = Path(task.out)
    key = source_key(task.source, task.salt)
    volume = open_volume(task.path) if is_volume(task.path) else None
    n_frames = volume.n_slices if volume else 1
    centre = n_frames // 2

    def read(index: int | None) -> MammoImage:
        # One slice decoded at a time: a DBT volume is never held whole in memory.
        if volume is None:
            return read_image(task.path, voi=task.settings.voi)
        return volume.read_slice(index, task.settings.voi)

    first = read(centre)
    meta = first.meta
    # A volume's one mask comes from a projection: tissue at the skin line may sit in few slices.
    planning = mean_projection(volume, task.settings.voi) if volume else first.pixels
    plan = plan_cache(task.path, planning, task.settings)
    g = plan.geometry
    mask = render_mask(plan.mask, g)
    mask_rel = f"masks/{key}.png"
    write_png_atomic(out / mask_rel, mask)
    patient_id, patient_source = _patient(task, meta)
    named_by = "header" if meta.source_format == "dicom" else "file name"
    laterality, laterality_source = meta.laterality, named_by if meta.laterality else "image"
    if not laterality:
        # Standard hanging puts a right breast's chest wall on the right of the image.
        laterality = "R" if g.flipped else "L"
    spacing = meta.spacing_mm[0] if meta.spacing_mm else None
    common = {
        "source": task.source,
        "mask": mask_rel,
        "laterality": laterality,
        "view": meta.view,
        **g.as_row(),
        "cache_height": g.cache_height,
        "cache_width": g.cache_width,
        "patient_id": patient_id,
        "patient_source": patient_source,
        "laterality_source": laterality_source,
        "spacing_mm": spacing,
        "cache_spacing_mm": spacing / g.scale_y if spacing else None,
        "manufacturer": meta.manufacturer,
        "presentation_intent": meta.presentation_intent,
        "bits_stored": meta.bits_stored,
        "source_format": meta.source_format,
        "mask_fraction": float((mask > 0).mean()),
        "intensity_low": plan.levels.low,
        "intensity_high": plan.levels.high,
    }
    rows = []
    for index in range(n_frames):
        frame = first if index == centre else read(index)
        image = render_image(frame.pixels, g, plan.levels)
        image_id = key if n_frames == 1 else f"{key}-{index:03d}"
        image_rel = f"images/{image_id}.png"
        write_png_atomic(out / image_rel, image)
        pectoral_rel = ""
        if task.settings.pectoral and meta.view in ("MLO", "ML", "") and n_frames == 1:
            pectoral_rel = f"pectoral/{image_id}.png"
            write_png_atomic(out / pectoral_rel, render_pectoral(image, mask))
        row = {"id": image_id, "image": image_rel, "pectoral": pectoral_rel, **common}
        if n_frames > 1:
            row.update(
                volume_id=key,
                slice_index=index,
                slice_count=n_frames,
                slice_spacing_mm=meta.slice_spacing_mm,
            )
        rows.append({c: _fmt(row.get(c)) for c in MANIFEST_COLUMNS})
    _write_json_atomic(row_file(out, key), rows)
    return rows


def _write_json_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(rows))
    os.replace(tmp, path)


def error_row(source: str, err: BaseException) -> dict[str, str]:
    """One errors.csv line: file, error type, reason, what to do (never PHI)."""
    if isinstance(err, MammoReadError):
        return {
            "file": source,
            "error": type(err).__name__,
            "reason": err.reason,
            "what_to_do": err.hint,
        }
    # Only the type: an arbitrary exception text could carry header values.
    return {
        "file": source,
        "error": type(err).__name__,
        "reason": f"unexpected {type(err).__name__} while preparing",
        "what_to_do": "report this file type to the mammodino developers",
    }
