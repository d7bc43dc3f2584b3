"""Fuzz soak of the image reader: mutated DICOM, PNG, PGM, TIFF, .npy and DBT files (issue 9).

Every case is a seed file (real OpenREM/NEMA DICOM headers from ../shared/data/dicom-samples, and
small synthetic FFDM/DBT DICOMs and rasters written here) mutated by a few operations: DICOM header
element values, PNG IHDR / PGM / .npy header fields, bit flips, truncation, inserted, overwritten
and deleted bytes. `read_frame_count` and `read_image` must either give a float32 2-D image in
[0, 1] or raise a `MammoReadError` subclass; anything else is a crash, a case slower than
--case-timeout seconds a hang. Cases run in a worker process the parent watches, so a hang or a
crash inside a C decoder (segfault) is counted, not fatal. The CI variant of the same mutators is
tests/test_fuzz_reader.py (hypothesis).

    .venv/bin/python benchmarks/fuzz.py                    # 20,000 cases
    .venv/bin/python benchmarks/fuzz.py --cases 5000 --seconds 300 --seed 1
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import random
import signal
import struct
import sys
import tempfile
import time
import traceback
import warnings
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "data" / "dicom-samples"
VOI = ("none", "window", "voi_lut")

# DICOM header elements a corrupt or hostile file gets wrong, and values to put there.
US_ELEMENTS = (
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "SamplesPerPixel", "PlanarConfiguration",
)  # fmt: skip
US_VALUES = (0, 1, 2, 3, 7, 8, 12, 15, 16, 17, 24, 32, 64, 255, 4096, 16384, 16385, 60000, 65535)
STRING_ELEMENTS = {
    "NumberOfFrames": ("IS", ("0", "-1", "1", "2", "3", "4097", "99999999", "", "abc", "1.5")),
    "PhotometricInterpretation": (
        "CS",
        ("MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL", "", "XYZ"),
    ),
    "RescaleSlope": ("DS", ("0", "-1", "1e308", "-1e308", "nan", "inf", "", "abc", "1e-320")),
    "RescaleIntercept": ("DS", ("0", "-1e308", "1e308", "nan", "-inf", "", "x")),
    "WindowCenter": ("DS", ("0", "-1", "1e308", "nan", "inf", "", "abc", "1\\2\\3")),
    "WindowWidth": ("DS", ("0", "-5", "1e-320", "1e308", "nan", "inf", "", "abc", "1\\0")),
    "VOILUTFunction": ("CS", ("LINEAR", "LINEAR_EXACT", "SIGMOID", "BOGUS", "")),
    "PixelSpacing": ("DS", ("0\\0", "-1\\-1", "abc", "1e400\\1", "nan\\nan", "0.1")),
    "ImageLaterality": ("CS", ("L", "R", "B", "", "LL")),
    "ViewPosition": ("CS", ("CC", "MLO", "", "??")),
    "SpacingBetweenSlices": ("DS", ("0", "-1", "nan", "abc", "")),
}
TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5", "1.2.3.4", "",
)  # fmt: skip
LUT_DESCRIPTORS = ((0, 0, 16), (4096, 0, 0), (65535, 65535, 65535), (1, 0, 64), (2, 40000, 8))
NPY_DESCRS = ("<u2", "|u1", "<f4", "<f8", "|b1", "<i8", "<c8", "|O", "<U4", "|V8", ">u2")


# ---------------------------------------------------------------- seed files


def write_seeds(folder: Path, with_real: bool = True, with_large: bool = False) -> dict[str, Path]:
    """Small valid inputs of every supported kind (and real DICOM headers); name -> path."""
    import cv2

    from mammodino.synth.dicom_writer import DicomMeta, write_dbt_dicom, write_ffdm_dicom

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    seeds: dict[str, Path] = {}
    image = (rng.integers(0, 4096, (24, 20))).astype(np.uint16)
    meta = DicomMeta("P", "S", "I", "L", "CC", 0.1)
    seeds["ffdm.dcm"] = write_ffdm_dicom(folder / "ffdm.dcm", image, meta)
    volume = rng.integers(0, 4096, (4, 16, 12)).astype(np.uint16)
    dbt_meta = DicomMeta("P", "S", "J", "R", "MLO", 0.1, slice_spacing_mm=1.0)
    seeds["dbt.dcm"] = write_dbt_dicom(folder / "dbt.dcm", volume, dbt_meta)
    rasters = {
        "gray16.png": (rng.integers(0, 65535, (20, 16))).astype(np.uint16),
        "gray8.png": (rng.integers(0, 255, (20, 16))).astype(np.uint8),
        "rgb8.png": (rng.integers(0, 255, (12, 10, 3))).astype(np.uint8),
        "gray16.tif": (rng.integers(0, 65535, (20, 16))).astype(np.uint16),
    }
    for name, array in rasters.items():
        cv2.imwrite(str(folder / name), array)
        seeds[name] = folder / name
    p5 = (rng.integers(0, 65535, (10, 8))).astype(">u2")
    (folder / "gray16.pgm").write_bytes(b"P5\n# c\n8 10\n65535\n" + p5.tobytes())
    (folder / "gray8.pgm").write_bytes(b"P5 8 10 255 " + bytes(rng.integers(0, 255, 80).tolist()))
    (folder / "ascii.pgm").write_bytes(b"P2\n3 2\n15\n0 1 2\n3 4 15\n")
    seeds.update({n: folder / n for n in ("gray16.pgm", "gray8.pgm", "ascii.pgm")})
    arrays = {
        "u16.npy": rng.integers(0, 65535, (12, 10)).astype(np.uint16),
        "f32.npy": rng.random((12, 10), dtype=np.float32),
        "bool.npy": rng.random((8, 8)) > 0.5,
        "rgb.npy": rng.integers(0, 255, (6, 5, 3)).astype(np.uint8),
    }
    for name, array in arrays.items():
        np.save(folder / name, array)
        seeds[name] = folder / name
    if with_real and SAMPLES.is_dir():
        for path in sorted((SAMPLES / "openrem-headers").glob("*.dcm")):
            seeds["openrem/" + path.name] = path
        if with_large:
            for path in sorted((SAMPLES / "nema-wg04-MG1").glob("*.dcm")):
                seeds["mg1/" + path.name] = path
    return seeds


# ---------------------------------------------------------------- mutators


def _at(data: bytes, fraction: float) -> int:
    return min(int(fraction * len(data)), max(len(data) - 1, 0))


def _dicom_element(data: bytes, keyword: str, value) -> bytes:
    """Set one header element (or delete it when value is None) through pydicom."""
    import pydicom
    from pydicom.config import IGNORE, settings
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import DataElement

    previous = settings.writing_validation_mode
    settings.writing_validation_mode = IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            target = ds.file_meta if keyword == "TransferSyntaxUID" else ds
            if keyword == "LUTDescriptor":
                seq = ds.get("VOILUTSequence")
                if not seq:
                    return data
                target = seq[0]
            tag = tag_for_keyword(keyword)
            if value is None:
                if tag in target:
                    del target[tag]
            else:
                vr = {"TransferSyntaxUID": "UI", "LUTDescriptor": "US"}.get(keyword)
                vr = vr or ("US" if keyword in US_ELEMENTS else STRING_ELEMENTS[keyword][0])
                # Strings go in as a valid placeholder, then their bytes are patched below:
                # pydicom refuses to encode invalid DS/IS text, which is what a fuzzer wants.
                raw_text = isinstance(value, str) and vr in ("DS", "IS", "CS")
                target[tag] = DataElement(tag, vr, "0" if raw_text else value)
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=False)
            encoded = out.getvalue()
            if value is not None and raw_text:
                encoded = _patch_string(encoded, tag, vr, value)
            return encoded
    except Exception:  # a value pydicom cannot encode: leave the file as it was
        return data
    finally:
        settings.writing_validation_mode = previous


def _patch_string(data: bytes, tag: int, vr: str, value: str) -> bytes:
    """Replace the first explicit-VR little-endian element `tag` holding '0' by `value` bytes."""
    group, element = tag >> 16, tag & 0xFFFF
    head = struct.pack("<HH", group, element) + vr.encode() + struct.pack("<H", 2)
    at = data.find(head + b"0 ")
    if at < 0:
        return data
    text = value.encode("latin1")
    text += b" " * (len(text) % 2)
    start = at + 4 + 2
    return data[:start] + struct.pack("<H", len(text)) + text + data[start + 2 + 2 :]


def _png_ihdr(data: bytes, width: int, height: int, depth: int, ctype: int) -> bytes:
    """Rewrite the IHDR chunk with a valid CRC, so libpng goes on to trust it."""
    if not data.startswith(b"\x89PNG") or len(data) < 33:
        return data
    body = b"IHDR" + struct.pack(">IIBBBBB", width, height, depth, ctype, 0, 0, 0)
    return data[:12] + body + struct.pack(">I", zlib.crc32(body)) + data[33:]


def _pgm_header(data: bytes, magic: bytes, width: int, height: int, max_value: int) -> bytes:
    if data[:2] not in (b"P5", b"P2"):
        return data
    parts = data.split(None, 4)
    body = parts[4] if len(parts) == 5 else b""
    return b"%s\n%d %d\n%d\n" % (magic, width, height, max_value) + body


def _npy_header(data: bytes, descr: str, shape: tuple[int, ...], fortran: bool) -> bytes:
    if not data.startswith(b"\x93NUMPY") or len(data) < 10:
        return data
    header_len = struct.unpack("<H", data[8:10])[0]
    body = data[10 + header_len :]
    text = f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {tuple(shape)}, }}"
    text = text.ljust(((len(text) + 11) // 64 + 1) * 64 - 11) + "\n"
    return data[:8] + struct.pack("<H", len(text)) + text.encode("latin1") + body


def apply_ops(data: bytes, ops: list[tuple]) -> bytes:
    """Apply mutation operations in order; positions are fractions of the current length."""
    for op in ops:
        kind = op[0]
        if kind == "flip" and data:
            i = _at(data, op[1])
            data = data[:i] + bytes([data[i] ^ (1 << op[2])]) + data[i + 1 :]
        elif kind == "truncate":
            data = data[: int(op[1] * len(data))]
        elif kind == "insert":
            i = int(op[1] * len(data))
            data = data[:i] + op[2] + data[i:]
        elif kind == "overwrite" and data:
            i = _at(data, op[1])
            data = data[:i] + op[2] + data[i + len(op[2]) :]
        elif kind == "delete":
            i = int(op[1] * len(data))
            data = data[:i] + data[i + op[2] :]
        elif kind == "element":
            data = _dicom_element(data, op[1], op[2])
        elif kind == "png_ihdr":
            data = _png_ihdr(data, *op[1:])
        elif kind == "pgm_header":
            data = _pgm_header(data, *op[1:])
        elif kind == "npy_header":
            data = _npy_header(data, *op[1:])
    return data


def random_element_op(rng: random.Random) -> tuple:
    """One DICOM header element mutation."""
    pick = rng.random()
    if pick < 0.4:
        return ("element", rng.choice(US_ELEMENTS), rng.choice(US_VALUES))
    if pick < 0.8:
        keyword = rng.choice(sorted(STRING_ELEMENTS))
        return ("element", keyword, rng.choice(STRING_ELEMENTS[keyword][1]))
    if pick < 0.88:
        return ("element", "TransferSyntaxUID", rng.choice(TRANSFER_SYNTAXES))
    if pick < 0.94:
        return ("element", "LUTDescriptor", list(rng.choice(LUT_DESCRIPTORS)))
    return ("element", rng.choice(["PixelData", "Rows", "BitsStored", "NumberOfFrames"]), None)


def random_ops(rng: random.Random, name: str) -> list[tuple]:
    """A few random mutations suited to the seed's format."""
    ops: list[tuple] = []
    for _ in range(rng.randint(1, 3)):
        pick = rng.random()
        if pick < 0.35 and name.endswith(".dcm"):
            ops.append(random_element_op(rng))
        elif pick < 0.35 and name.endswith(".png"):
            dims = (1, 2, 16, 60000, 0x7FFFFFFF, 0)
            ops.append(("png_ihdr", rng.choice(dims), rng.choice(dims), rng.choice((1, 8, 16, 3)),
                        rng.choice((0, 2, 3, 4, 6, 7))))  # fmt: skip
        elif pick < 0.35 and name.endswith(".pgm"):
            dims = (0, 1, 8, 10, 60000, 10**12)
            ops.append(("pgm_header", rng.choice((b"P5", b"P2")), rng.choice(dims),
                        rng.choice(dims), rng.choice((0, 1, 255, 256, 65535, 65536, 10**9))))  # fmt: skip
        elif pick < 0.35 and name.endswith(".npy"):
            dims = (0, 1, 5, 12, 60000, 2**40)
            shape = tuple(rng.choice(dims) for _ in range(rng.randint(0, 4)))
            ops.append(("npy_header", rng.choice(NPY_DESCRS), shape, rng.random() < 0.2))
        elif pick < 0.6:
            ops.append(("flip", rng.random(), rng.randrange(8)))
        elif pick < 0.7:
            ops.append(("truncate", rng.random()))
        elif pick < 0.8:
            ops.append(("insert", rng.random(), rng.randbytes(rng.randint(1, 16))))
        elif pick < 0.9:
            ops.append(("overwrite", rng.random(), rng.randbytes(rng.randint(1, 16))))
        else:
            ops.append(("delete", rng.random(), rng.randint(1, 64)))
    return ops


# ---------------------------------------------------------------- one case


class CaseTimeout(BaseException):
    """Raised by the alarm; a BaseException so that no `except Exception` in the reader eats it."""


def _alarm(signum, frame):
    raise CaseTimeout()


def check_image(image) -> str | None:
    """Why a returned image is not valid, or None."""
    pixels = image.pixels
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.float32 or pixels.ndim != 2:
        return f"pixels {type(pixels).__name__} {getattr(pixels, 'dtype', '')} ndim"
    if pixels.size == 0:
        return "empty image"
    if not np.isfinite(pixels).all():
        return "non-finite pixels"
    if pixels.min() < 0.0 or pixels.max() > 1.0:
        return f"pixels outside [0, 1]: {pixels.min()} .. {pixels.max()}"
    return None


def read_case(path: str, voi: str, timeout_s: float = 5.0) -> tuple[str, str]:
    """('ok'|'refused'|'crash'|'hang', detail) for read_frame_count + read_image on one file."""
    from mammodino.errors import MammoReadError
    from mammodino.io.reader import read_frame_count, read_image

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        n = read_frame_count(path)
        if not isinstance(n, int) or n < 1:
            return "crash", f"read_frame_count returned {n!r}"
        image = read_image(path, voi=voi)
        problem = check_image(image)
        return ("crash", "invalid image: " + problem) if problem else ("ok", "")
    except CaseTimeout:
        return "hang", f"over {timeout_s} s"
    except MammoReadError as err:
        return "refused", type(err).__name__
    except Exception as err:  # noqa: BLE001 - the point is to catch what should not happen
        lines = traceback.format_exception(type(err), err, err.__traceback__)
        where = "".join(lines[-3:-1]).strip().splitlines()
        return "crash", f"{type(err).__name__}: {str(err)[:160]} | {' / '.join(where[-2:])}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------- soak


def _worker(conn, folder: str, timeout_s: float) -> None:
    """Read cases sent by the parent: (suffix, bytes, voi) -> outcome."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    path = os.path.join(folder, f"case-{os.getpid()}")
    while True:
        message = conn.recv()
        if message is None:
            return
        suffix, data, voi, scale = message
        with open(path + suffix, "wb") as handle:
            handle.write(data)
        conn.send(read_case(path + suffix, voi, timeout_s * scale))


class Soak:
    """A watched worker process: a case that kills it is a crash, one that stalls it a hang."""

    def __init__(self, folder: str, timeout_s: float) -> None:
        self.folder, self.timeout_s, self.proc = folder, timeout_s, None

    def _start(self) -> None:
        self.conn, child = mp.Pipe()
        self.proc = mp.get_context("fork").Process(
            target=_worker, args=(child, self.folder, self.timeout_s), daemon=True
        )
        self.proc.start()

    def run(self, suffix: str, data: bytes, voi: str, scale: float = 1.0) -> tuple[str, str]:
        """Outcome of one case; `scale` multiplies the time bound (5 MB files decode slowly)."""
        if self.proc is None or not self.proc.is_alive():
            self._start()
        self.conn.send((suffix, data, voi, scale))
        # The in-process alarm fires first; the parent's wait catches hangs inside C code.
        if self.conn.poll(self.timeout_s * scale * 3 + 5):
            try:
                return self.conn.recv()
            except EOFError:
                pass
        else:
            self.proc.kill()
            self.proc.join()
            self.proc = None
            return "hang", "worker stalled (C code)"
        code = self.proc.exitcode
        self.proc = None
        return "crash", f"worker died (exit code {code})"

    def close(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.conn.send(None)
            self.proc.join(5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20000)
    parser.add_argument("--seconds", type=float, default=None, help="stop after this wall time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--case-timeout", type=float, default=5.0)
    parser.add_argument("--large-every", type=int, default=500, help="MG1 (5 MB) seed every N")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    outcomes: Counter = Counter()
    crashes: dict[str, tuple[str, int, str]] = {}
    hangs: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        seeds = write_seeds(Path(tmp) / "seeds", with_large=True)
        small = sorted(n for n in seeds if not n.startswith("mg1/"))
        large = sorted(n for n in seeds if n.startswith("mg1/"))
        raw = {name: path.read_bytes() for name, path in seeds.items()}
        soak = Soak(tmp, args.case_timeout)
        started = time.monotonic()
        done = 0
        try:
            for done in range(1, args.cases + 1):
                use_large = large and args.large_every and done % args.large_every == 0
                name = rng.choice(large if use_large else small)
                ops = random_ops(rng, name)
                data = apply_ops(raw[name], ops)
                voi = rng.choice(VOI)
                kind, detail = soak.run(Path(name).suffix, data, voi, 6.0 if use_large else 1.0)
                outcomes[kind] += 1
                if kind == "crash":
                    key = detail.split(" | ")[0][:120]
                    first = crashes.get(key)
                    crashes[key] = (name, (first[1] if first else 0) + 1, repr(ops)[:300])
                elif kind == "hang":
                    hangs.append(f"{name} {voi} {repr(ops)[:200]}")
                if done % 1000 == 0:
                    rate = done / (time.monotonic() - started)
                    print(f"  {done} cases, {dict(outcomes)}, {rate:.0f} cases/s", flush=True)
                if args.seconds and time.monotonic() - started > args.seconds:
                    break
        finally:
            soak.close()
    seconds = time.monotonic() - started
    print(f"fuzz soak: seed {args.seed}, {len(seeds)} seed files ({len(large)} MG1 5 MB)")
    print(
        f"cases tried: {done} in {seconds:.0f} s ({done / max(seconds, 1e-9):.0f}/s; shared machine)"
    )
    print(f"valid images: {outcomes['ok']}, typed refusals: {outcomes['refused']}")
    print(f"crashes (unexpected exception or invalid image): {outcomes['crash']}")
    for key, (name, count, ops) in sorted(crashes.items(), key=lambda kv: -kv[1][1]):
        print(f"  {count} x {key}\n      first on {name}: {ops}")
    print(f"hangs (> {args.case_timeout} s): {outcomes['hang']}")
    for line in hangs[:10]:
        print(f"  {line}")
    return 1 if outcomes["crash"] or outcomes["hang"] else 0


if __name__ == "__main__":
    sys.exit(main())
