"""Intensity levels (`prepare.intensity`): one range for every vendor's bit range."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers import settings_of, synthetic_breast, write_dicom
from mammodino.cli import main
from mammodino.errors import ConfigError
from mammodino.preprocess.cache import read_manifest
from mammodino.preprocess.intensity import (
    IntensityLevels,
    breast_levels,
    dataset_levels,
    tissue_spread,
)
from mammodino.preprocess.prepare import SETTINGS_FILE


def _breast_on_background(background: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """A 100 x 100 image: the left 60 columns breast, values 0.30-0.70; the rest background."""
    image = np.full((100, 100), background, np.float32)
    mask = np.zeros((100, 100), bool)
    mask[:, :60] = True
    image[:, :60] = np.linspace(0.3, 0.7, 6000, dtype=np.float32).reshape(100, 60)
    return image, mask


def test_levels_are_the_background_median_and_the_breast_top_percentile():
    image, mask = _breast_on_background()
    image[5:10, 80:90] = 0.95  # a burned-in label: outside the breast, too small to move the median
    levels = breast_levels(image, mask)
    assert levels.low == pytest.approx(0.2)
    assert levels.high == pytest.approx(np.percentile(np.linspace(0.3, 0.7, 6000), 99.9), abs=1e-6)
    stretched = levels.apply(image)
    assert np.median(stretched[~mask]) == pytest.approx(0.0)
    assert np.percentile(stretched[mask], 99.9) == pytest.approx(1.0, abs=1e-6)
    # Between them the stretch is linear: the breast's mean lands where (mean - low) / span puts it.
    assert stretched[mask].mean() == pytest.approx((0.5 - 0.2) / (levels.high - 0.2), abs=1e-5)


def test_an_affine_change_of_the_bit_range_gives_the_same_stretched_image():
    image, mask = _breast_on_background()
    for gain, offset in ((0.095, 0.505), (0.25, 0.0), (1.0, 0.0)):  # GE band, 12 of 14 bits, as is
        other = (image * gain + offset).astype(np.float32)
        a = breast_levels(image, mask).apply(image)
        b = breast_levels(other, mask).apply(other)
        np.testing.assert_allclose(a, b, atol=2e-5)


def test_without_background_the_breast_darkest_percentile_is_the_low_level():
    image, mask = _breast_on_background()
    tight, tight_mask = image[:, :58], mask[:, :58]  # 0 background pixels of 5800
    levels = breast_levels(tight, tight_mask)
    assert levels.low == pytest.approx(np.percentile(tight[tight_mask], 0.1), abs=1e-6)
    assert levels.low > 0.3 - 1e-6


def test_flat_images_and_empty_masks_have_no_levels():
    flat = np.full((50, 50), 0.4, np.float32)
    assert breast_levels(flat, np.ones((50, 50), bool)) is None
    image, _ = _breast_on_background()
    assert breast_levels(image, np.zeros((100, 100), bool)) is None
    assert IntensityLevels().apply(image) is image


def test_dataset_levels_count_a_full_range_image_and_skip_what_was_not_measured():
    # A windowed image reads 0 and 1: a measurement like any other, not "nothing measured".
    readings = {"a": IntensityLevels(0.0, 1.0), "b": IntensityLevels(0.0, 1.0), "c": None}
    readings["d"] = IntensityLevels(0.02, 0.8)
    levels = dataset_levels(sorted(readings), readings.get)
    assert levels == IntensityLevels(0.0, 1.0)  # median of the lows, highest of the highs
    assert dataset_levels(["c"], readings.get) is None


def _prepare(src: Path, out: Path, *extra: str) -> int:
    return main(["prepare", str(src), str(out), "--workers", "1", "--no-progress", *extra])


def _cached(out: Path) -> dict[str, np.ndarray]:
    images = sorted((out / "images").glob("*.png"))
    return {
        p.name: cv2.imread(str(p), cv2.IMREAD_UNCHANGED).astype(np.float64) / 65535 for p in images
    }


def _write_pair(folder: Path, gain: int) -> None:
    """Two breasts as 12-bit values in 16-bit PNGs, the second a third darker; times `gain`."""
    folder.mkdir()
    bright = synthetic_breast(bits=12, label=False, seed=4)
    dark = np.rint(synthetic_breast(bits=12, label=False, seed=6) * (2 / 3)).astype(np.uint16)
    for name, image in (("a_bright.png", bright), ("b_dark.png", dark)):
        cv2.imwrite(str(folder / name), image * np.uint16(gain))


def test_prepare_gives_one_cache_whatever_the_bit_range_of_the_source(tmp_path):
    # The same two breasts stored in a sixteenth of the 16-bit range and in all of it.
    _write_pair(tmp_path / "twelve", 1)
    _write_pair(tmp_path / "sixteen", 16)
    # ... and in a GE-like band, background included: 0.505 + 0.095 x of the 16-bit range.
    (tmp_path / "band").mkdir()
    for png in sorted((tmp_path / "twelve").glob("*.png")):
        x = cv2.imread(str(png), cv2.IMREAD_UNCHANGED) / 4095
        cv2.imwrite(
            str(tmp_path / "band" / png.name),
            np.rint((0.505 + 0.095 * x) * 65535).astype(np.uint16),
        )
    assert _prepare(tmp_path / "band", tmp_path / "band-cache") == 0
    band_as_read = tmp_path / "band-raw"
    assert _prepare(tmp_path / "band", band_as_read, "--intensity", "none") == 0
    for name in ("twelve", "sixteen"):
        assert _prepare(tmp_path / name, tmp_path / f"{name}-cache") == 0
        assert _prepare(tmp_path / name, tmp_path / f"{name}-raw", "--intensity", "none") == 0
    twelve, sixteen = _cached(tmp_path / "twelve-cache"), _cached(tmp_path / "sixteen-cache")
    band, band_raw = _cached(tmp_path / "band-cache"), _cached(band_as_read)
    for name in twelve:
        np.testing.assert_allclose(twelve[name], sixteen[name], atol=2e-4)
        np.testing.assert_allclose(band[name], sixteen[name], atol=1e-3)
        assert np.abs(band_raw[name] - sixteen[name]).max() > 0.3  # as read: far from it
    assert max(a.max() for a in twelve.values()) == pytest.approx(1.0)  # the full range in use
    raw = _cached(tmp_path / "twelve-raw")
    assert max(a.max() for a in raw.values()) < 1 / 16  # as read: 12 bits fill a sixteenth
    # The manifest says which source values became 0 and 1 (reader units, [0, 1]).
    rows = {r["source"]: r for r in read_manifest(tmp_path / "twelve-cache")}
    wide = {r["source"]: r for r in read_manifest(tmp_path / "sixteen-cache")}
    high = float(rows["a_bright.png"]["intensity_high"])
    assert 0 < high < 1 / 16 and high * 16 == pytest.approx(
        float(wide["a_bright.png"]["intensity_high"]), rel=1e-3
    )
    assert rows["a_bright.png"]["intensity_high"] == rows["b_dark.png"]["intensity_high"]
    for row in read_manifest(tmp_path / "twelve-raw"):
        assert (float(row["intensity_low"]), float(row["intensity_high"])) == (0.0, 1.0)


def _breast_means(out: Path) -> dict[str, float]:
    means = {}
    for row in read_manifest(out):
        image = cv2.imread(str(out / row["image"]), cv2.IMREAD_UNCHANGED) / 65535
        means[row["source"]] = float(image[cv2.imread(str(out / row["mask"]), 0) > 0].mean())
    return means


def test_dataset_keeps_one_image_darker_than_another_and_image_evens_them(tmp_path):
    _write_pair(tmp_path / "src", 1)
    for mode in ("dataset", "image", "none"):
        assert _prepare(tmp_path / "src", tmp_path / mode, "--intensity", mode) == 0
    ratio = {}
    for mode in ("dataset", "image", "none"):
        means = _breast_means(tmp_path / mode)
        ratio[mode] = means["b_dark.png"] / means["a_bright.png"]
    # One stretch for both (the background is 0): the darker breast stays two thirds as bright.
    assert ratio["dataset"] == pytest.approx(ratio["none"], abs=0.01)
    assert ratio["none"] == pytest.approx(2 / 3, abs=0.03)
    assert ratio["image"] > 0.9  # each to its own top: the difference is gone


def test_a_resume_keeps_the_dataset_levels_even_with_sources_added(tmp_path, capsys):
    _write_pair(tmp_path / "src", 1)
    out = tmp_path / "out"
    assert _prepare(tmp_path / "src", out) == 0
    levels = json.loads((out / SETTINGS_FILE).read_text())["levels"]
    before = _cached(out)
    # A much brighter image joins: a fresh sample would move the levels; the resume must not.
    cv2.imwrite(str(tmp_path / "src" / "c_new.png"), synthetic_breast(bits=16, label=False, seed=7))
    assert _prepare(tmp_path / "src", out) == 0
    err = capsys.readouterr().err
    assert "2 already prepared" in err
    assert f"intensity: source values {levels[0]:.4g}-{levels[1]:.4g} -> 0-1" in err
    assert json.loads((out / SETTINGS_FILE).read_text())["levels"] == levels
    after = _cached(out)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    new = {r["source"]: r for r in read_manifest(out)}["c_new.png"]
    assert float(new["intensity_high"]) == pytest.approx(levels[1], rel=1e-5)


def test_a_dicom_window_of_a_few_levels_is_stretched_too(tmp_path):
    # A Hologic-like 14-bit MONOCHROME2 image whose breast uses values 40-360 of 16383.
    breast = synthetic_breast(bits=12, label=False, seed=5).astype(np.float64) / 4095
    pixels = np.rint(breast * 360).astype(np.uint16)
    src = tmp_path / "src"
    src.mkdir()
    write_dicom(src / "h.dcm", pixels, bits_stored=14)
    assert _prepare(src, tmp_path / "cache") == 0
    (image,) = _cached(tmp_path / "cache").values()
    mask = cv2.imread(str(next((tmp_path / "cache" / "masks").glob("*.png"))), 0) > 0
    assert image[mask].mean() > 0.5 and image[mask].max() == pytest.approx(1.0)


def test_intensity_is_a_prepare_setting_that_a_resume_must_match(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    cv2.imwrite(str(src / "b.png"), synthetic_breast(seed=1))
    assert _prepare(src, out) == 0
    assert json.loads((out / SETTINGS_FILE).read_text())["intensity"] == "dataset"
    assert _prepare(src, out, "--intensity", "none") == 1
    assert "(intensity, levels); use a new OUT or --intensity dataset" in capsys.readouterr().err
    # A cache from before the setting stored its images as read: it resumes only as none.
    record = json.loads((out / SETTINGS_FILE).read_text())
    del record["intensity"], record["levels"]
    (out / SETTINGS_FILE).write_text(json.dumps(record))
    assert _prepare(src, out) == 1
    assert "(intensity); use a new OUT or --intensity none" in capsys.readouterr().err
    assert _prepare(src, out, "--intensity", "none") == 0


def test_an_unknown_intensity_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="prepare.intensity"):
        settings_of("prepare.intensity=percentile")


def _band_dicom(path: Path) -> None:
    """A breast whose tissue lies in a GE-like display window (2262 / 380 of 12 bits), on black."""
    breast = synthetic_breast(bits=12, label=False, seed=8).astype(np.float64) / 4095
    inside = breast > 0.2
    raw = np.where(inside, 2072 + 380 * np.clip((breast - 0.45) / 0.25, 0, 1), 0)
    extra = {"WindowCenter": 2262, "WindowWidth": 380}
    write_dicom(path, np.rint(raw).astype(np.uint16), extra=extra)


def test_a_narrow_band_over_black_is_named_and_the_window_widens_it(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    _band_dicom(src / "band.dcm")
    assert _prepare(src, tmp_path / "default") == 0
    err = capsys.readouterr().err
    # Stretched from black to its top, the band still fills only the top sixth of [0, 1].
    assert "warning: the breasts span" in err and "--voi window" in err
    assert _prepare(src, tmp_path / "window", "--voi", "window") == 0
    assert "warning" not in capsys.readouterr().err
    (image,) = _cached(tmp_path / "window").values()
    mask = cv2.imread(str(next((tmp_path / "window" / "masks").glob("*.png"))), 0) > 0
    low, high = np.percentile(image[mask], (1, 99))
    assert high - low > 0.5
    # mini-MIAS-like film spans most of the range: no warning.
    film = tmp_path / "film"
    film.mkdir()
    cv2.imwrite(
        str(film / "f.png"), (synthetic_breast(bits=16, label=False, seed=9) >> 8).astype(np.uint8)
    )
    assert _prepare(film, tmp_path / "film-cache") == 0
    assert "warning" not in capsys.readouterr().err


def test_tissue_spread_is_the_median_width_of_the_breast_interior():
    image, mask = _breast_on_background(background=0.0)  # breast columns 0-59: 0.30-0.70
    ring = mask.copy()
    ring[:, 60:63] = True  # a mask 3 columns too wide: black pixels at its edge
    wide = np.where(np.arange(100) < 60, 0.8, 0.0)[None, :].repeat(100, 0).astype(np.float32)
    spread = tissue_spread([(image, ring), (image * 0.5, ring), (wide, mask)])
    # Eroded by 3 pixels, the wide mask is the breast again (the image border erodes nothing).
    width = np.percentile(image[:, :60], 99) - np.percentile(image[:, :60], 1)
    assert spread == pytest.approx(width / 2, rel=1e-4)  # the median of (width, width / 2, 0)
    assert tissue_spread([]) is None


def test_a_file_without_a_breast_does_not_set_the_levels(tmp_path, capsys):
    _write_pair(tmp_path / "src", 1)
    assert _prepare(tmp_path / "src", tmp_path / "alone") == 0
    alone = json.loads((tmp_path / "alone" / SETTINGS_FILE).read_text())["levels"]
    # A test shot: black but for a full-scale marker on 0.4% of it (prepare skips it: no breast).
    shot = np.full((256, 192), 40, np.uint16)
    shot[10:20, 10:30] = 65535
    cv2.imwrite(str(tmp_path / "src" / "c_shot.png"), shot)
    capsys.readouterr()
    assert _prepare(tmp_path / "src", tmp_path / "with-shot") == 0
    assert "2 prepared, 1 skipped" in capsys.readouterr().out
    assert json.loads((tmp_path / "with-shot" / SETTINGS_FILE).read_text())["levels"] == alone


def test_no_measurable_file_keeps_the_values_and_says_so(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "random.dcm").write_bytes(
        np.random.default_rng(0).integers(0, 256, 3000, np.uint8).tobytes()
    )
    assert _prepare(src, tmp_path / "out") == 0
    captured = capsys.readouterr()
    assert "0 prepared, 1 skipped" in captured.out
    assert "no sampled file could be measured for intensity levels" in captured.err
    assert json.loads((tmp_path / "out" / SETTINGS_FILE).read_text())["levels"] is None
