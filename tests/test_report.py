"""`mammodino report`: ROC points, comparison tables, attention/PCA maths, figures, and the whole
HTML report of a 2-step tiny pretraining with real embed + eval outputs (issue 6)."""

from __future__ import annotations

import base64
import json
import re

import cv2
import numpy as np
import pytest
import torch

from helpers import TINY_TRAIN, density_breast, write_cache
from mammodino.config import load_config
from mammodino.eval.backbone import Backbone
from mammodino.models.vit import build_vit
from mammodino.report import figures
from mammodino.report.results import (
    EvalResult,
    by_task,
    comparison_rows,
    find_results,
    localization_rows,
    oof_roc,
    roc_points,
)

PNG = b"\x89PNG\r\n\x1a\n"
TINY = [
    *TINY_TRAIN,
    "masking.probability=1.0",
    "data.batch_size=3",
    "optim.epochs=2",
    "optim.steps_per_epoch=2",
    "optim.warmup_epochs=1",
    "train.precision=fp32",
]


def result(backbone: str, auroc: float, ci: tuple[float, float]) -> dict:
    pooled = {
        "auroc": {"value": auroc, "ci95": list(ci)},
        "balanced_accuracy": {"value": 0.5, "ci95": [0.4, 0.6]},
        "confusion_matrix": [[3, 1], [2, 4]],
    }
    return {
        "features": f"/x/{backbone}",
        "task": "lesion",
        "classes": ["0", "1"],
        "protocols": {"knn": {"1": {"pooled": pooled}}},
    }


def test_roc_points_match_sklearn_with_ties():
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    score = np.round(rng.random(60) + 0.4 * y, 1)  # rounding makes ties
    fpr, tpr = roc_points(y, score)
    ref_fpr, ref_tpr, _ = roc_curve(y, score, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)


def test_comparison_rows_put_backbones_side_by_side_and_mark_the_best(tmp_path):
    for name, auc in (("random-init", 0.6), ("mammodino", 0.8), ("other", 0.8)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(result(name, auc, (0.5, 0.9))))
    (view,) = by_task(find_results([tmp_path]))
    backbones, rows = comparison_rows(view)
    assert backbones == ["mammodino", "random-init", "other"]  # ours first, then baselines
    auroc = next(r for r in rows if r["metric"] == "AUROC")
    assert auroc["cells"]["mammodino"] == "0.800 [0.500, 0.900]"
    assert sorted(auroc["best"]) == ["mammodino", "other"]
    assert {r["metric"] for r in rows} == {"AUROC", "balanced accuracy"}


def test_oof_roc_reads_the_positive_class_from_predictions(tmp_path):
    with (tmp_path / "predictions.csv").open("w") as fh:
        fh.write("id,protocol,fraction,label,p_0,p_1\n")
        for i, (label, p) in enumerate([("1", 0.9), ("0", 0.2), ("1", 0.4), ("0", 0.6)]):
            fh.write(f"i{i},knn,1,{label},{1 - p},{p}\n")
            fh.write(f"i{i},logreg,1,{label},0.5,0.5\n")
    fpr, tpr = oof_roc(EvalResult("b", tmp_path, result("b", 0.75, (0, 1))), "knn")
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1.0, 1.0])


def test_localization_rows_show_the_position_prior_beside_each_backbone(tmp_path):
    loc = {"n_images_with_lesions": 7, "hit_rate": {"value": 0.5}, "patch_auroc": {"value": 0.8}}
    prior = {"position_prior": {"hit_rate": 0.6489, "patch_auroc": 0.8371}}
    nan_prior = {"hit_rate": None, "patch_auroc": 0.5}
    rows = localization_rows(
        [
            EvalResult("random-init", tmp_path, {"localization": {**loc, **prior}}),
            EvalResult("older", tmp_path, {"localization": loc}),  # made before the prior
            EvalResult("no-loc", tmp_path, {"task": "density"}),
            # No lesion image in the folds: NaN hit rate, null in results.json.
            EvalResult("zz", tmp_path, {"localization": {**loc, "position_prior": nan_prior}}),
        ]
    )
    assert [r["backbone"] for r in rows] == ["random-init", "older", "zz"]
    assert [r["position_prior"] for r in rows] == ["0.649 / 0.837", "-", "n/a / 0.500"]
    assert rows[0]["images"] == 7 and rows[0]["hit_rate"] == "0.500"


def _tiny_backbone(size: int = 32) -> Backbone:
    torch.manual_seed(0)
    model = build_vit("vit_tiny", img_size=size, patch_size=8, num_register_tokens=2, depth=2)
    return Backbone(model=model.eval(), image_size=size, source="test")


def test_cls_attention_matches_the_blocks_own_attention_output():
    from mammodino.report.model_views import cls_attention

    backbone = _tiny_backbone()
    images = [np.random.default_rng(i).random((32, 24)).astype(np.float32) for i in range(2)]
    maps = cls_attention(backbone, images)
    assert maps.shape == (2, 4, 4)
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    # The same q/k maths applied to v must reproduce the fused attention of the last block.
    model = backbone.model
    with torch.no_grad():
        x = model.prepare_tokens(torch.stack([backbone.preprocess(im) for im in images]))
        x = model.blocks[0](x)
        attn_mod = model.blocks[-1].attn
        y = model.blocks[-1].norm1(x)
        b, n, d = y.shape
        qkv = attn_mod.qkv(y).reshape(b, n, 3, attn_mod.num_heads, d // attn_mod.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        weights = torch.softmax(q @ k.transpose(-2, -1) * (d // attn_mod.num_heads) ** -0.5, -1)
        manual = attn_mod.proj((weights @ v).transpose(1, 2).reshape(b, n, d))
        torch.testing.assert_close(manual, attn_mod(y), rtol=1e-4, atol=1e-5)


def test_patch_pca_is_rgb_inside_the_breast_and_transparent_outside():
    from mammodino.report.model_views import patch_pca_rgb

    backbone = _tiny_backbone()
    images = [np.random.default_rng(i).random((32, 32)).astype(np.float32) for i in range(3)]
    mask = np.zeros((32, 32), np.uint8)
    mask[:, :16] = 255  # left half: the first two patch columns of the 4x4 grid
    rgba = patch_pca_rgb(backbone, images, [mask] * 3)
    assert rgba.shape == (3, 4, 4, 4)
    assert (rgba[:, :, :2, 3] == 1).all() and (rgba[:, :, 2:, 3] == 0).all()
    assert rgba[..., :3].min() >= 0 and rgba[..., :3].max() <= 1
    assert rgba[:, :, :2, :3].std() > 0.05  # components spread over the colour range


def test_figure_functions_return_pngs():
    records = [{"step": s, "loss": 10 - s, "loss/dino": 5.0, "lr": 1e-3 * s} for s in range(1, 6)]
    records.append({"step": 5, "monitor/knn_acc": 0.7})
    fpr, tpr = roc_points(np.array([0, 1, 1, 0]), np.array([0.1, 0.8, 0.4, 0.5]))
    image = np.random.default_rng(0).random((40, 40))
    sample = {
        "global_crops": np.random.default_rng(1).random((2, 1, 32, 32)),
        "local_crops": np.random.default_rng(2).random((2, 1, 16, 16)),
        "global_patch_tissue": np.random.default_rng(3).random((2, 4, 4)),
        "masks": np.random.default_rng(4).random((2, 16)) > 0.5,
    }
    pngs = [
        figures.training_curves(records),
        figures.roc_curves({"a": (fpr, tpr, 0.75)}, "roc"),
        figures.confusion_matrices({"a": [[2, 1], [0, 3]], "b": [[1, 2], [1, 2]]}, ["0", "1"]),
        figures.crop_samples([sample, sample]),
        figures.image_maps([image], {"heat": [np.random.default_rng(5).random((4, 4))],
                                     "pca": [np.random.default_rng(6).random((4, 4, 4))]}),
    ]  # fmt: skip
    for png in pngs:
        assert png.startswith(PNG)
        decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        assert decoded.shape[0] > 100 and decoded.shape[1] > 100


def test_report_of_a_two_step_run_is_one_self_contained_file(tmp_path):
    from mammodino.cli import main
    from mammodino.train.loop import train

    cache = write_cache(  # 8 images 48 px tall, one a patient, labelled dense or not
        tmp_path / "cache",
        breast=lambda i: density_breast(i, height=48),
        columns=lambda i, _: {
            "source": f"img{i}.png",
            "patient_id": f"p{i}",
            "laterality": "L",
            "view": "CC",
        },
        labels=lambda i: {"file": f"img{i}.png", "patient_id": f"p{i}", "dense": 1 - i % 2},
    )
    run = tmp_path / "run"
    train(load_config(overrides=[f"data.source={cache}", *TINY]), run, show_progress=False)
    feats = tmp_path / "feats" / "mammodino"
    args = ["embed", "--weights", run, "--input", cache, "--output", feats, "--patch-grid"]
    assert main([*map(str, args), "--no-progress"]) == 0
    evals = run / "eval" / "dense" / "mammodino"
    args = ["eval", "--features", feats, "--labels", cache / "labels.csv", "--task", "dense"]
    args += ["--folds", "2", "--bootstrap", "20", "--k", "3", "--C", "1", "--output", evals]
    assert main([*map(str, args)]) == 0
    out = tmp_path / "report.html"
    assert main(["report", str(run), "--output", str(out)]) == 0
    text = out.read_text()
    # Self-contained: no external src/href, only inline PNGs (which decode).
    assert not re.search(r'(src|href)="(?!data:image/png;base64,|#)', text)
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) >= 5  # curves, ROC, confusion, crops, attention/PCA
    assert all(base64.b64decode(i).startswith(PNG) for i in images)
    for heading in ("Training curves", "Evaluation", "Sampled crops", "Attention", "heat maps"):
        assert heading in text
    assert "not available" not in text
    assert re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", text)  # figures with 95% intervals


@pytest.mark.parametrize("missing", ["metrics.jsonl", "eval"])
def test_report_says_what_is_missing_instead_of_failing(tmp_path, missing):
    from mammodino.report.build import build_report

    run = tmp_path / "run"
    run.mkdir()
    if missing != "metrics.jsonl":
        (run / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0, "lr": 0.1}\n')
    out = build_report(run)
    text = out.read_text()
    assert out == run / "report.html"
    assert ("No metrics.jsonl" in text) == (missing == "metrics.jsonl")
    assert "No results.json" in text


def test_evaluation_section_shows_classes_as_text_chance_and_explains_the_labels_column(tmp_path):
    from mammodino.report.build import build_report

    run = tmp_path / "run"
    for name, auc in (("mammodino", 0.8), ("random-init", 0.6)):
        data = result(name, auc, (0.5, 0.9))
        data.update(classes=["benign", "malignant"], class_counts=[30, 10], n_images_labelled=40)
        (run / "eval" / name).mkdir(parents=True)
        (run / "eval" / name / "results.json").write_text(json.dumps(data))
    text = build_report(run).read_text()
    assert "classes: benign, malignant (30, 10 images); 40 images" in text
    assert "[&#x27;" not in text and "['" not in text  # no Python list
    assert "training labels</b>: the share of each training fold" in text
    # chance: AUROC 0.5, balanced accuracy 1/2, AUPRC the share of positives (10/40)
    auroc_row = re.search(r"<td[^>]*>AUROC</td><td[^>]*>([^<]*)</td>", text)
    bal_row = re.search(r"<td[^>]*>balanced accuracy</td><td[^>]*>([^<]*)</td>", text)
    assert auroc_row.group(1) == "0.500" and bal_row.group(1) == "0.500"
    assert 'class="warn"' not in text
    # eval's warning (kNN on nearly identical features) reaches the report in red, named.
    data = json.loads((run / "eval" / "random-init" / "results.json").read_text())
    data["warnings"] = ["kNN: the images' cls features are nearly identical"]
    (run / "eval" / "random-init" / "results.json").write_text(json.dumps(data))
    text = build_report(run).read_text()
    assert text.count('class="warn"') == 1
    assert '<p class="warn">random-init: kNN: the images&#x27; cls features are nearly' in text


def test_chance_levels_per_metric():
    from mammodino.report.results import chance_level

    assert chance_level("balanced_accuracy", [10, 10, 20]) == pytest.approx(1 / 3)
    assert chance_level("auroc", [5, 5]) == 0.5 and chance_level("auroc_ovr", [1, 1, 1]) == 0.5
    assert chance_level("auprc", [30, 10]) == pytest.approx(0.25)
    assert chance_level("kappa_quadratic", [1, 1, 1]) == 0.0
    assert chance_level("macro_f1", [1, 1]) is None


def test_report_shows_learning_health_warnings_in_red(tmp_path):
    from mammodino.report.build import build_report

    run = tmp_path / "run"
    run.mkdir()
    records = [
        {"step": 10, "loss": 9.0, "loss/dino": 8.31, "lr": 0.1, "dino/teacher_entropy": 0.998,
         "dino/prototypes_used": 3.0, "dino/agreement": 0.0, "cls/effective_rank": 4.5},
        {"step": 10, "warning": "plateau", "message": "step 10: loss/dino has stayed near ln K"},
    ]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    text = build_report(run).read_text()
    assert '<p class="warn">Learning health: step 10: loss/dino has stayed near ln K</p>' in text
    assert "teacher entropy / ln K (1 = uniform targets, no signal) 0.998" in text
    assert "effective rank of the teacher&#x27;s CLS (1 = collapse) 4.50" in text or (
        "effective rank of the teacher's CLS (1 = collapse) 4.50" in text
    )
    healthy = tmp_path / "healthy"
    healthy.mkdir()
    (healthy / "metrics.jsonl").write_text(json.dumps(records[0]) + "\n")
    assert "Learning health: step" not in build_report(healthy).read_text()
