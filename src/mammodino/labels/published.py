"""Reading a data set's published label files: find them under its folder, read their CSVs with
the documented columns checked, and build our labels rows."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

from mammodino.errors import LabelsError


def find_files(src: Path, patterns: Iterable[str], what: str) -> list[Path]:
    """Files under `src` (or `src` itself) whose name matches one of the glob patterns."""
    if src.is_file():
        return [src]
    found = sorted({p for pattern in patterns for p in src.rglob(pattern) if p.is_file()})
    if not found:
        raise LabelsError(f"{src}: no {what} found (expected {', '.join(patterns)})")
    return found


def read_published_csv(
    path: Path, required: Iterable[str], delimiter: str | None = None
) -> list[dict]:
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


def row(**values: object) -> dict[str, str]:
    """A labels row: every value as a string, None as empty."""
    return {k: "" if v is None else str(v) for k, v in values.items()}
