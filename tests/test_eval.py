"""`mammodino eval` end to end on constructed features; features file, join, task coding, probes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from helpers import write_csv
from mammodino.cli import main
from mammodino.errors import EvaluationError
from mammodino.eval.features import Features, load_features, save_features
from mammodino.eval.labels_join import encode_task, join_labels, resolve_patients
from mammodino.eval.probes import KNNProbe, LinearProbe, LogRegProbe


def _meta(ids, sources, **extra):
    return [
        {"id": i, "source": s, "patient_id": "", "laterality": "", "view": "MLO", **extra}
        for i, s in zip(ids, sources, strict=True)
    ]


def test_features_roundtrip_folder_and_npz(tmp_path):
    ids = ["a", "b", "c"]
    cls = np.arange(12, dtype=np.float32).reshape(3, 4)
    grid = np.ones((3, 2, 2, 4), np.float16)
    meta = _meta(ids, ["x/a.png", "x/b.png", "x/c.png"], height=10)
    save_features(tmp_path / "feats", ids, cls, cls * 2, meta, patch_grid=grid)
    f = load_features(tmp_path / "feats")
    assert f.ids.tolist() == ids and f.patch_grid.dtype == np.float16
    assert np.array_equal(f.vectors("cls+patch_mean"), np.concatenate([cls, cls * 2], 1))
    assert f.meta[1] == {
        "id": "b",
        "source": "x/b.png",
        "patient_id": "",
        "laterality": "",
        "view": "MLO",
        "height": "10",
    }
    assert load_features(tmp_path / "feats", with_grid=False).patch_grid is None
    save_features(tmp_path / "f.npz", ids, cls, cls, meta)
    assert (tmp_path / "f.meta.csv").is_file() and load_features(tmp_path / "f.npz").subset(
        np.array([2])
    ).ids.tolist() == ["c"]
    with pytest.raises(EvaluationError, match="line up"):
        save_features(tmp_path / "bad", ids, cls[:2], cls, meta)
    with pytest.raises(EvaluationError, match="embed"):
        load_features(tmp_path / "nothing")


def test_join_by_id_path_suffix_stem_and_breast():
    f = Features(
        ids=np.array(["i1", "i2", "i3"]),
        cls=np.zeros((3, 2)),
        patch_mean=np.zeros((3, 2)),
        meta=_meta(
            ["i1", "i2", "i3"], ["/d/P1_L_CC/1-1.dcm", "/d/P2_R_CC/1-1.dcm", "/d/mini/mdb003.png"]
        ),
    )
    f.meta[0].update(patient_id="P1", laterality="L")
    f.meta[1].update(patient_id="P2")
    rows = [
        {"image": "P1_L_CC/1-1.dcm", "y": "1"},
        {"image": "P2_R_CC/1-1.dcm", "y": "0"},
        {"image": "mdb003.pgm", "y": "0"},
    ]
    joined = join_labels(f, rows, "y")
    assert [r["y"] for r in joined] == ["1", "0", "0"]  # suffix disambiguates, stem matches pgm/png
    assert join_labels(f, [{"id": "i2", "y": "1"}])[1] == {"id": "i2", "y": "1"}
    breast = join_labels(f, [{"patient_id": "P1", "laterality": "LEFT", "y": "1"}])
    assert breast[0]["y"] == "1" and breast[1] is None
    with pytest.raises(EvaluationError, match="disagree"):
        join_labels(f, rows + [{"image": "x/mdb003.pgm", "y": "1"}], "y")
    assert resolve_patients(f, joined)[2] == "mias002"  # mini-MIAS pair from the file name
    # CBIS-DDSM: TCIA renames series folders and files; the case folder names the image.
    cbis = join_labels(f, [{"image": "P2_R_CC/", "y": "1"}, {"image": "P1_L_CC/", "y": "0"}], "y")
    assert [r and r["y"] for r in cbis] == ["0", "1", None]
    # CMMD: one row per breast under the patient folder; the image's laterality picks the row.
    f.meta[0]["source"] = "/d/CMMD/D1-0001/1.3.6/1.3.6.1/1-1.dcm"
    cmmd = [
        {"image": "D1-0001/", "laterality": "R", "y": "0"},
        {"image": "D1-0001/", "laterality": "L", "y": "1"},
    ]
    assert join_labels(f, cmmd, "y")[0]["y"] == "1"
    assert resolve_patients(f, joined)[0] == "P1"
    with pytest.raises(EvaluationError, match="patient"):
        resolve_patients(f, [None, None, None], "hospital")


def test_encode_task_ordinal_binary_and_missing():
    t = encode_task(["D", "F", "G", "", None, "F"], "tissue_FGD")
    assert t.classes == ["F", "G", "D"] and t.ordinal and t.y.tolist() == [2, 0, 1, 0]
    assert t.index.tolist() == [0, 1, 2, 5]
    b = encode_task(["normal", "abnormal", "normal"], "normal_abnormal")
    assert b.classes == ["normal", "abnormal"] and not b.ordinal and b.y.tolist() == [0, 1, 0]
    assert encode_task(["B", "M", "NA"], "benign_malignant").classes == ["B", "M"]
    assert encode_task(["x", "y"], "t", positive="x").classes == ["y", "x"]
    birads = encode_task(["4a", "2", "10", "4c", "0"], "birads")
    assert birads.classes == ["0", "2", "4a", "4c", "10"] and birads.ordinal
    with pytest.raises(EvaluationError, match="distinct"):
        encode_task(["a", "a", ""], "t")


def test_knn_weighted_vote_by_hand():
    x_train = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    y_train = np.array([0, 1, 1])
    proba = KNNProbe(k=2, temperature=0.1).fit_predict(x_train, y_train, np.array([[1.0, 0.0]]), 2)
    s = x_train[2] / np.linalg.norm(x_train[2])
    w0, w1 = (
        np.exp(1.0 / 0.1),
        np.exp(s[0] / 0.1),
    )  # neighbours: train 0 (class 0), train 2 (class 1)
    assert proba[0] == pytest.approx([w0 / (w0 + w1), w1 / (w0 + w1)])


def test_logreg_and_linear_probes_learn_and_pad_missing_classes():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    x = rng.normal(size=(200, 8)) + 2.0 * y[:, None]
    groups = np.arange(200) // 2
    logreg = LogRegProbe()
    proba = logreg.fit_predict(x[:150], y[:150], x[150:], 3, groups[:150])
    assert proba.shape == (50, 3) and np.allclose(proba[:, 2], 0) and np.allclose(proba.sum(1), 1)
    assert (proba.argmax(1) == y[150:]).mean() > 0.9 and logreg.last_C in (
        1e-3,
        1e-2,
        1e-1,
        1.0,
        10.0,
        100.0,
    )
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x[:150])
    ref = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000).fit(
        scaler.transform(x[:150]), y[:150]
    )
    ours = LogRegProbe(C=1.0).fit_predict(x[:150], y[:150], x[150:], 2)
    assert np.allclose(ours, ref.predict_proba(scaler.transform(x[150:])), atol=1e-6)
    lin = LinearProbe(epochs=50).fit_predict(x[:150], y[:150], x[150:], 2, seed=1)
    assert (lin.argmax(1) == y[150:]).mean() > 0.9
    assert np.array_equal(
        lin, LinearProbe(epochs=50).fit_predict(x[:150], y[:150], x[150:], 2, seed=1)
    )


def _mias_like(tmp_path, n_images=80):
    """Features where dim 0 carries density (F<G<D) and dim 1 abnormality; mini-MIAS names."""
    rng = np.random.default_rng(0)
    names = [f"mdb{i:03d}.png" for i in range(1, n_images + 1)]
    density = rng.choice(list("FGD"), n_images)
    abnormal = rng.random(n_images) < 0.4
    x = rng.normal(size=(n_images, 16)).astype(np.float32)
    x[:, 0] += 4.0 * np.array(["FGD".index(d) for d in density])
    x[:, 1] += 3.0 * abnormal
    ids = [f"id{i}" for i in range(n_images)]
    save_features(tmp_path / "feats", ids, x, x, _meta(ids, [f"/data/mias/{n}" for n in names]))
    with (tmp_path / "labels.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "tissue_FGD", "normal_abnormal"])
        for n, d, a in zip(names, density, abnormal, strict=True):
            w.writerow([n, d, "abnormal" if a else "normal"])
    return tmp_path / "feats", tmp_path / "labels.csv"


def test_ordinal_auto_follows_the_values_not_the_column_name():
    # A binary column named after BI-RADS is not ordinal (no kappa); 3+ numeric levels are.
    binary = encode_task(["1", "0", "1", "0"], "birads_suspicious")
    assert not binary.ordinal and binary.classes == ["0", "1"]
    assert encode_task(["2", "1", "3", "1"], "lesion_count").ordinal
    assert encode_task(["A", "C", "B"], "acr").ordinal  # a letter scale
    assert not encode_task(["calc", "mass", "arch"], "density_like_name").ordinal
    assert not encode_task(["1", "2", "3"], "t", ordinal="no").ordinal
    assert encode_task(["x", "y", "z"], "t", ordinal="yes").ordinal


def test_eval_counts_images_with_a_label_for_the_task_and_decides_ordinal(tmp_path):
    feats, labels = _mias_like(tmp_path, n_images=40)
    rows = list(csv.DictReader(labels.open()))
    for r in rows:
        r["birads_suspicious"] = "1" if r["normal_abnormal"] == "abnormal" else "0"
    rows[3]["birads_suspicious"] = ""  # joined, but no label for this task
    write_csv(labels, rows)
    out = tmp_path / "res"
    argv = ["eval", "--features", feats, "--labels", labels, "--task", "birads_suspicious"]
    argv += ["--protocol", "logreg", "--folds", "3", "--bootstrap", "10", "--C", "1"]
    assert main([*map(str, argv), "--output", str(out)]) == 0
    r = json.loads((out / "results.json").read_text())
    assert (r["n_images"], r["n_images_joined"], r["n_images_labelled"]) == (40, 40, 39)
    assert sum(r["class_counts"]) == 39
    assert not r["ordinal"] and "kappa_quadratic" not in r["protocols"]["logreg"]["1"]["pooled"]
    assert r["settings"]["ordinal"] == "auto"


def test_eval_cli_end_to_end(tmp_path, capsys):
    feats, labels = _mias_like(tmp_path)
    out = tmp_path / "res"
    argv = [
        "eval",
        "--features",
        str(feats),
        "--labels",
        str(labels),
        "--task",
        "tissue_FGD",
        "--protocol",
        "knn",
        "logreg",
        "linear",
        "--label-fractions",
        "0.25",
        "1",
        "--bootstrap",
        "100",
        "--epochs",
        "30",
        "--C",
        "1",
        "--output",
        str(out),
    ]
    assert main(argv) == 0
    assert "tissue_FGD" in capsys.readouterr().out
    r = json.loads((out / "results.json").read_text())
    assert r["classes"] == ["F", "G", "D"] and r["ordinal"] and r["n_patients"] == 40
    assert set(r["protocols"]) == {"knn", "logreg", "linear"}
    full = r["protocols"]["logreg"]["1"]
    assert len(full["per_fold"]) == 5 and sum(f["n_test"] for f in full["per_fold"]) == 80
    pooled = full["pooled"]
    assert pooled["balanced_accuracy"]["value"] > 0.7 and "kappa_quadratic" in pooled
    low, high = pooled["kappa_quadratic"]["ci95"]
    assert low <= pooled["kappa_quadratic"]["value"] <= high
    assert np.sum(pooled["confusion_matrix"]) == 80
    quarter = r["protocols"]["logreg"]["0.25"]["per_fold"]
    assert all(
        q["n_train_patients"] < f["n_train_patients"]
        for q, f in zip(quarter, full["per_fold"], strict=True)
    )
    with (out / "predictions.csv").open() as fh:
        preds = list(csv.DictReader(fh))
    assert len(preds) == 80 * 3 * 2
    # Left/right pairs of mini-MIAS never sit in two folds.
    folds = {}
    for p in preds:
        assert folds.setdefault(p["patient"], p["fold"]) == p["fold"]
    binary = tmp_path / "res2"
    assert (
        main(
            [
                "eval",
                "--features",
                str(feats),
                "--labels",
                str(labels),
                "--task",
                "normal_abnormal",
                "--protocol",
                "knn",
                "--bootstrap",
                "100",
                "--output",
                str(binary),
            ]
        )
        == 0
    )
    b = json.loads((binary / "results.json").read_text())["protocols"]["knn"]["1"]["pooled"]
    assert b["auroc"]["value"] > 0.8 and "kappa_quadratic" not in b
    assert (
        main(
            [
                "eval",
                "--features",
                str(feats),
                "--labels",
                str(labels),
                "--task",
                "nope",
                "--output",
                str(binary),
            ]
        )
        == 1
    )


@pytest.mark.realdata
def test_real_mini_mias_labels_join_and_pairs(mini_mias_dir):
    from mammodino.eval.labels_join import read_labels_csv
    from mammodino.eval.splits import patient_folds

    names = [f"mdb{i:03d}.png" for i in range(1, 323)]
    f = Features(
        ids=np.asarray([f"id{i}" for i in range(322)]),
        cls=np.zeros((322, 2)),
        patch_mean=np.zeros((322, 2)),
        meta=_meta([f"id{i}" for i in range(322)], names),
    )
    joined = join_labels(f, read_labels_csv(mini_mias_dir / "labels_per_image.csv"), "tissue_FGD")
    assert all(r is not None for r in joined)
    patients = np.asarray(resolve_patients(f, joined))
    task = encode_task([r["tissue_FGD"] for r in joined], "tissue_FGD")
    assert len(set(patients)) == 161 and np.bincount(task.y).tolist() == [106, 104, 112]
    fold = patient_folds(patients, task.y, 5, seed=0)
    for k in range(5):
        assert not set(patients[fold == k]) & set(patients[fold != k])


def test_auto_representation_is_dinov2s_protocol(tmp_path):
    """auto: kNN reads CLS, logreg reads CLS + mean patch token; one-vector files read CLS."""
    from mammodino.eval.features import probe_representation

    feats, labels = _mias_like(tmp_path, n_images=80)
    f = load_features(feats)
    assert f.single_vector  # _mias_like writes patch_mean = cls, as hand-crafted files do
    assert probe_representation("auto", "logreg", f) == "cls"
    # Density only in the mean patch token: the CLS-only kNN is at chance (1/3), logreg finds it
    # (0.58 measured; 0.23 on CLS alone).
    noise = np.random.default_rng(1).normal(size=f.cls.shape).astype(np.float32)
    save_features(tmp_path / "two", f.ids.tolist(), noise, f.cls, f.meta)
    two = load_features(tmp_path / "two")
    assert not two.single_vector
    assert [probe_representation("auto", p, two) for p in ("knn", "logreg", "linear")] == [
        "cls",
        "cls+patch_mean",
        "cls+patch_mean",
    ]
    assert probe_representation("patch_mean", "knn", two) == "patch_mean"
    out = tmp_path / "res"
    argv = ["eval", "--features", tmp_path / "two", "--labels", labels, "--task", "tissue_FGD"]
    argv += ["--protocol", "knn", "logreg", "--C", "1", "--bootstrap", "0", "--output", out]
    assert main([str(a) for a in argv]) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["settings"]["representation"] == "auto"
    assert r["representations"] == {"knn": "cls", "logreg": "cls+patch_mean"}
    bal = {
        p: r["protocols"][p]["1"]["pooled"]["balanced_accuracy"]["value"] for p in ("knn", "logreg")
    }
    assert bal["logreg"] > 0.5 and bal["knn"] < 0.42, bal


def test_relative_spread_by_hand():
    from mammodino.eval.features import relative_spread

    # Rows (1, 0) and (3, 0): mean (2, 0), each row 1 away from it -> 1 / 2.
    assert relative_spread(np.array([[1.0, 0.0], [3.0, 0.0]])) == pytest.approx(0.5)
    assert relative_spread(np.ones((4, 3))) == 0.0
    assert relative_spread(np.array([[1.0, 0.0], [-1.0, 0.0]])) == float("inf")


def test_eval_warns_when_knn_features_are_nearly_identical(tmp_path, capsys):
    """A random-init ViT's CLS tokens differ by ~2e-5 of their size: kNN's neighbours are then
    rounding noise. eval says so (stdout and results.json); real features stay silent."""
    feats, labels = _mias_like(tmp_path, n_images=40)
    f = load_features(feats)
    near = 1.0 + 1e-5 * f.cls  # every row ~ (1, ..., 1), density still in dim 0 at 1e-5
    save_features(tmp_path / "near", f.ids.tolist(), near, near, f.meta)
    argv = ["eval", "--labels", labels, "--task", "tissue_FGD", "--protocol", "knn", "logreg"]
    argv += ["--C", "1", "--bootstrap", "0", "--folds", "3"]
    for name in ("near", "feats"):
        out = tmp_path / f"res-{name}"
        assert main([str(a) for a in [*argv, "--features", tmp_path / name, "--output", out]]) == 0
        r = json.loads((out / "results.json").read_text())
        printed = capsys.readouterr().out
        if name == "near":
            assert r["knn_relative_spread"] < 1e-3
            assert len(r["warnings"]) == 1 and "nearly identical" in r["warnings"][0]
            assert "warning: kNN" in printed and "read logreg" in printed
        else:
            assert r["knn_relative_spread"] > 0.1 and "warnings" not in r
            assert "warning" not in printed
    # logreg alone has no kNN ranking to warn about.
    out = tmp_path / "res-logreg"
    solo = [a for a in argv if a != "knn"]
    assert main([str(a) for a in [*solo, "--features", tmp_path / "near", "--output", out]]) == 0
    r = json.loads((out / "results.json").read_text())
    assert "knn_relative_spread" not in r and "warnings" not in r
