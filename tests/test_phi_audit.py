"""PHI audit (issue 9): DICOMs carry a unique sentinel in every PHI attribute of the DICOM basic
application level confidentiality profile (PS3.15 Annex E, table E.1-1; a representative set
of 38: names, ids, addresses, phones, institution, physicians, operators, descriptions,
comments, device, dates, date-times and UIDs). prepare, inspect, pretrain, embed, eval (and
report once it exists) run on them; every output file (text and binary, inside zip members
(.pt, .npz) and compressed PNG text chunks too) and all console output must hold zero sentinels.
"""

from __future__ import annotations

import base64
import contextlib
import re
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest

from helpers import subprocess_env, write_preset
from mammodino.synth.dicom_writer import DicomMeta, write_dbt_dicom, write_ffdm_dicom

REPO = Path(__file__).resolve().parents[1]

TEXT_PREFIX = "QZXPHI"  # every text sentinel starts with it (SH holds 16 characters at most)
UID_PREFIX = "1.2.999."  # every sentinel UID (valid UID syntax) starts with it
TEXT_ATTRIBUTES = [
    "PatientName", "PatientID", "IssuerOfPatientID", "OtherPatientIDs", "OtherPatientNames",
    "PatientBirthName", "PatientMotherBirthName", "PatientAddress", "PatientTelephoneNumbers",
    "MedicalRecordLocator", "AdditionalPatientHistory", "PatientComments", "AccessionNumber",
    "StudyID", "StudyDescription", "SeriesDescription", "ProtocolName", "ImageComments",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "ReferringPhysicianName", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy",
    "OperatorsName", "RequestingPhysician", "StationName", "DeviceSerialNumber",
]  # fmt: skip
DATE_ATTRIBUTES = {
    "PatientBirthDate": "19230417", "StudyDate": "19310612", "SeriesDate": "19320713",
    "AcquisitionDate": "19330814", "ContentDate": "19340915",
    "AcquisitionDateTime": "19351016101112",
}  # fmt: skip
UID_ATTRIBUTES = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"]


def text_sentinel(attribute: str, file_index: int) -> str:
    return f"{TEXT_PREFIX}{TEXT_ATTRIBUTES.index(attribute):02d}F{file_index:02d}"


def uid_sentinel(attribute: str, file_index: int) -> str:
    return (
        f"{UID_PREFIX}{7000 + UID_ATTRIBUTES.index(attribute)}.{file_index}.{424242 + file_index}"
    )


def breast(rows: int, cols: int, seed: int, level: int) -> np.ndarray:
    """A 12-bit half-disc breast against the left edge."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[:rows, :cols]
    mask = ((r - rows / 2) ** 2 + (c * 1.2) ** 2) < (0.45 * rows) ** 2
    return np.where(mask, level + rng.integers(0, 600, (rows, cols)), 40).astype(np.uint16)


def add_phi(path: Path, index: int) -> set[str]:
    """Put a sentinel in every PHI attribute of the file; returns the sentinels."""
    ds = pydicom.dcmread(path)
    sentinels = set()
    for attribute in TEXT_ATTRIBUTES:
        value = text_sentinel(attribute, index)
        if attribute.endswith("Name") or attribute in ("OtherPatientNames", "OperatorsName",
                                                        "NameOfPhysiciansReadingStudy",
                                                        "RequestingPhysician"):  # fmt: skip
            value = f"{value}^{value}G"  # family^given, both found by the prefix scan
        setattr(ds, attribute, value)
        sentinels.add(text_sentinel(attribute, index))
    for attribute, date in DATE_ATTRIBUTES.items():
        setattr(ds, attribute, date)
        sentinels.add(date)
    for attribute in UID_ATTRIBUTES:
        setattr(ds, attribute, uid_sentinel(attribute, index))
        sentinels.add(uid_sentinel(attribute, index))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return sentinels


def write_phi_sources(folder: Path) -> tuple[dict[str, str], set[str]]:
    """8 FFDM (4 patients x L/R CC), 1 DBT and 1 FFDM with invalid PHI values; labels by name."""
    folder.mkdir(parents=True)
    labels, sentinels = {}, set()
    for i in range(8):
        patient, side = i // 2, "LR"[i % 2]
        meta = DicomMeta(f"x{patient}", f"s{patient}", f"i{i}", side, "CC", 0.1)
        path = write_ffdm_dicom(
            folder / f"img{i:02d}.dcm", breast(128, 96, i, 1500 + 1500 * (patient % 2)), meta
        )
        sentinels |= add_phi(path, i)
        labels[path.name] = "AC"[patient % 2]
    meta = DicomMeta("x9", "s9", "i9", "L", "MLO", 0.1, slice_spacing_mm=1.0)
    volume = np.stack([breast(96, 72, 100 + k, 2000) for k in range(3)])
    path = write_dbt_dicom(folder / "vol09.dcm", volume, meta)
    sentinels |= add_phi(path, 9)
    meta = DicomMeta("x10", "s10", "i10", "R", "MLO", 0.1)
    path = write_ffdm_dicom(folder / "img10.dcm", breast(128, 96, 10, 3000), meta)
    sentinels |= add_invalid_phi(path, 10)
    labels[path.name] = "C"
    return labels, sentinels


def add_invalid_phi(path: Path, index: int) -> set[str]:
    """PHI values that break their VR (too long, letters in dates, a leading-zero UID component):
    pydicom's validation warnings must not echo them to the console."""
    from pydicom.config import IGNORE, settings

    ds = pydicom.dcmread(path)
    sentinels = set()
    previous = settings.writing_validation_mode
    settings.writing_validation_mode = IGNORE
    try:
        for attribute in TEXT_ATTRIBUTES:
            setattr(ds, attribute, text_sentinel(attribute, index) + "X" * 70)
            sentinels.add(text_sentinel(attribute, index))
        for k, attribute in enumerate(DATE_ATTRIBUTES):
            value = f"{TEXT_PREFIX}{90 + k:02d}F{index:02d}"
            setattr(ds, attribute, value)
            sentinels.add(value)
        for attribute in UID_ATTRIBUTES:
            value = f"{UID_PREFIX}0{7000 + UID_ATTRIBUTES.index(attribute)}.{index}"
            setattr(ds, attribute, value)
            sentinels.add(value)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(path, enforce_file_format=False)
    finally:
        settings.writing_validation_mode = previous
    return sentinels


def _png_text_chunks(data: bytes) -> list[bytes]:
    """Decompressed zTXt/iTXt (and raw tEXt) chunk bodies of a PNG."""
    out, at = [], 8
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        body = data[at + 8 : at + 8 + length]
        if kind == b"tEXt":
            out.append(body)
        elif kind in (b"zTXt", b"iTXt"):
            out.append(body)
            with contextlib.suppress(ValueError, zlib.error):
                out.append(zlib.decompressobj().decompress(body[body.index(b"\x00") + 2 :]))
        at += 12 + length
    return out


def blobs(path: Path) -> list[bytes]:
    """The file's bytes, plus each zip member (torch .pt, .npz) and PNG text chunk decompressed."""
    data = path.read_bytes()
    out = [data]
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            out += [archive.read(name) for name in archive.namelist()]
            out += [name.encode() for name in archive.namelist()]
    if data.startswith(b"\x89PNG"):
        out += _png_text_chunks(data)
    # HTML reports embed images as base64 data URIs: decode them and scan their chunks too.
    for match in re.finditer(rb"base64,([A-Za-z0-9+/=]+)", data):
        decoded = base64.b64decode(match.group(1) + b"==", validate=False)
        out.append(decoded)
        if decoded.startswith(b"\x89PNG"):
            out += _png_text_chunks(decoded)
    return out


ENCODINGS = ("utf-8", "utf-16-le", "utf-32-le")  # numpy unicode arrays (.npz) are UTF-32


def _needles() -> list[str]:
    dates = [*DATE_ATTRIBUTES.values()]
    dates += [f"{d[:4]}-{d[4:6]}-{d[6:8]}" for d in DATE_ATTRIBUTES.values()]
    return [TEXT_PREFIX, TEXT_PREFIX.lower(), UID_PREFIX, *dates]


def find_phi(data: bytes, sentinels: set[str]) -> set[str]:
    """Sentinels in `data`, as 8-bit, UTF-16 or UTF-32 text (text ones in any letter case)."""
    hits = set()
    lowered = data.lower()
    if TEXT_PREFIX.lower().encode() in lowered:
        hits |= {m.decode() for m in re.findall(rb"qzxphi\d\dF\d\d", data, flags=re.I)}
        hits |= set() if hits else {TEXT_PREFIX + "?"}
    for sentinel in sentinels:
        if sentinel.startswith(UID_PREFIX) and sentinel.encode() in data:
            hits.add(sentinel)
    for encoding in ENCODINGS:
        for needle in _needles():
            if needle.encode(encoding) in data:
                if needle.startswith(UID_PREFIX) and not any(
                    h.startswith(UID_PREFIX) for h in hits
                ):
                    hits.add(f"{UID_PREFIX}? ({encoding})")
                elif needle[0].isdigit() and not needle.startswith(UID_PREFIX):
                    hits.add(needle.replace("-", ""))
                elif encoding != "utf-8":
                    hits.add(f"{needle}? ({encoding})")
    return hits


def _run(args: list[str], console: list[str]) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "-m", "mammodino", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=subprocess_env(),
    )
    console.append(f"$ mammodino {' '.join(args)}\n{out.stdout}\n{out.stderr}")
    assert out.returncode == 0, f"mammodino {args[0]} exit {out.returncode}: {out.stderr[-2000:]}"
    return out


def test_sentinels_are_in_the_sources(tmp_path):
    """Sanity: the scanner finds every sentinel in the source DICOMs."""
    _, sentinels = write_phi_sources(tmp_path / "src")
    found = set()
    for path in (tmp_path / "src").iterdir():
        found |= find_phi(path.read_bytes(), sentinels)
    text = {s for s in sentinels if s.startswith(TEXT_PREFIX)}
    assert text <= found and set(DATE_ATTRIBUTES.values()) <= found
    assert {s for s in sentinels if s.startswith(UID_PREFIX)} <= found
    assert len(TEXT_ATTRIBUTES) + len(DATE_ATTRIBUTES) + len(UID_ATTRIBUTES) == 38
    assert len(sentinels) == 9 * (28 + 4) + 6 + 38


@pytest.mark.slow
@pytest.mark.multiproc
def test_no_phi_in_any_output_or_console(tmp_path):
    labels, sentinels = write_phi_sources(tmp_path / "src")
    cache, run, feats = tmp_path / "cache", tmp_path / "run", tmp_path / "feats"
    results, sheet = tmp_path / "results", tmp_path / "sheet.png"
    (tmp_path / "labels.csv").write_text(
        "image,density\n" + "".join(f"{name},{label}\n" for name, label in labels.items())
    )
    console: list[str] = []
    _run(["prepare", str(tmp_path / "src"), str(cache), "--workers", "1", "--salt", "audit",
          "--cache-size", "64", "--no-progress"], console)  # fmt: skip
    _run(["inspect", str(cache), "--sheet", str(sheet)], console)
    preset = write_preset(tmp_path / "tiny.yaml", cache, 2)
    _run(["pretrain", "--config", str(preset), "--output-dir", str(run), "--no-progress"], console)
    _run(["embed", "--weights", str(run), "--input", str(cache), "--output", str(feats),
          "--image-size", "32", "--no-progress"], console)  # fmt: skip
    _run(["eval", "--features", str(feats), "--labels", str(tmp_path / "labels.csv"),
          "--task", "density", "--protocol", "knn", "--folds", "2", "--bootstrap", "20",
          "--k", "2", "--output", str(results)], console)  # fmt: skip
    outputs = [cache, run, feats, results, sheet]
    if (REPO / "src" / "mammodino" / "commands" / "report.py").is_file():
        report = tmp_path / "report.html"
        _run(["report", str(run), "--evals", str(results), "--output", str(report)], console)
        outputs.append(report)

    files = [p for root in outputs for p in ([root] if root.is_file() else root.rglob("*"))
             if p.is_file()]  # fmt: skip
    assert len(files) >= 20 and any(p.suffix == ".pt" for p in files)
    assert any(p.suffix == ".npz" for p in files) and any(p.suffix == ".png" for p in files)
    hits = {}
    for path in files:
        found = set().union(*(find_phi(blob, sentinels) for blob in blobs(path)))
        if found:
            hits[str(path.relative_to(tmp_path))] = sorted(found)
    console_hits = find_phi("\n".join(console).encode(), sentinels)
    size = sum(p.stat().st_size for p in files)
    print(
        f"PHI audit: {len(sentinels)} sentinels in 10 DICOMs; {len(files)} output files "
        f"({size / 2**20:.0f} MB) and {len(console)} commands' console scanned; "
        f"hits: {len(hits)} files, {len(console_hits)} console"
    )
    assert not hits, f"PHI in outputs: {hits}"
    assert not console_hits, f"PHI on the console: {sorted(console_hits)}"


def test_scanner_sees_inside_containers(tmp_path):
    """Sanity: a sentinel inside a compressed .npz, a torch .pt, a PNG zTXt chunk base64-embedded
    in HTML, and a UID and a date in plain text are all found."""
    import torch

    word = text_sentinel("PatientName", 3)
    np.savez_compressed(tmp_path / "a.npz", ids=np.array([word]))
    torch.save({"meta": word}, tmp_path / "b.pt")
    ztxt = b"zTXt" + b"Comment\x00\x00" + zlib.compress(word.encode())
    chunk = struct.pack(">I", len(ztxt) - 4) + ztxt + struct.pack(">I", zlib.crc32(ztxt))
    png = b"\x89PNG\r\n\x1a\n" + chunk
    (tmp_path / "c.html").write_bytes(
        b"<img src='data:image/png;base64," + base64.b64encode(png) + b"'>"
    )
    uid = uid_sentinel("StudyInstanceUID", 1)
    (tmp_path / "d.csv").write_text(f"x,{uid},1931-06-12\n")
    for name in ("a.npz", "b.pt", "c.html"):
        found = set().union(*(find_phi(b, {word}) for b in blobs(tmp_path / name)))
        assert found, name
    assert find_phi((tmp_path / "d.csv").read_bytes(), {uid}) == {uid, "19310612"}
