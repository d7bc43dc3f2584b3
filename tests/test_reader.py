"""Reader: formats, normalisation by bits stored, VOI functions, DICOM metadata, bad inputs."""

from __future__ import annotations

import struct
import tracemalloc
import zlib

import cv2
import numpy as np
import pytest
import tifffile

from helpers import (
    BREAST_TOMOSYNTHESIS,
    DM_FOR_PROCESSING,
    dbt_extra,
    view_code,
    write_dicom,
)
from mammodino.errors import (
    ImageTooLargeError,
    NoPixelDataError,
    NotAnImageError,
    TruncatedFileError,
)
from mammodino.io.reader import (
    laterality_view_from_name,
    read_frame_count,
    read_image,
    read_metadata,
)
from mammodino.io.voi import apply_voi_lut, apply_window

# ---------------------------------------------------------------- VOI functions (PS3.3 C.11.2.1.2)


def test_window_linear_matches_standard_formula():
    # c=100, w=51: below c-0.5-(w-1)/2 = 74.5 -> 0, above c-0.5+(w-1)/2 = 124.5 -> 1,
    # else ((x - 99.5) / 50 + 0.5).
    x = np.array([74.0, 74.5, 80.0, 100.0, 124.5, 125.0])
    y = apply_window(x, 100, 51, "LINEAR")
    np.testing.assert_allclose(y, [0.0, 0.0, 0.11, 0.51, 1.0, 1.0], atol=1e-6)


def test_window_linear_exact_matches_standard_formula():
    # c=100, w=50: (x - c) / w + 0.5, 0 at x <= 75, 1 at x > 125.
    x = np.array([75.0, 80.0, 100.0, 110.0, 125.0, 126.0])
    y = apply_window(x, 100, 50, "LINEAR_EXACT")
    np.testing.assert_allclose(y, [0.0, 0.1, 0.5, 0.7, 1.0, 1.0], atol=1e-6)


def test_window_sigmoid_matches_standard_formula():
    # 1 / (1 + exp(-4 (x - c) / w)): exp(-2) -> 0.880797, exp(2) -> 0.119203.
    y = apply_window(np.array([75.0, 100.0, 125.0]), 100, 50, "SIGMOID")
    np.testing.assert_allclose(y, [0.119203, 0.5, 0.880797], atol=1e-6)


def test_voi_lut_clamps_and_scales_by_bits():
    # descriptor (4 entries, first mapped 10, 12 bits): x < 10 -> LUT[0], x > 13 -> LUT[3].
    y = apply_voi_lut(np.array([5.0, 11.0, 12.0, 100.0]), (4, 10, 12), [0, 1000, 2000, 4095])
    np.testing.assert_allclose(y, [0.0, 1000 / 4095, 2000 / 4095, 1.0], atol=1e-6)


# ---------------------------------------------------------------- DICOM pixel pipeline


def test_dicom_normalises_by_bits_stored_not_8_bit(tmp_path):
    pixels = np.array([[0, 1, 2, 4095]] * 4, np.uint16)
    path = write_dicom(tmp_path / "a.dcm", pixels, bits_stored=12)
    image = read_image(path)
    assert image.pixels.dtype == np.float32
    np.testing.assert_allclose(image.pixels[0], [0, 1 / 4095, 2 / 4095, 1.0], rtol=1e-6)
    # 1/4095 and 2/4095 stay distinct: an 8-bit path would merge them.
    assert len(np.unique(image.pixels)) == 4


def test_monochrome1_is_inverted(tmp_path):
    pixels = np.array([[0, 4095], [1000, 2000]], np.uint16)
    path = write_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1")
    np.testing.assert_allclose(read_image(path).pixels, 1 - pixels / 4095, atol=1e-6)


def test_rescale_slope_intercept_then_bits_range(tmp_path):
    pixels = np.array([[0, 1000], [4095, 2000]], np.uint16)
    extra = {"RescaleSlope": "2", "RescaleIntercept": "-100"}
    path = write_dicom(tmp_path / "r.dcm", pixels, extra=extra)
    # Range of 12 bits through the rescale: [-100, 8090 - 100]; 1000 -> 1900 -> 2000 / 8190.
    expected = (pixels * 2.0 - 100 + 100) / 8190
    np.testing.assert_allclose(read_image(path).pixels, expected, atol=1e-6)


@pytest.mark.parametrize(
    ("function", "value"),
    [("LINEAR", (110 - 99.5) / 49 + 0.5), ("LINEAR_EXACT", 0.7), ("SIGMOID", 0.689974)],
)
def test_dicom_window_uses_header_function(tmp_path, function, value):
    pixels = np.full((2, 2), 110, np.uint16)
    extra = {"WindowCenter": "100", "WindowWidth": "50", "VOILUTFunction": function}
    path = write_dicom(tmp_path / "w.dcm", pixels, extra=extra)
    assert read_image(path, voi="window").pixels[0, 0] == pytest.approx(value, abs=1e-5)
    assert read_image(path, voi="none").pixels[0, 0] == pytest.approx(110 / 4095, abs=1e-6)


def test_dicom_metadata_from_tags(tmp_path):
    extra = {
        "ImageLaterality": "R",
        "ViewCodeSequence": view_code("medio-lateral oblique"),
        "ImagerPixelSpacing": [0.07, 0.07],
        "PixelSpacing": [53.9, 45.0],  # a GE quirk: implausible, so ImagerPixelSpacing wins
        "Manufacturer": "ACME",
        "PresentationIntentType": "FOR PROCESSING",
    }
    pixels = np.zeros((8, 6), np.uint16)
    meta = read_metadata(
        write_dicom(tmp_path / "m.dcm", pixels, sop_class=DM_FOR_PROCESSING, extra=extra)
    )
    assert (meta.laterality, meta.view, meta.spacing_mm) == ("R", "MLO", (0.07, 0.07))
    assert (meta.manufacturer, meta.presentation_intent) == ("ACME", "FOR PROCESSING")
    assert (meta.rows, meta.cols, meta.n_frames, meta.bits_stored) == (8, 6, 1, 12)


def test_dbt_frames_read_one_at_a_time(tmp_path):
    volume = np.stack([np.full((40, 36), 100 * (k + 1), np.uint16) for k in range(5)])
    path = write_dicom(
        tmp_path / "dbt.dcm", volume, sop_class=BREAST_TOMOSYNTHESIS, extra=dbt_extra("L", 1.0)
    )
    assert read_frame_count(path) == 5
    third = read_image(path, frame=3)
    assert third.frame == 3 and third.pixels.shape == (40, 36)
    assert third.pixels[0, 0] == pytest.approx(400 / 4095, abs=1e-6)
    assert read_image(path).frame == 2  # no frame given: the central slice
    meta = third.meta
    assert (meta.laterality, meta.view, meta.n_frames, meta.slice_spacing_mm) == ("L", "CC", 5, 1.0)
    assert meta.spacing_mm == (0.1, 0.1)
    with pytest.raises(IndexError):
        read_image(path, frame=5)


# ---------------------------------------------------------------- raster formats


def test_png_8_and_16_bit(tmp_path):
    eight = np.array([[0, 1, 255]], np.uint8).repeat(3, 0)
    sixteen = np.array([[0, 1, 65535]], np.uint16).repeat(3, 0)
    cv2.imwrite(str(tmp_path / "e.png"), eight)
    cv2.imwrite(str(tmp_path / "s.png"), sixteen)
    np.testing.assert_allclose(read_image(tmp_path / "e.png").pixels[0], [0, 1 / 255, 1], atol=1e-7)
    image = read_image(tmp_path / "s.png")
    np.testing.assert_allclose(image.pixels[0], [0, 1 / 65535, 1], atol=1e-9)
    assert (image.meta.bits_stored, image.meta.source_format) == (16, "png")


def test_raster_side_and_view_come_from_the_file_name(tmp_path):
    image = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 1000).astype(np.uint16)
    inbreast = tmp_path / "20586908_6c613a14b80a8591_MG_R_ML_ANON.png"
    cv2.imwrite(str(inbreast), image)
    meta = read_image(inbreast).meta
    assert (meta.laterality, meta.view) == ("R", "ML")
    assert laterality_view_from_name("Calc-Test_P_00038_LEFT_MLO.tif") == ("L", "MLO")
    assert laterality_view_from_name("case-07-LCC.png") == ("L", "CC")
    # One word, contradictions and common words give nothing.
    assert laterality_view_from_name("right.png") == ("", "")
    assert laterality_view_from_name("x_L_R_CC.png") == ("", "CC")
    assert laterality_view_from_name("mdb001_calc_at.pgm") == ("", "")


def test_pgm_binary_16_bit_and_ascii(tmp_path):
    values = np.array([[0, 2048], [4095, 1]], dtype=">u2")
    (tmp_path / "b.pgm").write_bytes(b"P5\n# scanner\n2 2\n4095\n" + values.tobytes())
    np.testing.assert_allclose(read_image(tmp_path / "b.pgm").pixels, values / 4095, atol=1e-7)
    (tmp_path / "a.pgm").write_bytes(b"P2\n2 2\n255\n0 51\n102 255\n")
    np.testing.assert_allclose(
        read_image(tmp_path / "a.pgm").pixels, [[0, 0.2], [0.4, 1]], atol=1e-6
    )
    assert read_image(tmp_path / "b.pgm").meta.bits_stored == 12


def test_tiff_and_npy(tmp_path):
    data = np.array([[0, 30000], [65535, 1]], np.uint16)
    tifffile.imwrite(tmp_path / "t.tif", data)
    np.testing.assert_allclose(read_image(tmp_path / "t.tif").pixels, data / 65535, atol=1e-9)
    np.save(tmp_path / "n.npy", data)
    np.testing.assert_allclose(read_image(tmp_path / "n.npy").pixels, data / 65535, atol=1e-9)
    np.save(tmp_path / "f.npy", np.array([[0.25, 2.0]], np.float32))
    np.testing.assert_allclose(read_image(tmp_path / "f.npy").pixels, [[0.25, 1.0]])


# ---------------------------------------------------------------- bad inputs


def _png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


def test_huge_declared_sizes_refused_before_allocating(tmp_path):
    paths = [
        write_dicom(tmp_path / "huge.dcm", np.zeros((4, 4), np.uint16), rows=60000, cols=60000),
        tmp_path / "huge.png",
        tmp_path / "huge.pgm",
        tmp_path / "huge.npy",
    ]
    paths[1].write_bytes(_png_header_only(60000, 60000))
    paths[2].write_bytes(b"P5 60000 60000 65535\n" + b"\0" * 64)
    with open(paths[3], "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<u2", "fortran_order": False, "shape": (60000, 60000)}
        )
    tracemalloc.start()
    for path in paths:
        with pytest.raises(ImageTooLargeError, match="60000 x 60000"):
            read_image(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 50 * 2**20  # 60000^2 uint16 would be 7.2 GB


def test_bad_files_raise_typed_errors(tmp_path):
    (tmp_path / "zero.dcm").write_bytes(b"")
    rng = np.random.default_rng(0)
    (tmp_path / "random.bin").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    full = write_dicom(tmp_path / "full.dcm", np.ones((64, 64), np.uint16))
    (tmp_path / "cut.dcm").write_bytes(full.read_bytes()[:-100])
    no_pixels = write_dicom(tmp_path / "nopix.dcm", None, rows=64, cols=64)
    with pytest.raises(NotAnImageError, match="empty file"):
        read_image(tmp_path / "zero.dcm")
    with pytest.raises(NotAnImageError, match="unrecognised format"):
        read_image(tmp_path / "random.bin")
    with pytest.raises(TruncatedFileError, match="8092 of 8192 bytes"):
        read_image(tmp_path / "cut.dcm")
    with pytest.raises(NoPixelDataError):
        read_image(no_pixels)
    with pytest.raises(ValueError, match="voi must be"):
        read_image(full, voi="softer")


def test_error_messages_are_one_line_and_name_only_the_file(tmp_path):
    path = tmp_path / "secret-folder" / "x.dcm"
    path.parent.mkdir()
    path.write_bytes(b"")
    with pytest.raises(NotAnImageError) as info:
        read_image(path)
    text = str(info.value)
    assert "\n" not in text and "secret-folder" not in text and text.startswith("x.dcm:")
