"""mini-MIAS: its labels recipe (Info.txt or labels_rows.csv -> our labels CSV rows) and which
woman an image belongs to, which prepare's patient ids, pretraining's monitor and evaluation's
splits also need.

Lesion circles go to numpy coordinates (row = 1023 - y: Info.txt counts y from the bottom).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path, PurePath

from mammodino.errors import LabelsError
from mammodino.labels.published import find_files, read_published_csv, row

_INFO_LINE = re.compile(
    r"^(mdb\d{3})\s+([FGD])\s+([A-Z]+)(?:\s+([BM]))?(?:\s+(\d+)\s+(\d+)\s+(\d+))?", re.IGNORECASE
)
MIAS_SIZE = 1024  # every mini-MIAS image is 1024 x 1024; y in Info.txt counts from the bottom
_MIAS_NAME = re.compile(r"^mdb(\d{3})")


def mias_woman(name: str) -> int | None:
    """The number of the woman a mini-MIAS file (a path or name mdbNNN...) belongs to, else None.

    mini-MIAS stores each woman's right (odd number) and left (even number) MLO as consecutive
    files, so woman = (NNN + 1) // 2: mdb001 and mdb002 -> 1.
    """
    match = _MIAS_NAME.match(PurePath(str(name)).name.lower())
    return (int(match.group(1)) + 1) // 2 if match else None


def mias_patient_id(name: str) -> str | None:
    """The woman a mini-MIAS image belongs to: mdb001+mdb002 -> 'mias001', ... (None if no match)."""
    woman = mias_woman(name)
    return None if woman is None else f"mias{woman:03d}"


def _mias_findings(src: Path) -> list[dict[str, str]]:
    """One dict per finding (refnum, tissue, class, severity, x, y, radius) from either file."""
    rows_csv = [] if src.is_file() else list(src.glob("labels_rows.csv"))
    if src.name == "labels_rows.csv" or rows_csv:
        rows = read_published_csv(
            src if src.is_file() else rows_csv[0], ["refnum", "tissue", "abn_class"]
        )
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
    [info] = find_files(src, ["Info.txt"], "Info.txt or labels_rows.csv")[:1]
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
            row(
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
