"""JPEG 2000 decoding avoids GDCM's per-frame thread pool, and falls back to GDCM when needed."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000, ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from mammodino.io.dicom_header import read_header
from mammodino.io.dicom_pixels import decode_frame, preferred_plugin

HAS_OPENJPEG = "pylibjpeg" in pydicom.pixels.get_decoder(JPEG2000).available_plugins


@pytest.mark.skipif(not HAS_OPENJPEG, reason="pylibjpeg-openjpeg not installed")
def test_jpeg2000_prefers_the_single_threaded_plugin():
    assert preferred_plugin(JPEG2000Lossless) == "pylibjpeg"
    assert preferred_plugin(JPEG2000) == "pylibjpeg"


def test_other_syntaxes_keep_pydicom_default():
    assert preferred_plugin(ExplicitVRLittleEndian) == ""
    assert preferred_plugin(RLELossless) == ""  # no GDCM threads to avoid there
    assert preferred_plugin("1.2.3.4") == ""  # not a transfer syntax: pydicom reports it later


def _record_plugins(monkeypatch, refuse: str | None = None) -> list[str]:
    """Record the `decoding_plugin` of every pixel_array call; `refuse` one plugin."""
    original = pydicom.pixels.pixel_array
    plugins: list[str] = []

    def recording(*args, decoding_plugin="", **kwargs):
        plugins.append(decoding_plugin)
        if decoding_plugin == refuse:
            raise RuntimeError("openjpeg refused the codestream")
        return original(*args, decoding_plugin=decoding_plugin, **kwargs)

    monkeypatch.setattr(pydicom.pixels, "pixel_array", recording)
    return plugins


@pytest.mark.realdata
@pytest.mark.skipif(not HAS_OPENJPEG, reason="pylibjpeg-openjpeg not installed")
def test_mg1_decodes_with_openjpeg_to_gdcm_values(dicom_samples_dir, monkeypatch):
    path = dicom_samples_dir / "nema-wg04-MG1" / "MG1_J2KI.dcm"
    header = read_header(path)
    original = pydicom.pixels.pixel_array
    plugins = _record_plugins(monkeypatch)
    pixels = decode_frame(path, header, 0)
    assert plugins == ["pylibjpeg"] and pixels.shape == (4664, 3064)
    if "gdcm" in pydicom.pixels.get_decoder(JPEG2000).available_plugins:
        reference = original(str(path), decoding_plugin="gdcm")
        np.testing.assert_array_equal(pixels, reference)  # same OpenJPEG, same values


@pytest.mark.realdata
@pytest.mark.skipif(not HAS_OPENJPEG, reason="pylibjpeg-openjpeg not installed")
def test_refused_codestream_falls_back_to_the_default_plugins(dicom_samples_dir, monkeypatch):
    path = dicom_samples_dir / "nema-wg04-MG1" / "MG1_J2KI.dcm"
    header = read_header(path)
    plugins = _record_plugins(monkeypatch, refuse="pylibjpeg")
    pixels = decode_frame(path, header, 0)
    assert plugins == ["pylibjpeg", ""] and pixels.shape == (4664, 3064)
