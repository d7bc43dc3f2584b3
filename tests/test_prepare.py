"""`mammodino prepare` and `inspect`: manifest, errors.csv, bad inputs, resume, DBT, contact sheet."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers import (
    BREAST_TOMOSYNTHESIS,
    dbt_extra,
    synthetic_breast,
    write_dicom,
)
from mammodino.cli import main
from mammodino.preprocess.geometry import original_to_cache
from mammodino.preprocess.prepare import SETTINGS_FILE

REQUIRED_COLUMNS = [
    "id",
    "source",
    "image",
    "mask",
    "laterality",
    "view",
    "height",
    "width",
    "flipped",
    "crop_x0",
    "crop_y0",
    "crop_x1",
    "crop_y1",
    "scale_x",
    "scale_y",
]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _good_sources(src: Path) -> None:
    src.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(src / "left.png"), synthetic_breast(seed=1))
    cv2.imwrite(str(src / "right.png"), synthetic_breast(chest_wall_left=False, seed=2))
    (src / "sub").mkdir(exist_ok=True)
    extra = {"ImageLaterality": "R", "ViewPosition": "MLO", "PatientID": "P1"}
    write_dicom(src / "sub" / "r.dcm", synthetic_breast(chest_wall_left=False, seed=3), extra=extra)
    (src / "notes.txt").write_text("not a candidate: ignored by suffix")


def _bad_sources(src: Path) -> dict[str, str]:
    """One file per bad-input case; returns file -> expected error type."""
    src.mkdir(parents=True, exist_ok=True)
    (src / "zero.dcm").write_bytes(b"")
    rng = np.random.default_rng(0)
    (src / "random.dcm").write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    full = write_dicom(src / "full.tmpdcm", synthetic_breast())
    (src / "truncated.dcm").write_bytes(full.read_bytes()[:-5000])
    full.unlink()
    write_dicom(src / "nopixels.dcm", None, rows=256, cols=192)
    write_dicom(src / "huge.dcm", np.zeros((4, 4), np.uint16), rows=60000, cols=60000)
    np.save(src / "dot.npy", np.ones((1, 1), np.uint16))
    cv2.imwrite(str(src / "blank.png"), np.zeros((256, 192), np.uint16))
    return {
        "zero.dcm": "NotAnImageError",
        "random.dcm": "NotAnImageError",
        "truncated.dcm": "TruncatedFileError",
        "nopixels.dcm": "NoPixelDataError",
        "huge.dcm": "ImageTooLargeError",
        "dot.npy": "ImageTooSmallError",
        "blank.png": "NoBreastFoundError",
    }


def _prepare(src: Path, out: Path, *extra: str) -> int:
    return main(["prepare", str(src), str(out), "--workers", "1", "--no-progress", *extra])


def test_prepare_writes_manifest_masks_and_errors(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    _good_sources(src)
    expected_errors = _bad_sources(src)
    assert _prepare(src, out, "--salt", "s1") == 0
    printed = capsys.readouterr()
    assert printed.out.strip() == f"3 prepared, {len(expected_errors)} skipped (see errors.csv)"
    rows = _read_csv(out / "manifest.csv")
    with open(out / "manifest.csv") as f:
        header = f.readline().strip().split(",")
    assert header[: len(REQUIRED_COLUMNS)] == REQUIRED_COLUMNS
    by_source = {r["source"]: r for r in rows}
    assert sorted(by_source) == ["left.png", "right.png", "sub/r.dcm"]
    assert by_source["left.png"]["flipped"] == "0" and by_source["right.png"]["flipped"] == "1"
    dicom_row = by_source["sub/r.dcm"]
    assert (dicom_row["laterality"], dicom_row["view"], dicom_row["patient_source"]) == (
        "R",
        "MLO",
        "dicom",
    )
    assert by_source["right.png"]["laterality_source"] == "image"
    for row in rows:
        image = cv2.imread(str(out / row["image"]), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(out / row["mask"]), cv2.IMREAD_UNCHANGED)
        assert image.dtype == np.uint16 and mask.dtype == np.uint8
        assert image.shape == mask.shape == (int(row["cache_height"]), int(row["cache_width"]))
        assert set(np.unique(mask)) <= {0, 255}
        assert np.nonzero(mask)[1].mean() < mask.shape[1] / 2  # chest wall left
        assert len(row["id"]) == 16 and len(row["patient_id"]) == 16
    errors = _read_csv(out / "errors.csv")
    assert {e["file"]: e["error"] for e in errors} == expected_errors
    assert all(e["reason"] and e["what_to_do"] for e in errors)
    assert (out / "config.yaml").is_file()


def test_breast_centre_maps_inside_cached_mask(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    _good_sources(src)
    _prepare(src, out)
    row = next(r for r in _read_csv(out / "manifest.csv") if r["source"] == "right.png")
    mask = cv2.imread(str(out / row["mask"]), cv2.IMREAD_UNCHANGED)
    # The breast of right.png (chest wall on the right) is centred near x = 170, y = 128.
    cx, cy = original_to_cache(row, 170, 128)
    assert mask[round(cy), round(cx)] == 255
    bx, by = original_to_cache(row, 10, 128)  # background on the far side
    assert not (0 <= bx < mask.shape[1]) or mask[round(by), round(bx)] == 0


def test_rerun_skips_finished_and_leaves_no_temporaries(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    _good_sources(src)
    _prepare(src, out)
    image = next((out / "images").glob("*.png"))
    stamp = image.stat().st_mtime_ns
    (out / "images" / ".stale.123.tmp.png").write_bytes(b"half")  # as a killed run leaves it
    capsys.readouterr()
    assert _prepare(src, out) == 0
    captured = capsys.readouterr()
    assert "3 already prepared" in captured.err
    assert captured.out.strip() == "3 prepared, 0 skipped (see errors.csv)"
    assert image.stat().st_mtime_ns == stamp
    assert not list(out.rglob("*.tmp*"))


def test_strict_exits_non_zero_on_skips(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    _good_sources(src)
    (src / "zero.png").write_bytes(b"")
    assert _prepare(src, out) == 0
    assert _prepare(src, out, "--strict") == 1


def test_other_settings_in_same_out_are_refused(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    _good_sources(src)
    _prepare(src, out)
    assert _prepare(src, out, "--cache-size", "64") == 1
    assert "cache_size" in capsys.readouterr().err
    assert _prepare(src, out, "--no-crop") == 1
    assert "(crop)" in capsys.readouterr().err


def test_a_whole_image_cache_resumes_whatever_the_margin(tmp_path, capsys):
    # Without cropping the margin changes no output byte: it must not refuse a resume.
    src, out = tmp_path / "src", tmp_path / "out"
    _good_sources(src)
    assert _prepare(src, out, "--no-crop", "--margin", "0.1") == 0
    capsys.readouterr()
    assert _prepare(src, out, "--no-crop", "--margin", "0.3") == 0
    assert "3 already prepared" in capsys.readouterr().err
    cropped = tmp_path / "cropped"
    assert _prepare(src, cropped, "--margin", "0.1") == 0
    assert _prepare(src, cropped, "--margin", "0.3") == 1
    assert "(margin)" in capsys.readouterr().err


def test_a_cache_from_before_the_crop_switch_resumes(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    _good_sources(src)
    _prepare(src, out)
    record = json.loads((out / SETTINGS_FILE).read_text())
    del record["crop"]  # written by a version without the switch
    (out / SETTINGS_FILE).write_text(json.dumps(record))
    capsys.readouterr()
    assert _prepare(src, out) == 0
    assert "3 already prepared" in capsys.readouterr().err


def test_no_crop_caches_whole_images(tmp_path):
    src = tmp_path / "src"
    _good_sources(src)
    assert _prepare(src, tmp_path / "whole", "--no-crop") == 0
    _prepare(src, tmp_path / "crops")
    whole = _read_csv(tmp_path / "whole" / "manifest.csv")
    crops = {r["source"]: r for r in _read_csv(tmp_path / "crops" / "manifest.csv")}
    for row in whole:
        box = [int(row[k]) for k in ("crop_x0", "crop_y0", "crop_x1", "crop_y1")]
        assert box == [0, 0, int(row["width"]), int(row["height"])]
        cropped = crops[row["source"]]
        # The manifest's breast share is of the cached image: lower with the background kept.
        assert float(row["mask_fraction"]) < 0.8 * float(cropped["mask_fraction"])
        assert int(cropped["crop_x1"]) - int(cropped["crop_x0"]) < int(row["width"])


def test_csv_source_list_and_patients_csv(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    _good_sources(src)
    (tmp_path / "list.csv").write_text("path\nsrc/left.png\nsrc/right.png\n")
    (tmp_path / "patients.csv").write_text("source,patient\nsrc/left.png,W1\nsrc/right.png,W1\n")
    _prepare(tmp_path / "list.csv", out, "--patients", str(tmp_path / "patients.csv"))
    rows = _read_csv(out / "manifest.csv")
    assert [r["source"] for r in rows] == ["src/left.png", "src/right.png"]
    assert rows[0]["patient_id"] == rows[1]["patient_id"] and rows[0]["patient_source"] == "csv"


def test_mini_mias_names_pair_left_and_right_of_one_woman(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for k, left in ((1, False), (2, True), (3, False)):
        cv2.imwrite(str(src / f"mdb{k:03d}.png"), synthetic_breast(chest_wall_left=left, seed=k))
    _prepare(src, out)
    patients = [r["patient_id"] for r in _read_csv(out / "manifest.csv")]
    assert patients[0] == patients[1] != patients[2]


def test_salt_changes_every_id(tmp_path):
    src = tmp_path / "src"
    _good_sources(src)
    _prepare(src, tmp_path / "a", "--salt", "s4lt-0ne")
    _prepare(src, tmp_path / "b", "--salt", "s4lt-tw0")
    a, b = (_read_csv(tmp_path / d / "manifest.csv") for d in ("a", "b"))
    assert not {r["id"] for r in a} & {r["id"] for r in b}
    assert not {r["patient_id"] for r in a} & {r["patient_id"] for r in b}
    assert "s4lt-0ne" not in (tmp_path / "a" / "config.yaml").read_text()


def test_dbt_volume_gives_aligned_slices(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    base = synthetic_breast(label=False).astype(np.int32)
    volume = np.stack([np.clip(base + 50 * k, 0, 4095) for k in range(4)]).astype(np.uint16)
    extra = dbt_extra("L", 1.0)
    write_dicom(src / "dbt.dcm", volume, sop_class=BREAST_TOMOSYNTHESIS, extra=extra)
    _prepare(src, out)
    rows = _read_csv(out / "manifest.csv")
    assert [r["slice_index"] for r in rows] == ["0", "1", "2", "3"]
    assert {r["slice_count"] for r in rows} == {"4"} and {r["slice_spacing_mm"] for r in rows} == {
        "1"
    }
    assert len({r["volume_id"] for r in rows}) == 1 and len({r["mask"] for r in rows}) == 1
    assert len({tuple(r[k] for k in REQUIRED_COLUMNS[8:]) for r in rows}) == 1  # one geometry
    means = [cv2.imread(str(out / r["image"]), cv2.IMREAD_UNCHANGED).mean() for r in rows]
    assert means == sorted(means) and means[0] < means[-1]


def test_pectoral_masks_and_inspect_sheet(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    _good_sources(src)
    assert _prepare(src, out, "--pectoral") == 0
    rows = _read_csv(out / "manifest.csv")
    assert all(r["pectoral"].startswith("pectoral/") for r in rows)
    sheet = tmp_path / "sheet.png"
    capsys.readouterr()
    assert main(["inspect", str(out), "--sheet", str(sheet), "--columns", "2"]) == 0
    assert "3 images" in capsys.readouterr().out
    picture = cv2.imread(str(sheet))
    assert picture.shape[0] == 2 * 192  # two lines of 192-pixel tiles
    red = (picture[..., 2] > 200) & (picture[..., 0] < 50) & (picture[..., 1] < 50)
    assert red.sum() > 100  # mask outlines drawn


@pytest.mark.multiproc
def test_two_workers_give_the_same_manifest_as_one(tmp_path):
    src = tmp_path / "src"
    _good_sources(src)
    _bad_sources(src)
    main(["prepare", str(src), str(tmp_path / "one"), "--workers", "1", "--no-progress"])
    main(["prepare", str(src), str(tmp_path / "two"), "--workers", "2", "--no-progress"])
    for name in ("manifest.csv", "errors.csv"):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text()
