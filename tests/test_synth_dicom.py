"""Phantom DICOM files read back through the project's reader with the right header and pixels."""

from __future__ import annotations

import csv

import numpy as np
import pydicom
import pytest

from mammodino.io.reader import read_image
from mammodino.synth.dataset import SynthSettings, generate
from mammodino.synth.dicom_writer import (
    DBT_SOP_CLASS,
    FFDM_SOP_CLASS,
    DicomMeta,
    derived_uid,
    write_dbt_dicom,
    write_dbt_slices,
    write_ffdm_dicom,
)

SETTINGS = SynthSettings(
    4, 2, seed=21, ffdm_shape=(160, 125), dbt_shape=(10, 96, 75), lesion_fraction=1.0
)


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    generate(out, SETTINGS, workers=1)
    return out


def _labels(out):
    with open(out / "labels.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_file_reads_with_sop_class_laterality_view_and_spacing(phantom_dir):
    """Acceptance 1 (header part), through mammodino.io.reader."""
    for row in _labels(phantom_dir):
        image = read_image(phantom_dir / row["file"], frame=0 if row["modality"] == "DBT" else None)
        meta = image.meta
        assert meta.sop_class_uid == (
            FFDM_SOP_CLASS if row["modality"] == "FFDM" else DBT_SOP_CLASS
        )
        assert (meta.laterality, meta.view) == (row["laterality"], row["view"])
        assert meta.spacing_mm == pytest.approx((float(row["spacing_mm"]),) * 2, rel=1e-5)
        assert meta.manufacturer == "mammodino-synth" and meta.bits_stored == 12
        assert meta.photometric == "MONOCHROME2"
        assert image.pixels.shape == (int(row["rows"]), int(row["cols"]))
        assert (
            image.pixels.dtype == np.float32
            and 0.0 <= image.pixels.min() < image.pixels.max() <= 1.0
        )
        if row["modality"] == "DBT":
            assert meta.n_frames == int(row["frames"]) == SETTINGS.dbt_shape[0]
            assert meta.slice_spacing_mm == pytest.approx(float(row["slice_spacing_mm"]), rel=1e-5)


def test_dbt_header_follows_the_multiframe_layout(phantom_dir):
    row = next(r for r in _labels(phantom_dir) if r["modality"] == "DBT")
    ds = pydicom.dcmread(phantom_dir / row["file"])
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert (
        int(ds.NumberOfFrames) == len(ds.PerFrameFunctionalGroupsSequence) == SETTINGS.dbt_shape[0]
    )
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert float(shared.PixelMeasuresSequence[0].SpacingBetweenSlices) == pytest.approx(
        float(ds.SpacingBetweenSlices)
    )
    assert shared.FrameVOILUTSequence[0].WindowWidth > 0
    z = [
        float(f.PlanePositionSequence[0].ImagePositionPatient[2])
        for f in ds.PerFrameFunctionalGroupsSequence
    ]
    assert np.allclose(np.diff(z), float(ds.SpacingBetweenSlices), atol=1e-3)
    assert ds.ViewCodeSequence[0].CodeValue in ("399162004", "399368009")
    assert ds.PatientID == row["patient_id"] and ds.StudyInstanceUID == row["study_uid"]
    assert ds.PatientName == f"SYNTH^{row['patient_id']}" and ds.PatientBirthDate == ""
    assert ds.pixel_array.shape == SETTINGS.dbt_shape and ds.pixel_array.max() < 4096


def test_two_runs_with_one_seed_give_identical_pixel_data(phantom_dir, tmp_path):
    """Acceptance 1 (determinism): byte-identical PixelData and identical UIDs."""
    generate(tmp_path, SETTINGS, workers=1)
    for row in _labels(phantom_dir):
        first = pydicom.dcmread(phantom_dir / row["file"])
        second = pydicom.dcmread(tmp_path / row["file"])
        assert first.PixelData == second.PixelData
        assert first.SOPInstanceUID == second.SOPInstanceUID


def test_writers_are_usable_on_their_own(tmp_path):
    meta = DicomMeta(
        "abc123", "study-1", "image-1", "R", "MLO", 0.1, bits_stored=14, slice_spacing_mm=1.0
    )
    image = (np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) * 5) % 16384
    write_ffdm_dicom(tmp_path / "a.dcm", image, meta)
    back = read_image(tmp_path / "a.dcm")
    assert back.meta.bits_stored == 14 and (back.meta.laterality, back.meta.view) == ("R", "MLO")
    assert np.array_equal(pydicom.dcmread(tmp_path / "a.dcm").pixel_array, image)
    volume = np.stack([image, image // 2, image // 3])
    write_dbt_dicom(tmp_path / "b.dcm", volume, meta)
    assert np.array_equal(
        read_image(tmp_path / "b.dcm", frame=2).pixels * 16383, (image // 3).astype(np.float32)
    )
    assert not list(tmp_path.glob("*.part"))
    with pytest.raises(ValueError):
        write_ffdm_dicom(
            tmp_path / "c.dcm",
            np.full((4, 4), 5000, np.uint16),
            DicomMeta("p", "s", "i", "L", "CC", 0.1),
        )
    assert derived_uid("x") == derived_uid("x") != derived_uid("y") and len(derived_uid("x")) <= 64


def test_dbt_slices_folder_reads_back_as_one_volume(tmp_path):
    from mammodino.io.volumes import open_volume

    meta = DicomMeta("p1", "study-2", "vol-1", "L", "CC", 0.4, slice_spacing_mm=1.1)
    volume = np.stack([np.full((40, 32), 100 * (k + 1), np.uint16) for k in range(5)])
    paths = write_dbt_slices(tmp_path / "vol", volume, meta)
    assert len(paths) == 5
    opened = open_volume(tmp_path / "vol")
    assert opened.n_slices == 5 and opened.slice_spacing_mm == pytest.approx(1.1)
    series = {pydicom.dcmread(p).SeriesInstanceUID for p in paths}
    frames = {pydicom.dcmread(p).FrameOfReferenceUID for p in paths}
    assert len(series) == len(frames) == 1
    values = [int(pydicom.dcmread(f).pixel_array[0, 0]) for f in opened.files]
    assert values == [100, 200, 300, 400, 500]
