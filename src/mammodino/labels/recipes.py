"""Recipes of the public screening data sets: each one's published label files -> our labels rows.

VinDr-Mammo, CBIS-DDSM, INbreast, RSNA screening, CMMD and EMBED (mini-MIAS: mini_mias.py). The
rows' columns are those of convert.py's COLUMNS plus a few named extras.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from mammodino.labels.published import find_files, read_published_csv, row

ACR_LETTERS = {"1": "A", "2": "B", "3": "C", "4": "D"}


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


def vindr_mammo(src: Path) -> list[dict[str, str]]:
    """VinDr-Mammo (PhysioNet): breast-level_annotations.csv (+ finding_annotations.csv)."""
    [breast] = find_files(src, ["breast-level_annotations.csv"], "breast-level_annotations.csv")[:1]
    rows = read_published_csv(
        breast,
        ["study_id", "image_id", "laterality", "view_position", "breast_birads", "breast_density"],
    )
    findings: dict[str, list[dict]] = defaultdict(list)
    finding_files = [] if src.is_file() else list(src.rglob("finding_annotations.csv"))
    for path in finding_files[:1]:
        for f in read_published_csv(
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
            row(
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
    files = find_files(src, ["*case_description*.csv"], "case description CSVs")
    by_image: dict[str, list[dict]] = defaultdict(list)
    for path in files:
        for r in read_published_csv(
            path, ["patient_id", "left or right breast", "image view", "pathology"]
        ):
            r["_split"] = "test" if "test" in path.name.lower() else "train"
            by_image[r["image file path"]].append(r)
    out = []
    for image, rows in by_image.items():
        r = rows[0]
        density = r.get("breast_density") or r.get("breast density", "")  # calc files use a space
        out.append(
            row(
                # TCIA downloads rename the CSV's series folders and files (000000.dcm -> 1-1.dcm);
                # the case folder (Mass-Training_P_00001_LEFT_CC) survives and holds one image.
                image=image.replace("\\", "/").split("/")[0] + "/",
                patient_id=r["patient_id"],
                laterality=_laterality(r["left or right breast"]),
                view=r["image view"].upper(),
                density=_acr(density),
                birads=_max_birads(x.get("assessment", "") for x in rows),
                malignancy=int(any(x["pathology"].upper() == "MALIGNANT" for x in rows)),
                abnormal=1,  # every CBIS-DDSM image holds at least one verified abnormality
                lesions="",  # ROIs are masks (separate DICOMs), not boxes in the CSV
                split=r["_split"],
                published_path=image,
            )
        )
    return out


# INbreast image names: <File Name>_<patient hash>_MG_<L|R>_<CC|ML|MLO>_ANON.<dcm|png|tif>
INBREAST_SUFFIXES = (".dcm", ".png", ".tif", ".tiff")  # preferred first when a number has several
INBREAST_NAME = re.compile(r"^(\d+)(?:_([0-9a-f]{8,})(?=[_.]|$))?", re.IGNORECASE)
INBREAST_VIEWS = {"CC": "CC", "ML": "MLO", "MLO": "MLO"}  # INbreast's "ML" is the MLO view


def _inbreast_images(folder: Path, base: Path) -> dict[str, str]:
    """File Name -> path (relative to `base`) of its image under `folder`: DICOM, PNG or TIFF,
    keyed by the leading number of the file name."""
    found: dict[str, Path] = {}
    rank = {suffix: i for i, suffix in enumerate(INBREAST_SUFFIXES)}
    for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
        match = INBREAST_NAME.match(path.name)
        suffix = path.suffix.lower()
        if not match or suffix not in rank or not path.is_file():
            continue
        known = found.get(match.group(1))
        if known is None or rank[suffix] < rank[known.suffix.lower()]:
            found[match.group(1)] = path
    return {number: p.relative_to(base).as_posix() for number, p in found.items()}


def _inbreast_name_fields(name: str) -> tuple[str, str, str]:
    """(patient hash, laterality, view) from an INbreast image name; '' where absent."""
    match = INBREAST_NAME.match(name)
    tokens = name.split(".")[0].upper().split("_")
    side = next((t for t in tokens[2:] if t in ("L", "R")), "")
    view = next((INBREAST_VIEWS[t] for t in tokens[2:] if t in INBREAST_VIEWS), "")
    return (match.group(2) or "") if match else "", side, view


def inbreast(src: Path) -> list[dict[str, str]]:
    """INbreast: INbreast.csv (';'-separated) + the images (AllDICOMs/ or converted PNG/TIFF
    anywhere under SRC), whose names give the file, the patient and a missing side or view."""
    [path] = find_files(src, ["INbreast.csv"], "INbreast.csv")[:1]
    rows = read_published_csv(
        path, ["Laterality", "View", "File Name", "ACR", "Bi-Rads"], delimiter=";"
    )
    root = src if src.is_dir() else path.parent
    # AllDICOMs/ may also sit one level above the CSV (the CSV passed as SRC).
    images = _inbreast_images(root, root) or _inbreast_images(
        path.parent.parent / "AllDICOMs", path.parent.parent
    )
    out = []
    for r in rows:
        if not r["File Name"]:
            continue
        image = images.get(r["File Name"], "")
        patient, side, view = _inbreast_name_fields(PurePosixPath(image).name)
        published_id = r.get("Patient ID", "")  # 'removed' in the public release
        birads = r["Bi-Rads"].lower()
        out.append(
            row(
                image=image or r["File Name"],
                patient_id=patient if published_id.lower() in ("", "removed") else published_id,
                laterality=_laterality(r["Laterality"]) or side,
                view=INBREAST_VIEWS.get(r["View"].upper(), r["View"].upper()) or view,
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
    [path] = find_files(src, ["train.csv"], "train.csv")[:1]
    rows = read_published_csv(path, ["patient_id", "image_id", "laterality", "view", "cancer"])
    return [
        row(
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
    [path] = find_files(
        src, ["CMMD_clinicaldata*.csv", "CMMD_clinicaldata*.xlsx"], "CMMD clinical data"
    )[:1]
    rows = read_published_csv(path, ["ID1", "LeftRight", "classification"])
    out = []
    for r in rows:
        label = r["classification"].lower()
        out.append(
            row(
                # Breast-level labels: TCIA stores CMMD as CMMD/<ID1>/..., so the patient folder
                # names the images and eval picks the breast by laterality.
                image=f"{r['ID1']}/",
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
    [clinical_path] = find_files(src, ["*clinical*.csv"], "EMBED clinical CSV")[:1]
    [metadata_path] = find_files(src, ["*metadata*.csv"], "EMBED metadata CSV")[:1]
    clinical = read_published_csv(clinical_path, ["empi_anon", "acc_anon", "side", "asses"])
    metadata = read_published_csv(
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
            row(
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
