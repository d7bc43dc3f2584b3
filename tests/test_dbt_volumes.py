"""DBT volumes as stored in hospitals: multi-frame DICOM, slice folders, .npy; one slice per read."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pydicom.pixels
import pytest

from mammodino.errors import NotAnImageError
from mammodino.io.volumes import (
    is_npy_volume,
    is_slice_folder,
    is_volume,
    mean_projection,
    open_volume,
)
from mammodino.preprocess.pipeline import CacheOptions
from mammodino.preprocess.prepare_source import SourceTask, prepare_source
from mammodino.synth.dicom_writer import DicomMeta, write_dbt_dicom, write_ffdm_dicom

BITS = 12


def phantom_volume(n_slices: int = 5, rows: int = 64, cols: int = 48) -> np.ndarray:
    """uint16 [Z, H, W]: a bright half disc whose level steps with the slice index."""
    r, c = np.mgrid[:rows, :cols]
    disc = ((r - rows / 2) ** 2 + c**2) < (0.45 * rows) ** 2
    levels = 1500 + 300 * np.arange(n_slices)
    return np.where(disc[None], levels[:, None, None], 40).astype(np.uint16)


def dicom_meta(key: str, slice_spacing_mm: float | None = None) -> DicomMeta:
    return DicomMeta("p", "study", key, "L", "CC", 0.1, BITS, slice_spacing_mm)


@pytest.fixture(autouse=True)
def serial_opencv():
    """prepare's OpenCV calls run serially here: a started OpenCV thread pool in the test process
    can deadlock the DataLoader workers that later tests fork from it."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    yield
    cv2.setNumThreads(threads)


@pytest.fixture
def count_decodes(monkeypatch):
    """Record the `index` of every pydicom.pixels.pixel_array call (the only decoder)."""
    calls: list[int | None] = []
    original = pydicom.pixels.pixel_array

    def counting(src, *args, **kwargs):
        calls.append(kwargs.get("index"))
        return original(src, *args, **kwargs)

    monkeypatch.setattr(pydicom.pixels, "pixel_array", counting)
    return calls


def test_multiframe_dicom_decodes_one_frame_per_read(tmp_path, count_decodes):
    volume = phantom_volume()
    path = write_dbt_dicom(tmp_path / "dbt.dcm", volume, dicom_meta("v", 1.0))
    opened = open_volume(path)
    assert (opened.layout, opened.n_slices, opened.slice_spacing_mm) == ("multiframe", 5, 1.0)
    for index in (3, 0, 4):
        image = opened.read_slice(index)
        np.testing.assert_allclose(image.pixels, volume[index] / (2**BITS - 1), atol=1e-6)
        assert image.meta.n_frames == 5 and image.frame == index
    assert count_decodes == [3, 0, 4]


def test_prepare_caches_a_volume_one_frame_at_a_time(tmp_path, count_decodes):
    path = write_dbt_dicom(tmp_path / "src" / "dbt.dcm", phantom_volume(6), dicom_meta("v", 0.5))
    task = SourceTask(str(path), "dbt.dcm", str(tmp_path / "out"), CacheOptions(), None)
    rows = prepare_source(task)
    assert [int(r["slice_index"]) for r in rows] == list(range(6))
    assert {r["slice_count"] for r in rows} == {6} and {r["slice_spacing_mm"] for r in rows} == {
        "0.5"
    }
    assert len({r["mask"] for r in rows}) == 1  # one breast mask per volume
    # Every decode is one frame (never index=None, the whole volume): each frame once for its
    # cache image, plus up to 16 evenly spaced frames once more for the mask's projection.
    assert None not in count_decodes
    assert sorted(set(count_decodes)) == list(range(6))
    assert len(count_decodes) == 6 + 6


def write_slice_folder(folder: Path, volume: np.ndarray, spacing: float, shuffle: bool) -> None:
    """One single-frame DICOM per slice of one series, positions along the slice normal."""
    folder.mkdir(parents=True)
    order = np.random.default_rng(0).permutation(len(volume)) if shuffle else range(len(volume))
    for file_number, z in enumerate(order):
        path = write_ffdm_dicom(folder / f"f{file_number:02d}.dcm", volume[z], dicom_meta(f"s{z}"))
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = "1.2.3.4"
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"  # slices exported as plain MG images
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # normal along -x
        ds.ImagePositionPatient = [-spacing * float(z), 0.0, 0.0]
        ds.InstanceNumber = 100 - int(z)  # reversed: positions must win over instance numbers
        ds.save_as(path)


def test_slice_folder_is_ordered_by_position_and_read_one_file_per_slice(tmp_path):
    volume = phantom_volume(6)
    write_slice_folder(tmp_path / "series", volume, spacing=1.5, shuffle=True)
    assert is_slice_folder(tmp_path / "series")
    opened = open_volume(tmp_path / "series")
    assert (opened.layout, opened.n_slices) == ("folder", 6)
    assert opened.slice_spacing_mm == pytest.approx(1.5)
    levels = [opened.read_slice(i).pixels.max() * (2**BITS - 1) for i in range(6)]
    assert levels == pytest.approx(list(volume.max(axis=(1, 2))), abs=0.5)
    assert opened.read_slice(2).meta.slice_spacing_mm == pytest.approx(1.5)


def test_a_folder_of_2d_mammograms_is_not_a_volume(tmp_path):
    folder = tmp_path / "exam"
    folder.mkdir()
    for i in range(3):
        write_ffdm_dicom(folder / f"{i}.dcm", phantom_volume(1)[0], dicom_meta(f"m{i}"))
    assert not is_slice_folder(folder)
    with pytest.raises(NotAnImageError, match="one DBT series"):
        open_volume(folder)


def test_npy_volume_reads_slices_with_sidecar_spacing(tmp_path):
    volume = phantom_volume(4)
    np.save(tmp_path / "vol.npy", volume)
    (tmp_path / "vol.json").write_text(json.dumps({"slice_spacing_mm": 1.0}))
    np.save(tmp_path / "rgb.npy", np.zeros((32, 24, 3), np.uint8))
    assert is_npy_volume(tmp_path / "vol.npy") and not is_npy_volume(tmp_path / "rgb.npy")
    opened = open_volume(tmp_path / "vol.npy")
    assert (opened.layout, opened.n_slices, opened.slice_spacing_mm) == ("npy", 4, 1.0)
    np.testing.assert_allclose(opened.read_slice(2).pixels, volume[2] / 65535.0, atol=1e-7)
    with pytest.raises(IndexError):
        opened.read_slice(4)
    np.save(tmp_path / "bare.npy", volume)
    assert open_volume(tmp_path / "bare.npy").slice_spacing_mm is None


def test_is_volume_and_mean_projection_read_slices_one_by_one(tmp_path, count_decodes):
    volume = phantom_volume(7)
    path = write_dbt_dicom(tmp_path / "dbt.dcm", volume, dicom_meta("v", 1.0))
    write_ffdm_dicom(tmp_path / "ffdm.dcm", volume[0], dicom_meta("f"))
    assert is_volume(path) and not is_volume(tmp_path / "ffdm.dcm")
    projection = mean_projection(open_volume(path), max_slices=3)  # slices 0, 3, 6
    expected = volume[[0, 3, 6]].astype(np.float64).mean(axis=0) / (2**BITS - 1)
    np.testing.assert_allclose(projection, expected, atol=1e-6)
    assert count_decodes == [0, 3, 6]


def test_prepare_takes_slice_folders_and_npy_volumes_as_volumes(tmp_path):
    from mammodino.preprocess.prepare import run_prepare

    volume = phantom_volume(4)
    write_slice_folder(tmp_path / "src" / "series", volume, spacing=1.0, shuffle=True)
    np.save(tmp_path / "src" / "vol.npy", volume.astype(np.float32) / 4095.0)
    (tmp_path / "src" / "vol.json").write_text(json.dumps({"slice_spacing_mm": 0.5}))
    result = run_prepare(tmp_path / "src", tmp_path / "out", workers=1)
    assert (result.prepared, result.skipped, result.images) == (2, 0, 8)
    with result.manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_source = {}
    for row in rows:
        by_source.setdefault(row["source"], []).append(row)
    assert sorted(by_source) == ["series", "vol.npy"]
    for source, spacing in (("series", "1"), ("vol.npy", "0.5")):
        slices = by_source[source]
        assert [int(r["slice_index"]) for r in slices] == [0, 1, 2, 3]
        assert {r["slice_spacing_mm"] for r in slices} == {spacing}
        assert len({r["mask"] for r in slices}) == 1 and len({r["volume_id"] for r in slices}) == 1
    # The folder is ordered by position: cached slice k has the level of volume slice k.
    means = [
        cv2.imread(str(tmp_path / "out" / r["image"]), cv2.IMREAD_UNCHANGED).max()
        for r in by_source["series"]
    ]
    assert means == sorted(means)
