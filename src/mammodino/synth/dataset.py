"""Generate a labelled phantom data set: DICOM files, labels.csv and lesions.csv.

Images come in patients of four views (L-CC, L-MLO, R-CC, R-MLO). Every image draws its random
numbers from a generator seeded by (seed, modality, patient, side, view), so a file's pixels do
not depend on the number of workers or on which other files are generated.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mammodino.io.pseudonym import pseudonymous_id
from mammodino.synth.dbt import DbtSettings, simulate_dbt
from mammodino.synth.dicom_writer import DicomMeta, derived_uid, write_dbt_dicom, write_ffdm_dicom
from mammodino.synth.ffdm import FIELD_MM, LesionBox, Simulated, simulate_ffdm
from mammodino.synth.phantom import BreastCase, draw_traits, place_case

VIEW_ORDER = (("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO"))
MODALITY_CODE = {"FFDM": 1, "DBT": 2}
ID_SALT = "mammodino-synth"
LABEL_COLUMNS = (
    "file", "case_id", "patient_id", "study_uid", "modality", "laterality", "view", "density",
    "gland_fraction", "lesion_present", "lesion_type", "malignant", "n_lesions", "rows", "cols",
    "frames", "spacing_mm", "slice_spacing_mm", "thickness_mm", "bits_stored", "seed", "lesions",
)  # fmt: skip
LESION_COLUMNS = (
    "file", "case_id", "lesion_id", "lesion_type", "malignant", "x0", "y0", "x1", "y1",
    "centre_x", "centre_y", "slice_start", "slice_end", "centre_slice",
)  # fmt: skip


@dataclass(frozen=True)
class SynthSettings:
    """What to generate; shapes are (rows, cols) for FFDM and (slices, rows, cols) for DBT."""

    n_ffdm: int
    n_dbt: int
    seed: int = 0
    ffdm_shape: tuple[int, int] = (1024, 800)
    dbt_shape: tuple[int, int, int] = (40, 512, 400)
    bits: int = 12
    lesion_fraction: float = 0.5
    dbt: DbtSettings = field(default_factory=DbtSettings)


@dataclass(frozen=True)
class Item:
    """One image or volume to generate."""

    modality: str  # 'FFDM' or 'DBT'
    index: int

    @property
    def patient(self) -> int:
        """Patient number within its modality."""
        return self.index // 4

    @property
    def laterality(self) -> str:
        """'L' or 'R'."""
        return VIEW_ORDER[self.index % 4][0]

    @property
    def view(self) -> str:
        """'CC' or 'MLO'."""
        return VIEW_ORDER[self.index % 4][1]

    @property
    def case_id(self) -> str:
        """File stem, unique in the data set, e.g. ffdm_00003_LMLO."""
        return f"{self.modality.lower()}_{self.patient:05d}_{self.laterality}{self.view}"

    @property
    def file(self) -> str:
        """Path relative to the output folder."""
        return f"{self.modality.lower()}/{self.case_id}.dcm"


def plan(settings: SynthSettings) -> list[Item]:
    """Every item of the data set in output order."""
    return [Item("FFDM", i) for i in range(settings.n_ffdm)] + [
        Item("DBT", i) for i in range(settings.n_dbt)
    ]


def build_case(item: Item, settings: SynthSettings) -> tuple[BreastCase, np.random.Generator]:
    """The breast of `item` and the generator its imaging draws from."""
    code = MODALITY_CODE[item.modality]
    side = 0 if item.laterality == "L" else 1
    traits = draw_traits(
        np.random.default_rng([settings.seed, code, item.patient]),
        np.random.default_rng([settings.seed, code, item.patient, side]),
        settings.lesion_fraction,
    )
    rng = np.random.default_rng(
        [settings.seed, code, item.patient, side, 0 if item.view == "CC" else 1]
    )
    return place_case(traits, item.laterality, item.view, FIELD_MM, rng), rng


def simulate(item: Item, settings: SynthSettings) -> tuple[BreastCase, Simulated]:
    """Pixels and lesion boxes of `item` (no file written)."""
    case, rng = build_case(item, settings)
    if item.modality == "FFDM":
        return case, simulate_ffdm(case, settings.ffdm_shape, rng, settings.bits)
    return case, simulate_dbt(case, settings.dbt_shape, rng, settings.bits, settings.dbt)


def _patient_id(item: Item, settings: SynthSettings) -> str:
    return pseudonymous_id(f"{settings.seed}:{item.modality}:{item.patient}", salt=ID_SALT)


def render_item(item: Item, settings: SynthSettings, out_dir: str) -> tuple[dict, list[dict]]:
    """Simulate `item`, write its DICOM file under `out_dir`; return its label and lesion rows."""
    case, sim = simulate(item, settings)
    patient_id = _patient_id(item, settings)
    study_key = f"{settings.seed}:{item.modality}:{item.patient}"
    meta = DicomMeta(
        patient_id=patient_id,
        study_key=study_key,
        instance_key=f"{settings.seed}:{item.file}",
        laterality=item.laterality,
        view=item.view,
        spacing_mm=sim.spacing_mm,
        bits_stored=settings.bits,
        slice_spacing_mm=sim.slice_spacing_mm,
        thickness_mm=sim.thickness_mm,
        series_number=1 if item.modality == "FFDM" else 2,
        instance_number=item.index % 4 + 1,
    )
    path = Path(out_dir) / item.file
    if item.modality == "FFDM":
        write_ffdm_dicom(path, sim.pixels, meta)
    else:
        write_dbt_dicom(path, sim.pixels, meta)
    return _label_row(item, settings, case, sim, patient_id, study_key), _lesion_rows(
        item, sim.lesions
    )


def _label_row(
    item: Item,
    settings: SynthSettings,
    case: BreastCase,
    sim: Simulated,
    patient_id: str,
    study_key: str,
) -> dict:
    lesion = sim.lesions[0] if sim.lesions else None
    shapes = [{"type": "box", "x0": b.x0, "y0": b.y0, "x1": b.x1, "y1": b.y1} for b in sim.lesions]
    return {
        "file": item.file,
        "case_id": item.case_id,
        "patient_id": patient_id,
        "study_uid": derived_uid("study:" + study_key),
        "modality": item.modality,
        "laterality": item.laterality,
        "view": item.view,
        "density": case.traits.density,
        "gland_fraction": f"{case.traits.gland_fraction:.4f}",
        "lesion_present": int(lesion is not None),
        "lesion_type": lesion.kind if lesion else "none",
        "malignant": int(bool(lesion and lesion.malignant)),
        "n_lesions": len(sim.lesions),
        "rows": sim.pixels.shape[-2],
        "cols": sim.pixels.shape[-1],
        "frames": sim.pixels.shape[0] if sim.pixels.ndim == 3 else 1,
        "spacing_mm": f"{sim.spacing_mm:.6f}",
        "slice_spacing_mm": f"{sim.slice_spacing_mm:.6f}" if sim.slice_spacing_mm else "",
        "thickness_mm": f"{sim.thickness_mm:.2f}",
        "bits_stored": settings.bits,
        "seed": settings.seed,
        "lesions": json.dumps(shapes),
    }


def _lesion_rows(item: Item, boxes: list[LesionBox]) -> list[dict]:
    def opt(value: int | None) -> int | str:
        return "" if value is None else value

    return [
        {
            "file": item.file,
            "case_id": item.case_id,
            "lesion_id": f"{item.case_id}_{k}",
            "lesion_type": b.kind,
            "malignant": int(b.malignant),
            "x0": b.x0,
            "y0": b.y0,
            "x1": b.x1,
            "y1": b.y1,
            "centre_x": f"{b.centre_x:.2f}",
            "centre_y": f"{b.centre_y:.2f}",
            "slice_start": opt(b.slice_start),
            "slice_end": opt(b.slice_end),
            "centre_slice": opt(b.centre_slice),
        }
        for k, b in enumerate(boxes)
    ]


def _run_items(
    items: list[Item], settings: SynthSettings, out_dir: str, workers: int
) -> Iterator[tuple[dict, list[dict]]]:
    if workers <= 1:
        for item in items:
            yield render_item(item, settings, out_dir)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(render_item, item, settings, out_dir) for item in items]
        for future in futures:
            yield future.result()


def generate(
    out_dir: str | Path,
    settings: SynthSettings,
    workers: int = 1,
    on_item: Callable[[Item], None] | None = None,
) -> tuple[list[dict], list[dict]]:
    """Write every file, OUT/labels.csv and OUT/lesions.csv; return the label and lesion rows."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = plan(settings)
    labels: list[dict] = []
    lesions: list[dict] = []
    for item, (label, rows) in zip(
        items, _run_items(items, settings, str(out), workers), strict=True
    ):
        labels.append(label)
        lesions.extend(rows)
        if on_item is not None:
            on_item(item)
    _write_csv(out / "labels.csv", LABEL_COLUMNS, labels)
    _write_csv(out / "lesions.csv", LESION_COLUMNS, lesions)
    return labels, lesions


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".part")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
