"""Phantom realism and labels: texture spectrum, lesion depth in DBT, density classes, CSVs."""

from __future__ import annotations

import csv
import dataclasses
import json

import cv2
import numpy as np
import pytest

from mammodino.synth.analysis import (
    breast_histogram,
    interior_rois,
    lesion_contrast_by_slice,
    power_law_beta,
    radial_power_spectrum,
)
from mammodino.synth.dataset import (
    LABEL_COLUMNS,
    LESION_COLUMNS,
    Item,
    SynthSettings,
    build_case,
    generate,
    simulate,
)
from mammodino.synth.dbt import simulate_dbt
from mammodino.synth.geometry import BreastGeometry, edge_distance_mm
from mammodino.synth.lesions import LESION_TYPES
from mammodino.synth.noise import power_law_noise
from mammodino.synth.phantom import GLAND_FRACTION

SMALL = {"ffdm_shape": (256, 200), "dbt_shape": (12, 128, 100)}


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_power_law_noise_has_the_requested_slope():
    field = power_law_noise((256, 256), (0.5, 0.5), 3.0, np.random.default_rng(0))
    freqs, power = radial_power_spectrum([field], 0.5)
    assert abs(power_law_beta(freqs, power, (0.05, 0.5)) - 3.0) < 0.3
    assert abs(float(field.mean())) < 1e-5 and abs(float(field.std()) - 1.0) < 1e-4


def test_ffdm_texture_power_spectrum_slope_is_about_three():
    """Acceptance 3: power ~ 1/f^beta over 0.1-1 cycles/mm of the breast interior, beta in [2.5, 3.5]."""
    settings = SynthSettings(12, 0, seed=3, ffdm_shape=(512, 400), lesion_fraction=0.0)
    spectra = []
    for index in range(0, 12, 4):  # CC views: no pectoral muscle in the interior windows
        _, sim = simulate(Item("FFDM", index), settings)
        size = int(round(25.6 / sim.spacing_mm))
        rois = interior_rois(
            sim.pixels, sim.pixels > 0.05 * 4095, size, int(round(20 / sim.spacing_mm))
        )
        assert rois, "no interior window found"
        freqs, power = radial_power_spectrum(rois, sim.spacing_mm)
        spectra.append(power)
    beta = power_law_beta(freqs, np.mean(spectra, axis=0), (0.1, 1.0))
    assert 2.5 <= beta <= 3.5, beta


def test_dbt_lesion_contrast_peaks_at_its_true_depth():
    """Acceptance 2: the reconstructed lesion's contrast peaks within +-1 slice of its centre.

    The lesion's own signal is isolated as (volume with lesion) - (same volume without it), both
    from the same random numbers, so tissue that happens to be in focus elsewhere cannot win.
    """
    shape = (32, 192, 150)
    settings = SynthSettings(0, 12, seed=7, dbt_shape=shape, lesion_fraction=1.0)
    kinds, errors = set(), []
    for index in (0, 3, 8, 9, 10, 11):  # spiculated, circumscribed and calcification lesions
        case, rng = build_case(Item("DBT", index), settings)
        state = rng.bit_generator.state
        with_lesion = simulate_dbt(case, shape, rng)
        rng.bit_generator.state = state
        without = simulate_dbt(dataclasses.replace(case, lesion=None), shape, rng)
        box = with_lesion.lesions[0]
        signal = with_lesion.pixels.astype(np.float32) - without.pixels.astype(np.float32)
        contrast = lesion_contrast_by_slice(signal, (box.x0, box.y0, box.x1, box.y1))
        errors.append(int(np.argmax(contrast)) - box.centre_slice)
        assert box.slice_start <= box.centre_slice < box.slice_end
        kinds.add(box.kind)
    assert kinds == set(LESION_TYPES)
    assert all(abs(e) <= 1 for e in errors), errors


def test_density_classes_follow_glandular_fraction_and_brightness():
    from scipy.stats import spearmanr

    settings = SynthSettings(24, 0, seed=5, **SMALL)
    fractions, brightness = [], []
    for index in range(24):
        case, sim = simulate(Item("FFDM", index), settings)
        low, high = GLAND_FRACTION[case.traits.density]
        assert low * 0.9 <= case.traits.gland_fraction <= high * 1.1
        hist = breast_histogram(sim.pixels, 12)
        assert hist.shape == (16,) and abs(hist.sum() - 1) < 1e-9
        fractions.append(case.traits.gland_fraction)
        brightness.append(float(np.dot(hist, np.arange(16))))
    # Denser breasts are brighter, though exposure, the periphery and the muscle blur it (measured
    # rho 0.87; 0.62 before thickness equalisation, when thick breasts looked dense).
    assert spearmanr(fractions, brightness).statistic > 0.7


def test_ffdm_brightness_does_not_follow_compressed_thickness():
    # Thickness equalisation: the same breast compressed to 40 or 60 mm shows its interior at the
    # same grey level (measured ratios 0.97-1.03); a map linear in mu*t would give about 1.5.
    from mammodino.synth.ffdm import simulate_ffdm

    settings = SynthSettings(4, 0, seed=3, **SMALL)
    for index in range(4):
        levels = []
        for thickness in (40.0, 60.0):
            case, rng = build_case(Item("FFDM", index), settings)
            geometry = dataclasses.replace(case.geometry, thickness_mm=thickness)
            case = dataclasses.replace(case, geometry=geometry, lesion=None)
            pixels = simulate_ffdm(case, SMALL["ffdm_shape"], rng).pixels.astype(np.float64)
            chest_wall = slice(0, 60) if case.laterality == "L" else slice(140, 200)
            levels.append(float(np.median(pixels[96:160, chest_wall])))
        assert 0.9 < levels[1] / levels[0] < 1.1, (index, levels)


def test_same_seed_same_pixels_other_seed_other_pixels():
    a = simulate(Item("DBT", 1), SynthSettings(0, 2, seed=1, **SMALL))[1]
    b = simulate(Item("DBT", 1), SynthSettings(0, 2, seed=1, **SMALL))[1]
    c = simulate(Item("DBT", 1), SynthSettings(0, 2, seed=2, **SMALL))[1]
    assert a.pixels.tobytes() == b.pixels.tobytes()
    assert a.pixels.tobytes() != c.pixels.tobytes()


def test_right_breasts_are_mirrored_with_their_boxes():
    settings = SynthSettings(4, 0, seed=4, lesion_fraction=1.0, **SMALL)
    case, sim = simulate(Item("FFDM", 2), settings)  # R CC
    assert case.laterality == "R"
    width = sim.pixels.shape[1]
    tissue_cols = np.flatnonzero((sim.pixels > 400).any(axis=0))
    assert tissue_cols[-1] == width - 1  # chest wall on the right
    box = sim.lesions[0]
    assert 0 <= box.x0 < box.x1 <= width and box.x0 <= box.centre_x <= box.x1


def test_generate_writes_labels_and_lesions_csv(tmp_path):
    settings = SynthSettings(8, 2, seed=0, lesion_fraction=0.75, **SMALL)
    generate(tmp_path, settings, workers=1)
    labels = _read_csv(tmp_path / "labels.csv")
    lesions = _read_csv(tmp_path / "lesions.csv")
    assert tuple(labels[0]) == LABEL_COLUMNS and (
        not lesions or tuple(lesions[0]) == LESION_COLUMNS
    )
    assert [r["modality"] for r in labels] == ["FFDM"] * 8 + ["DBT"] * 2
    assert len({r["patient_id"] for r in labels}) == 3 and all(
        len(r["patient_id"]) == 16 for r in labels
    )
    by_file = {r["file"]: r for r in labels}
    for r in labels:
        assert (tmp_path / r["file"]).is_file()
        assert r["lesion_present"] == str(int(r["lesion_type"] != "none"))
        assert len(json.loads(r["lesions"])) == int(r["n_lesions"])
        if r["lesion_type"] == "spiculated_mass":
            assert r["malignant"] == "1"
        if r["lesion_type"] == "circumscribed_mass":
            assert r["malignant"] == "0"
    assert sum(int(r["n_lesions"]) for r in labels) == len(lesions) > 0
    for row in lesions:
        label = by_file[row["file"]]
        x0, y0, x1, y1 = (int(row[k]) for k in ("x0", "y0", "x1", "y1"))
        assert 0 <= x0 < x1 <= int(label["cols"]) and 0 <= y0 < y1 <= int(label["rows"])
        if label["modality"] == "DBT":
            start, end, centre = (int(row[k]) for k in ("slice_start", "slice_end", "centre_slice"))
            assert 0 <= start <= centre < end <= int(label["frames"])
        else:
            assert row["slice_start"] == row["centre_slice"] == ""


@pytest.mark.multiproc
def test_pixels_do_not_depend_on_the_number_of_workers(tmp_path):
    settings = SynthSettings(3, 1, seed=9, **SMALL)
    generate(tmp_path / "one", settings, workers=1)
    generate(tmp_path / "two", settings, workers=2)
    for name in ("labels.csv", "lesions.csv"):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text()
    for row in _read_csv(tmp_path / "one" / "labels.csv"):
        assert (tmp_path / "one" / row["file"]).read_bytes() == (
            tmp_path / "two" / row["file"]
        ).read_bytes()


def test_cli_synth_with_preview(tmp_path):
    from mammodino.cli import main

    out = tmp_path / "out"
    argv = [
        "synth",
        str(out),
        "--ffdm",
        "4",
        "--dbt",
        "1",
        "--seed",
        "3",
        "--preview",
        "--workers",
        "1",
    ]
    argv += ["--ffdm-shape", "128", "100", "--dbt-shape", "8", "96", "80", "--lesion-fraction", "1"]
    assert main(argv) == 0
    import cv2

    sheet = cv2.imread(str(out / "preview.png"))
    assert sheet is not None and sheet.shape[0] >= 2 * 256
    assert main(["synth", str(out), "--ffdm", "0", "--dbt", "0"]) == 1


def test_edge_distance_is_the_exact_distance_to_the_skin_line():
    # A breast filling the left 12 columns of every row: the chest wall (left) and the rows
    # (replicated at top and bottom) are body, so only the skin line at column 12 is an edge.
    mask = np.zeros((20, 30), dtype=bool)
    mask[:, :12] = True
    geom = BreastGeometry("CC", (10.0, 15.0), 6.0, 5.0, 5.0, 2.0, 0.5, ())
    dist = edge_distance_mm(mask, 0.5, geom)
    expected = np.where(mask, (12 - np.arange(30)) * 0.5, 0.0)
    np.testing.assert_array_equal(dist, expected.astype(np.float32))
    # A diagonal edge: sqrt(2) steps, to the float32 bit, call after call.
    diagonal = np.add.outer(np.arange(40), np.arange(40)) < 40
    first = edge_distance_mm(diagonal, 1.0, geom)
    assert all(np.array_equal(first, edge_distance_mm(diagonal, 1.0, geom)) for _ in range(5))
    assert first[0, 0] == pytest.approx(40 / np.sqrt(2), abs=1.0)


def test_edge_distance_does_not_depend_on_opencvs_threads():
    # OpenCV's precise transform rounds differently with its thread count (one bit, which made
    # phantoms differ between machines and runs); a phantom must not depend on the machine.
    mask = np.zeros((300, 260), dtype=np.uint8)
    cv2.ellipse(mask, (0, 150), (200, 140), 0, -90, 90, 1, -1)
    geom = BreastGeometry("CC", (150.0, 130.0), 100.0, 70.0, 75.0, 4.0, 0.5, ())
    threads = cv2.getNumThreads()
    try:
        results = []
        for n in (1, 2, 3):
            cv2.setNumThreads(n)
            results.append(edge_distance_mm(mask.astype(bool), 0.5, geom))
    finally:
        cv2.setNumThreads(threads)
    assert all(np.array_equal(results[0], r) for r in results[1:])
