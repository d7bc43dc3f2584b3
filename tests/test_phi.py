"""No PHI in anything `prepare` writes or prints: sentinel headers and real OpenREM headers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from helpers import shared_data_dir, synthetic_breast, write_dicom

SENTINELS = {
    "PatientName": "Zorkowska^Phisentinel",
    "PatientID": "PHI-ID-731942",
    "AccessionNumber": "ACC-PHI-55821",
    "PatientBirthDate": "19230817",
    "InstitutionName": "Sentinel Memorial Hospital",
}
PHI_TAGS = (*SENTINELS, "ReferringPhysicianName", "OperatorsName", "StationName")


def _run_prepare(src: Path, out: Path, workers: int = 2) -> str:
    """Run the real command line in a subprocess; return stdout + stderr."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mammodino",
            "prepare",
            str(src),
            str(out),
            "--workers",
            str(workers),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout + done.stderr


def _leaks(out: Path, printed: str, values: list[str]) -> list[str]:
    """Every (place, value) where a PHI value shows up, case-insensitively."""
    found = []
    needles = [v for v in values if len(v) >= 4]
    places = [("stdout/stderr", printed.encode())]
    places += [(str(p.relative_to(out)), p.read_bytes()) for p in out.rglob("*") if p.is_file()]
    places += [(f"name {p.name}", p.name.encode()) for p in out.rglob("*")]
    for place, data in places:
        lowered = data.lower()
        for value in needles:
            for variant in {value, value.replace("^", " "), *value.split("^")}:
                if len(variant) >= 4 and variant.lower().encode() in lowered:
                    found.append(f"{place}: {variant}")
    return found


@pytest.mark.multiproc
def test_sentinel_phi_never_reaches_outputs(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    extra = {**SENTINELS, "ImageLaterality": "L", "ViewPosition": "CC"}
    write_dicom(src / "a.dcm", synthetic_breast(seed=1), extra=extra)
    write_dicom(src / "b.dcm", synthetic_breast(chest_wall_left=False, seed=2), extra=extra)
    write_dicom(src / "c.dcm", None, rows=256, cols=192, extra=extra)  # no PixelData
    write_dicom(src / "d.dcm", np.ones((1, 1), np.uint16), extra=extra)  # 1 x 1
    full = write_dicom(src / "e.dcm", synthetic_breast(seed=3), extra=extra)
    full.write_bytes(full.read_bytes()[:-3000])  # truncated
    printed = _run_prepare(src, out)
    assert "2 prepared, 3 skipped (see errors.csv)" in printed
    assert _leaks(out, printed, list(SENTINELS.values())) == []
    # The check itself works: the raw sources do contain the sentinels.
    assert _leaks(src, "", list(SENTINELS.values()))


@pytest.mark.realdata
@pytest.mark.multiproc
def test_real_openrem_header_values_never_reach_outputs(tmp_path):
    folder = shared_data_dir("dicom-samples", "openrem-headers")
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    values: list[str] = []
    for k, path in enumerate(sorted(folder.glob("*.dcm"))):
        ds = pydicom.dcmread(path)
        values += [str(ds.get(tag, "")) for tag in PHI_TAGS if ds.get(tag)]
        if "Rows" in ds and "PixelData" in ds:
            # Real vendor header, synthetic breast in place of the 1 x 2 stub pixels.
            pixels = synthetic_breast(bits=int(ds.BitsStored), seed=k)
            if ds.PhotometricInterpretation == "MONOCHROME1":  # dense = dark in MONOCHROME1
                pixels = (2 ** int(ds.BitsStored) - 1 - pixels).astype(np.uint16)
            ds.Rows, ds.Columns = pixels.shape
            ds.PixelData = pixels.tobytes()
            ds.NumberOfFrames = 1
        ds.save_as(src / f"obj{k}.dcm")
    printed = _run_prepare(src, out)
    assert "4 prepared, 3 skipped (see errors.csv)" in printed
    assert len(values) >= 15
    assert _leaks(out, printed, values) == []
