"""Fuzzed reader (issue 9): mutated DICOM/PNG/PGM/TIFF/.npy/DBT files either read as a valid
float32 image in [0, 1] or raise a MammoReadError subclass; never another exception, never more
than a few seconds, never a big allocation for a header that claims a huge image.

The mutators are those of benchmarks/fuzz.py (the longer soak). CI runs ~2,100 cases here.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import load_benchmark
from mammodino.errors import ImageTooLargeError, MammoReadError, TruncatedFileError
from mammodino.io.reader import read_frame_count, read_image

fuzz = load_benchmark("fuzz")

SETTINGS = dict(
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("fuzz-seeds")
    return {name: path.read_bytes() for name, path in fuzz.write_seeds(folder).items()}


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-cases")


fraction = st.floats(0.0, 1.0, exclude_max=True, allow_nan=False)
byte_ops = st.one_of(
    st.tuples(st.just("flip"), fraction, st.integers(0, 7)),
    st.tuples(st.just("truncate"), fraction),
    st.tuples(st.just("insert"), fraction, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("overwrite"), fraction, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), fraction, st.integers(1, 64)),
)
element_ops = st.one_of(
    st.tuples(
        st.just("element"), st.sampled_from(fuzz.US_ELEMENTS), st.sampled_from(fuzz.US_VALUES)
    ),
    st.sampled_from(sorted(fuzz.STRING_ELEMENTS)).flatmap(
        lambda k: st.tuples(
            st.just("element"), st.just(k), st.sampled_from(fuzz.STRING_ELEMENTS[k][1])
        )
    ),
    st.tuples(
        st.just("element"), st.just("TransferSyntaxUID"), st.sampled_from(fuzz.TRANSFER_SYNTAXES)
    ),
    st.tuples(
        st.just("element"),
        st.just("LUTDescriptor"),
        st.sampled_from(fuzz.LUT_DESCRIPTORS).map(list),
    ),
    st.tuples(
        st.just("element"),
        st.sampled_from(
            ["PixelData", "Rows", "BitsStored", "NumberOfFrames", "PixelRepresentation"]
        ),
        st.none(),
    ),
)
dims = st.sampled_from([0, 1, 2, 8, 16, 60000, 2**31 - 1])
raster_header_ops = st.one_of(
    st.tuples(
        st.just("png_ihdr"),
        dims,
        dims,
        st.sampled_from([1, 8, 16, 3]),
        st.sampled_from([0, 2, 3, 4, 6, 7]),
    ),
    st.tuples(
        st.just("pgm_header"),
        st.sampled_from([b"P5", b"P2"]),
        st.sampled_from([0, 1, 8, 10, 60000]),
        st.sampled_from([0, 1, 8, 10, 60000]),
        st.sampled_from([0, 1, 255, 256, 65535, 65536, 10**9]),
    ),
    st.tuples(
        st.just("npy_header"),
        st.sampled_from(fuzz.NPY_DESCRS),
        st.lists(st.sampled_from([0, 1, 5, 12, 60000, 2**40]), max_size=4).map(tuple),
        st.booleans(),
    ),
)
voi_modes = st.sampled_from(fuzz.VOI)


def assert_reads_or_refuses(
    case_dir: Path, name: str, data: bytes, voi: str, timeout_s: float = 5.0
):
    path = case_dir / ("case" + Path(name).suffix)
    path.write_bytes(data)
    kind, detail = fuzz.read_case(str(path), voi, timeout_s)
    assert kind in ("ok", "refused"), f"{kind} on mutated {name} (voi={voi}): {detail}"


def _names(seeds, *suffixes, prefix=""):
    return sorted(n for n in seeds if n.endswith(suffixes) and n.startswith(prefix))


@settings(max_examples=700, **SETTINGS)
@given(data=st.data(), voi=voi_modes)
def test_fuzzed_dicom_header_elements(seeds, case_dir, data, voi):
    """Header element values (sizes, bits, frames, photometric, rescale, VOI, syntax) + bytes."""
    name = data.draw(st.sampled_from(_names(seeds, ".dcm")))
    ops = data.draw(st.lists(st.one_of(element_ops, element_ops, byte_ops), min_size=1, max_size=3))
    assert_reads_or_refuses(case_dir, name, fuzz.apply_ops(seeds[name], ops), voi)


@settings(max_examples=500, **SETTINGS)
@given(data=st.data(), voi=voi_modes)
def test_fuzzed_dicom_bytes(seeds, case_dir, data, voi):
    """Bit flips, truncations, inserted, overwritten and deleted bytes in DICOM files."""
    name = data.draw(st.sampled_from(_names(seeds, ".dcm")))
    ops = data.draw(st.lists(byte_ops, min_size=1, max_size=4))
    assert_reads_or_refuses(case_dir, name, fuzz.apply_ops(seeds[name], ops), voi)


@settings(max_examples=700, **SETTINGS)
@given(data=st.data())
def test_fuzzed_rasters(seeds, case_dir, data):
    """PNG (8/16-bit, colour), PGM (P5/P2), TIFF and .npy: header fields and bytes."""
    name = data.draw(st.sampled_from(_names(seeds, ".png", ".pgm", ".tif", ".npy")))
    ops = data.draw(st.lists(st.one_of(raster_header_ops, byte_ops), min_size=1, max_size=3))
    assert_reads_or_refuses(case_dir, name, fuzz.apply_ops(seeds[name], ops), "none")


@settings(max_examples=200, **SETTINGS)
@given(data=st.data())
def test_fuzzed_dbt_every_frame(seeds, case_dir, data):
    """Multi-frame DBT: every frame the (mutated) header announces reads or is refused."""
    ops = data.draw(st.lists(st.one_of(element_ops, byte_ops), min_size=1, max_size=2))
    path = case_dir / "dbt.dcm"
    path.write_bytes(fuzz.apply_ops(seeds["dbt.dcm"], ops))
    try:
        n = read_frame_count(path)
    except MammoReadError:
        return
    assert isinstance(n, int) and 1 <= n <= 4096
    for frame in range(min(n, 8)):
        try:
            image = read_image(path, frame=frame)
        except MammoReadError:
            continue
        assert fuzz.check_image(image) is None


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("ops", [
    [("element", "Rows", 60000)],
    [("element", "BitsStored", 32), ("element", "RescaleSlope", "nan")],
    [("truncate", 0.5)],
    [("flip", 0.0004, 3), ("element", "TransferSyntaxUID", "1.2.840.10008.1.2.4.50")],
    [("element", "WindowWidth", "0")],  # decodes the whole JPEG 2000 image
    [("flip", 0.5, 2)],  # a bit flip inside the JPEG 2000 codestream
    [("overwrite", 0.7, b"\xff\x4f\xff\x51\x00\x00")],  # stray J2K markers mid-stream
])  # fmt: skip
def test_fuzzed_full_size_mg1(dicom_samples_dir, tmp_path, ops):
    """The 5 MB NEMA MG1 mammogram, a few mutations only (each decode takes seconds)."""
    data = (dicom_samples_dir / "nema-wg04-MG1" / "MG1_J2KI.dcm").read_bytes()
    assert_reads_or_refuses(tmp_path, "mg1.dcm", fuzz.apply_ops(data, ops), "window", 60.0)


# ---------------------------------------------------------------- decompression bombs


def _chunk(body: bytes) -> bytes:
    """A PNG chunk (type + data in `body`) with its length and CRC."""
    return struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))


def _png(width: int, height: int, depth: int = 16) -> bytes:
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0)
    idat = b"IDAT" + zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(ihdr) + _chunk(idat) + _chunk(b"IEND")


def _npy(shape: tuple[int, ...]) -> bytes:
    text = f"{{'descr': '<u2', 'fortran_order': False, 'shape': {shape}, }}"
    text = text.ljust(118) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode() + b"\x00" * 64


def _tiff(width: int, height: int) -> bytes:
    """Little-endian TIFF, one 16-bit strip of 64 bytes, declaring width x height."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 16), (259, 3, 1, 1),
               (262, 3, 1, 1), (273, 4, 1, 8 + 2 + 12 * 8 + 4), (277, 3, 1, 1),
               (278, 4, 1, height), (279, 4, 1, 64)]  # fmt: skip
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<HI", value, 0)[:4] if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00" * 4 + b"\x00" * 64


def png_chunk_bomb(png: bytes) -> bytes:
    """A valid small PNG whose IDAT chunk length field claims 1.29 GB (found by the fuzzer)."""
    at = png.index(b"IDAT") - 4
    return png[:at] + struct.pack(">I", 0x4CE0E666) + png[at + 4 :]


def bomb_files(
    folder: Path, seeds: dict[str, bytes], with_chunk_bomb: bool = False
) -> dict[str, Path]:
    """Files of a few hundred bytes whose headers declare 60000 x 60000 (or 4096+ frames)."""
    files = {
        "png": _png(60000, 60000),
        "pgm": b"P5\n60000 60000\n65535\n" + b"\x00" * 64,
        "npy": _npy((60000, 60000)),
        "tif": _tiff(60000, 60000),
        "dcm": fuzz.apply_ops(
            seeds["ffdm.dcm"], [("element", "Rows", 60000), ("element", "Columns", 60000)]
        ),
        "frames.dcm": fuzz.apply_ops(
            seeds["dbt.dcm"],
            [
                ("element", "Rows", 16000),
                ("element", "Columns", 16000),
                ("element", "NumberOfFrames", "99999999"),
            ],
        ),  # fmt: skip
    }
    out = {}
    if with_chunk_bomb:
        files["chunk.png"] = png_chunk_bomb(seeds["gray8.png"])
    for name, data in files.items():
        out[name] = folder / f"bomb.{name}"
        out[name].write_bytes(data)
    return out


def test_decompression_bombs_refused_before_allocating(seeds, tmp_path):
    """60000 x 60000 headers: ImageTooLargeError, and under 8 MB traced Python/numpy memory."""
    for name, path in bomb_files(tmp_path, seeds).items():
        tracemalloc.start()
        try:
            with pytest.raises(ImageTooLargeError):
                read_image(path)
            if name.endswith("dcm"):
                with pytest.raises(ImageTooLargeError):
                    read_frame_count(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 8 * 2**20, f"{name}: {peak / 2**20:.1f} MB traced"


def test_declared_size_beyond_file_is_refused_as_truncated(seeds, tmp_path):
    """A DICOM claiming 16000 x 16000 (within MAX_SIDE) with 24 x 20 pixels: truncated, no decode."""
    path = tmp_path / "big.dcm"
    path.write_bytes(
        fuzz.apply_ops(
            seeds["ffdm.dcm"], [("element", "Rows", 16000), ("element", "Columns", 16000)]
        )
    )
    tracemalloc.start()
    try:
        with pytest.raises(TruncatedFileError):
            read_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20


def test_bombs_resident_memory_in_a_fresh_process(seeds, tmp_path):
    """Resident memory (which tracemalloc cannot see for cv2/tifffile) grows < 64 MB on bombs."""
    paths = [str(p) for p in bomb_files(tmp_path, seeds, with_chunk_bomb=True).values()]
    code = (
        "import resource, sys\n"
        "from mammodino.io.reader import read_image\n"
        "from mammodino.errors import MammoReadError\n"
        "import cv2, tifffile, pydicom, numpy\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        read_image(p)\n"
        "    except MammoReadError:\n"
        "        pass\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *paths], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    grown_kb = int(out.stdout.split()[-1])
    assert grown_kb < 64 * 1024, f"max RSS grew {grown_kb / 1024:.0f} MB"


def test_png_chunk_length_bomb_is_refused_quickly(seeds, tmp_path):
    """A 400-byte PNG whose IDAT length says 1.29 GB: OpenCV 5 allocates ~3.6 GB and spends 5-10 s
    before failing, so the reader must check chunk lengths against the file size first."""
    path = tmp_path / "chunk.png"
    path.write_bytes(png_chunk_bomb(seeds["gray8.png"]))
    kind, detail = fuzz.read_case(str(path), "none", 2.0)
    assert kind == "refused", f"{kind}: {detail}"


# ---------------------------------------------------------------- regressions found by the fuzzer


REGRESSIONS = {
    # name: (seed, ops, voi) - each was a raw exception or an invalid image before the fix.
    "pgm_ascii_non_digit": ("ascii.pgm", [("overwrite", 0.7, b"x")], "none"),
    "npy_header_syntax": ("u16.npy", [("overwrite", 0.2, b"(((")], "none"),
    "npy_empty_shape": ("u16.npy", [("npy_header", "<u2", (1, 0), False)], "none"),
    "dicom_empty_transfer_syntax": ("ffdm.dcm", [("element", "TransferSyntaxUID", "")], "none"),
    "dicom_no_bits_stored": ("ffdm.dcm", [("element", "BitsStored", None)], "none"),
    "dicom_no_pixel_representation": ("ffdm.dcm", [("element", "PixelRepresentation", None)], "none"),
    "dicom_negative_frames": ("ffdm.dcm", [("element", "NumberOfFrames", "-1")], "none"),
    "dicom_fractional_frames": ("ffdm.dcm", [("element", "NumberOfFrames", "1.5")], "none"),
    "dicom_nan_slope": ("ffdm.dcm", [("element", "RescaleSlope", "nan")], "none"),
    "dicom_huge_slope": ("ffdm.dcm", [("element", "RescaleSlope", "1e308")], "none"),
    "dicom_nan_window": ("ffdm.dcm", [("element", "WindowWidth", "nan")], "window"),
    "dicom_bad_window_text": ("ffdm.dcm", [("element", "WindowCenter", "abc")], "window"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REGRESSIONS))
def test_fuzz_regression(seeds, tmp_path, case):
    """Minimal inputs of each crash class the fuzzer found (see docs/reliability.md)."""
    name, ops, voi = REGRESSIONS[case]
    data = fuzz.apply_ops(seeds[name], ops)
    assert data != seeds[name], "the mutation must change the file"
    assert_reads_or_refuses(tmp_path, name, data, voi)


def test_clean_seeds_read(seeds, tmp_path):
    """Sanity: every unmutated synthetic seed reads as a valid image (the fuzzer starts valid)."""
    for name in _names(seeds, ".dcm", ".png", ".pgm", ".tif", ".npy"):
        if name.startswith("openrem/"):
            continue
        path = tmp_path / ("seed" + Path(name).suffix)
        path.write_bytes(seeds[name])
        image = read_image(path)
        assert fuzz.check_image(image) is None, name
        assert image.pixels.dtype == np.float32
