"""Benchmark recipes: each public data set's published label files -> our labels CSV.

Our labels CSV has one row per image (breast-level data sets: one per breast, `image` empty):
`image` (path as the data set lays it out), `patient_id`, `laterality` (L/R), `view`, `density`
(ACR A-D; mini-MIAS F/G/D), `birads`, `malignancy` (1/0, empty = unknown), `abnormal` (1/0),
`lesions` (JSON shapes in original pixels, see eval/localization.py; `[]` = none, empty =
unknown), `split` (the data set's own split where it publishes one), plus a few named extras.
`mammodino eval` joins it to features by `image` (path suffix) or by `patient_id` + `laterality`.
"""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

from mammodino.errors import LabelsError
from mammodino.eval.splits import mias_patient_id

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
ACR_LETTERS = {"1": "A", "2": "B", "3": "C", "4": "D"}


def _find(src: Path, patterns: Iterable[str], what: str) -> list[Path]:
    """Files under `src` (or `src` itself) whose name matches one of the glob patterns."""
    if src.is_file():
        return [src]
    found = sorted({p for pattern in patterns for p in src.rglob(pattern) if p.is_file()})
    if not found:
        raise LabelsError(f"{src}: no {what} found (expected {', '.join(patterns)})")
    return found


def _read_csv(path: Path, required: Iterable[str], delimiter: str | None = None) -> list[dict]:
    """Rows of a published CSV, with a clear error naming the missing documented columns."""
    if path.suffix.lower() in (".xlsx", ".xls"):
        raise LabelsError(
            f"{path.name}: spreadsheet; save it as CSV first "
            "(e.g. `libreoffice --headless --convert-to csv FILE`) and pass the .csv"
        )
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    if delimiter is None:
        first = text.splitlines()[0] if text else ""
        delimiter = ";" if first.count(";") > first.count(",") else ","
    rows = [
        {(k or "").strip(): (v or "").strip() for k, v in r.items()}
        for r in csv.DictReader(text.splitlines(), delimiter=delimiter)
    ]
    header = set(rows[0]) if rows else set()
    missing = [c for c in required if c not in header]
    if missing:
        raise LabelsError(f"{path.name}: missing documented columns {missing}")
    return rows


def _laterality(value: str) -> str:
    value = value.strip().upper()
    return value[:1] if value[:1] in ("L", "R") else ""


def _acr(value: str) -> str:
    """ACR density as a letter: 'DENSITY C', 'C', '3', '3.0' -> 'C'."""
    value = value.strip().upper().replace("DENSITY", "").strip()
    value = value.split(".")[0]
    return ACR_LETTERS.get(value, value if value in ("A", "B", "C", "D") else "")


def _birads_key(value: str) -> tuple[int, str]:
    match = re.match(r"(\d)([a-c]?)", value.lower())
    return (int(match.group(1)), match.group(2)) if match else (-1, "")


def _max_birads(values: Iterable[str]) -> str:
    values = [v for v in values if _birads_key(v)[0] >= 0]
    return max(values, key=_birads_key) if values else ""


def _row(**values: object) -> dict[str, str]:
    return {k: "" if v is None else str(v) for k, v in values.items()}


def vindr_mammo(src: Path) -> list[dict[str, str]]:
    """VinDr-Mammo (PhysioNet): breast-level_annotations.csv (+ finding_annotations.csv)."""
    [breast] = _find(src, ["breast-level_annotations.csv"], "breast-level_annotations.csv")[:1]
    rows = _read_csv(
        breast,
        ["study_id", "image_id", "laterality", "view_position", "breast_birads", "breast_density"],
    )
    findings: dict[str, list[dict]] = defaultdict(list)
    finding_files = [] if src.is_file() else list(src.rglob("finding_annotations.csv"))
    for path in finding_files[:1]:
        for f in _read_csv(
            path, ["image_id", "finding_categories", "xmin", "ymin", "xmax", "ymax"]
        ):
            findings[f["image_id"]].append(f)
    out = []
    for r in rows:
        image_findings = findings.get(r["image_id"])
        lesions, abnormal = "", ""
        if image_findings is not None:
            boxes = []
            for f in image_findings:
                try:
                    x0, y0, x1, y1 = (float(f[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
                except ValueError:
                    continue  # 'No Finding' rows carry no box
                boxes.append({"type": "box", "x0": x0, "y0": y0, "x1": x1, "y1": y1})
            lesions = json.dumps(boxes)
            abnormal = int(
                any("no finding" not in f["finding_categories"].lower() for f in image_findings)
            )
        out.append(
            _row(
                image=f"images/{r['study_id']}/{r['image_id']}.dicom",
                patient_id=r["study_id"],  # VinDr publishes no patient id: one study per woman
                laterality=_laterality(r["laterality"]),
                view=r["view_position"].upper(),
                density=_acr(r["breast_density"]),
                birads=r["breast_birads"].upper().replace("BI-RADS", "").strip(),
                malignancy="",
                abnormal=abnormal,
                lesions=lesions,
                split=r.get("split", ""),
            )
        )
    return out


def cbis_ddsm(src: Path) -> list[dict[str, str]]:
    """CBIS-DDSM (TCIA): mass/calc_case_description_{train,test}_set.csv, one row per image."""
    files = _find(src, ["*case_description*.csv"], "case description CSVs")
    by_image: dict[str, list[dict]] = defaultdict(list)
    for path in files:
        for r in _read_csv(path, ["patient_id", "left or right breast", "image view", "pathology"]):
            r["_split"] = "test" if "test" in path.name.lower() else "train"
            by_image[r["image file path"]].append(r)
    out = []
    for image, rows in by_image.items():
        r = rows[0]
        density = r.get("breast_density") or r.get("breast density", "")  # calc files use a space
        out.append(
            _row(
                image=image,
                patient_id=r["patient_id"],
                laterality=_laterality(r["left or right breast"]),
                view=r["image view"].upper(),
                density=_acr(density),
                birads=_max_birads(x.get("assessment", "") for x in rows),
                malignancy=int(any(x["pathology"].upper() == "MALIGNANT" for x in rows)),
                abnormal=1,  # every CBIS-DDSM image holds at least one verified abnormality
                lesions="",  # ROIs are masks (separate DICOMs), not boxes in the CSV
                split=r["_split"],
            )
        )
    return out


def inbreast(src: Path) -> list[dict[str, str]]:
    """INbreast: INbreast.csv (';'-separated); AllDICOMs/ beside it gives file and patient."""
    [path] = _find(src, ["INbreast.csv"], "INbreast.csv")[:1]
    rows = _read_csv(path, ["Laterality", "View", "File Name", "ACR", "Bi-Rads"], delimiter=";")
    dicoms = {}
    for folder in (path.parent / "AllDICOMs", path.parent.parent / "AllDICOMs"):
        if folder.is_dir():
            # AllDICOMs names: <File Name>_<patient hash>_MG_<L|R>_<view>_ANON.dcm
            dicoms = {p.name.split("_")[0]: p.name for p in folder.glob("*.dcm")}
            break
    out = []
    for r in rows:
        if not r["File Name"]:
            continue
        name = dicoms.get(r["File Name"])
        birads = r["Bi-Rads"].lower()
        out.append(
            _row(
                image=f"AllDICOMs/{name}" if name else r["File Name"],
                patient_id=name.split("_")[1] if name else "",
                laterality=_laterality(r["Laterality"]),
                view=r["View"].upper(),
                density=_acr(r["ACR"]),
                birads=birads,
                malignancy="",  # no pathology in the CSV; BI-RADS >= 4 is the usual proxy
                abnormal=int(_birads_key(birads)[0] >= 2) if _birads_key(birads)[0] >= 0 else "",
                lesions="",  # contours are in AllXML (OsiriX plist), not in the CSV
                split="",
                birads_suspicious=int(_birads_key(birads)[0] >= 4)
                if _birads_key(birads)[0] >= 0
                else "",
            )
        )
    return out


def rsna_screening(src: Path) -> list[dict[str, str]]:
    """RSNA Screening Mammography Breast Cancer Detection (Kaggle 2022): train.csv."""
    [path] = _find(src, ["train.csv"], "train.csv")[:1]
    rows = _read_csv(path, ["patient_id", "image_id", "laterality", "view", "cancer"])
    return [
        _row(
            image=f"train_images/{r['patient_id']}/{r['image_id']}.dcm",
            patient_id=r["patient_id"],
            laterality=_laterality(r["laterality"]),
            view=r["view"].upper(),
            density=_acr(r.get("density", "")),
            birads=r.get("BIRADS", "").split(".")[0],
            malignancy=r["cancer"],
            abnormal="",
            lesions="",
            split="train",
            biopsy=r.get("biopsy", ""),
            site_id=r.get("site_id", ""),
        )
        for r in rows
    ]


def cmmd(src: Path) -> list[dict[str, str]]:
    """CMMD (TCIA): CMMD_clinicaldata_revision (CSV export), one row per breast."""
    [path] = _find(
        src, ["CMMD_clinicaldata*.csv", "CMMD_clinicaldata*.xlsx"], "CMMD clinical data"
    )[:1]
    rows = _read_csv(path, ["ID1", "LeftRight", "classification"])
    out = []
    for r in rows:
        label = r["classification"].lower()
        out.append(
            _row(
                image="",  # breast-level labels: eval joins on patient_id + laterality
                patient_id=r["ID1"],
                laterality=_laterality(r["LeftRight"]),
                view="",
                density="",
                birads="",
                malignancy={"malignant": 1, "benign": 0}.get(label, ""),
                abnormal=1,
                lesions="",
                split="",
                subtype=r.get("subtype", ""),
                abnormality=r.get("abnormality", ""),
            )
        )
    return out


# EMBED: BI-RADS assessment letters and pathology severity codes (EMBED data descriptor).
EMBED_ASSES = {"A": "0", "N": "1", "B": "2", "P": "3", "S": "4", "M": "5", "K": "6"}
EMBED_MALIGNANT = {"0", "1"}  # invasive cancer, non-invasive cancer (DCIS)
EMBED_NOT_MALIGNANT = {"2", "3", "4", "5"}  # high-risk, borderline, benign, negative tissue


def embed(src: Path) -> list[dict[str, str]]:
    """EMBED Open Data: EMBED_OpenData_clinical*.csv + EMBED_OpenData_metadata*.csv."""
    [clinical_path] = _find(src, ["*clinical*.csv"], "EMBED clinical CSV")[:1]
    [metadata_path] = _find(src, ["*metadata*.csv"], "EMBED metadata CSV")[:1]
    clinical = _read_csv(clinical_path, ["empi_anon", "acc_anon", "side", "asses"])
    metadata = _read_csv(
        metadata_path, ["empi_anon", "acc_anon", "anon_dicom_path", "ImageLateralityFinal"]
    )
    # Findings of an exam by breast; side B (bilateral) and empty apply to both breasts.
    findings: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for c in clinical:
        side = c["side"].upper()
        for lat in ("L", "R") if side in ("B", "") else (side[:1],):
            findings[(c["acc_anon"], lat)].append(c)
    out = []
    for m in metadata:
        lat = _laterality(m["ImageLateralityFinal"])
        exam = findings.get((m["acc_anon"], lat), [])
        severities = {c.get("path_severity", "").split(".")[0] for c in exam}
        malignancy = (
            1 if severities & EMBED_MALIGNANT else 0 if severities & EMBED_NOT_MALIGNANT else ""
        )
        densities = [c.get("tissueden", "").split(".")[0] for c in exam]
        boxes = [
            {"type": "box", "x0": x0, "y0": y0, "x1": x1, "y1": y1}
            # ROI_coords: ((ymin, xmin, ymax, xmax), ...) in pixels of the DICOM
            for y0, x0, y1, x1 in (
                tuple(int(v) for v in t)
                for t in re.findall(
                    r"\(\s*(\d+),\s*(\d+),\s*(\d+),\s*(\d+)\s*\)", m.get("ROI_coords", "")
                )
            )
        ]
        out.append(
            _row(
                image=m["anon_dicom_path"],
                patient_id=m["empi_anon"],
                laterality=lat,
                view=m.get("ViewPosition", "").upper(),
                density=next((ACR_LETTERS[d] for d in densities if d in ACR_LETTERS), ""),
                birads=_max_birads(EMBED_ASSES.get(c["asses"].upper(), "") for c in exam),
                malignancy=malignancy,
                abnormal="",
                lesions=json.dumps(boxes) if boxes else "",
                split="",
                image_type=m.get("FinalImageType", ""),
            )
        )
    return out


_INFO_LINE = re.compile(
    r"^(mdb\d{3})\s+([FGD])\s+([A-Z]+)(?:\s+([BM]))?(?:\s+(\d+)\s+(\d+)\s+(\d+))?", re.IGNORECASE
)
MIAS_SIZE = 1024  # every mini-MIAS image is 1024 x 1024; y in Info.txt counts from the bottom


def _mias_findings(src: Path) -> list[dict[str, str]]:
    """One dict per finding (refnum, tissue, class, severity, x, y, radius) from either file."""
    rows_csv = [] if src.is_file() else list(src.glob("labels_rows.csv"))
    if src.name == "labels_rows.csv" or rows_csv:
        rows = _read_csv(src if src.is_file() else rows_csv[0], ["refnum", "tissue", "abn_class"])
        return [
            {
                "refnum": r["refnum"],
                "tissue": r["tissue"],
                "class": r["abn_class"],
                "severity": r.get("severity", ""),
                "x": r.get("x", ""),
                "y": r.get("y_from_bottom", ""),
                "radius": r.get("radius", ""),
            }
            for r in rows
        ]
    [info] = _find(src, ["Info.txt"], "Info.txt or labels_rows.csv")[:1]
    findings = []
    for line in info.read_text(errors="replace").splitlines():
        match = _INFO_LINE.match(line.strip())
        if match:
            ref, tissue, cls, sev, x, y, r = match.groups()
            findings.append(
                dict(
                    refnum=ref.lower(),
                    tissue=tissue.upper(),
                    **{"class": cls.upper()},
                    severity=(sev or "").upper(),
                    x=x or "",
                    y=y or "",
                    radius=r or "",
                )
            )
    if not findings:
        raise LabelsError(f"{info.name}: no 'mdbNNN tissue class ...' lines found")
    return findings


def mini_mias(src: Path) -> list[dict[str, str]]:
    """mini-MIAS: Info.txt or labels_rows.csv; lesion circles in numpy rows (row = 1023 - y)."""
    by_image: dict[str, list[dict]] = defaultdict(list)
    for f in _mias_findings(src):
        by_image[f["refnum"]].append(f)
    out = []
    for ref in sorted(by_image):
        findings = by_image[ref]
        normal = all(f["class"] == "NORM" for f in findings)
        circles = [
            {
                "type": "circle",
                "x": int(f["x"]),
                "y": MIAS_SIZE - 1 - int(f["y"]),
                "r": int(f["radius"]),
            }
            for f in findings
            if f["x"] and f["y"] and f["radius"]
        ]
        lesions = "[]" if normal else json.dumps(circles) if len(circles) == len(findings) else ""
        severities = {f["severity"] for f in findings}
        out.append(
            _row(
                image=f"{ref}.png",
                patient_id=mias_patient_id(ref),
                laterality="R" if int(ref[3:]) % 2 else "L",  # odd = right, even = left
                view="MLO",
                density=findings[0]["tissue"],
                birads="",
                malignancy="" if normal else int("M" in severities),
                abnormal=int(not normal),
                lesions=lesions,
                split="",
                abnormality="|".join(sorted({f["class"] for f in findings})),
            )
        )
    return out


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
