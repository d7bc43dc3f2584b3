"""`mammodino report RUN`: training curves, evaluation tables, ROC curves, confusion matrices,
sampled crops, attention maps, patch-feature PCA and lesion heat maps in one HTML file."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from mammodino.preprocess.cache import (
    cache_folder,
    is_prepared_cache,
    read_cached_float,
    read_cached_mask,
    read_manifest,
)
from mammodino.report import figures
from mammodino.report import html as H
from mammodino.report.results import (
    EvalResult,
    backbone_order,
    by_task,
    comparison_rows,
    confusion,
    find_results,
    localization_rows,
    oof_roc,
)
from mammodino.report.runs import SHORT_RUN_STEPS, RunFacts, format_minutes, run_facts

N_IMAGES = 4  # mammograms in the attention / PCA / heat-map figures
N_CROP_SAMPLES = 3


def read_metrics(path: Path) -> list[dict]:
    """Records of metrics.jsonl (non-finite values, stored as strings, become NaN)."""
    records = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        for key, value in record.items():
            if isinstance(value, str) and value.lower() in ("nan", "inf", "-inf"):
                record[key] = float(value)
        records.append(record)
    return records


def _pick_rows(rows: list[dict[str, str]], n: int) -> list[dict[str, str]]:
    """A few 2-D mammograms (FFDM first; for DBT only the central slice), spread over the cache."""
    flat = [r for r in rows if not r.get("slice_index")]
    central = [
        r
        for r in rows
        if r.get("slice_index") and int(r["slice_index"]) == int(r.get("slice_count") or 1) // 2
    ]
    pool = flat or central
    if len(pool) <= n:
        return pool
    return [pool[i] for i in np.linspace(0, len(pool) - 1, n).round().astype(int)]


def _load_pair(cache: Path, row: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """(image in [0, 1], breast mask; all ones for a row without one) of a manifest row."""
    image = read_cached_float(cache, row)
    if not row.get("mask"):
        return image, np.ones_like(image)
    return image, read_cached_mask(cache / row["mask"], image.shape)


def _short_run_warning(runs: Sequence[RunFacts]) -> str:
    """A red line naming the runs too short to compare ('' when none is)."""
    short = [f"{r.name} ({r.steps} steps)" for r in runs if r.too_short]
    if not short:
        return ""
    return (
        f'<p class="warn">Too short to compare: {H.esc(", ".join(short))}. Under '
        f"{SHORT_RUN_STEPS} steps a network stays close to its initialisation: its features "
        "and figures say nothing about its recipe (run longer, e.g. `mammodino demo --steps "
        "400`).</p>"
    )


def _runs_table(runs: Sequence[RunFacts]) -> str:
    """Steps, images seen and time of the run and the runs it is compared with."""
    rows = [
        [
            r.name,
            str(r.steps),
            f"{r.images_seen:,}",
            format_minutes(r.step_seconds),
            str(r.curve_points),
            "too short to compare" if r.too_short else "",
        ]
        for r in runs
    ]
    flagged = [{5} if r.too_short else set() for r in runs]
    header = ["run", "steps", "images seen", "wall time of the steps", "logged points", "flag"]
    return H.table(header, rows, flagged=flagged) + (
        '<p class="note">Images seen: steps x batch x accumulated micro-batches (one process). '
        "Wall time: the summed duration of the training steps from metrics.jsonl (start-up, kNN "
        f"monitor and checkpoints left out). Runs under {SHORT_RUN_STEPS} steps are flagged.</p>"
    )


def _section_training(run: Path, runs: Sequence[RunFacts]) -> str:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return '<p class="note">No metrics.jsonl in this run.</p>'
    records = read_metrics(path)
    last = next((r for r in reversed(records) if "loss" in r), {})
    facts = ", ".join(
        f"{k} {last[k]:.4g}" for k in ("step", "loss", "lr", "samples_per_s") if k in last
    )
    return (
        _short_run_warning(runs)
        + _health_warnings(records)
        + _runs_table(runs)
        + f'<p class="note">Last logged step of {H.esc(run.name)}: {H.esc(facts)}.</p>'
        + _health_note(last)
        + H.image(figures.training_curves(records), "training curves")
    )


def _health_warnings(records: Sequence[dict]) -> str:
    """The plateau / collapse warnings `pretrain` printed, in red ('' when none)."""
    lines = [
        f'<p class="warn">Learning health: {H.esc(str(r.get("message", r["warning"])))}</p>'
        for r in records
        if "warning" in r
    ]
    return "".join(lines)


def _health_note(last: dict) -> str:
    """The learning-health signals of the last logged step, explained (docs/pretrain.md)."""
    signals = [
        (
            "dino/teacher_entropy",
            "teacher entropy / ln K (1 = uniform targets, no signal)",
            "{:.3f}",
        ),
        ("dino/prototypes_used", "prototypes in use per step", "{:.0f}"),
        ("dino/agreement", "student-teacher argmax agreement", "{:.3f}"),
        ("cls/effective_rank", "effective rank of the teacher's CLS (1 = collapse)", "{:.2f}"),
    ]
    shown = [f"{text} {fmt.format(last[k])}" for k, text, fmt in signals if k in last]
    if not shown:
        return ""
    return f'<p class="note">Learning health at that step: {H.esc("; ".join(shown))}.</p>'


def _classes_text(data: dict) -> str:
    """'F, G, D (20, 30, 30 images)': the classes in code order with their counts."""
    classes = [str(c) for c in data.get("classes", [])]
    counts = data.get("class_counts")
    text = ", ".join(classes) or "?"
    if counts and len(counts) == len(classes):
        text += f" ({', '.join(str(c) for c in counts)} images)"
    return text


def _section_evaluation(results: Sequence[EvalResult], runs: Sequence[RunFacts] = ()) -> str:
    if not results:
        return (
            '<p class="note">No results.json under RUN/eval/ or --evals: run `mammodino eval` '
            "(see docs/report.md).</p>"
        )
    out = [
        _short_run_warning(runs),
        '<p class="note">Pooled out-of-fold figures with patient-level bootstrap 95% intervals; '
        "every backbone uses the same patient-level folds. Best point value of each row in bold. "
        "<b>training labels</b>: the share of each training fold's labelled patients the probe "
        "was fitted on (100% = all of them; smaller shares, from `eval --label-fractions`, show "
        "label efficiency). <b>chance</b>: what a guess that ignores the image scores on "
        "average (AUROC 0.5, balanced accuracy 1 / number of classes, kappa 0, AUPRC the share "
        "of positives).</p>",
    ]
    for view in by_task(results):
        first = next(iter(view.results.values())).data
        out.append(
            f"<h3>{H.esc(view.task)}</h3><p class='note'>classes: {H.esc(_classes_text(first))}; "
            f"{first.get('n_images_labelled', '?')} images of {first.get('n_patients', '?')} "
            f"patients, {first.get('folds', '?')}-fold CV</p>"
        )
        backbones, rows = comparison_rows(view)
        header = ["protocol", "training labels", "metric", "chance", *backbones]
        cells = [
            [
                r["protocol"],
                f"{r['fraction']:.0%}",
                r["metric"],
                "-" if r["chance"] is None else f"{r['chance']:.3f}",
                *(r["cells"][b] for b in backbones),
            ]
            for r in rows
        ]
        best = [{4 + backbones.index(b) for b in r["best"]} for r in rows]
        out.append(H.table(header, cells, best))
        out += [
            f'<p class="warn">{H.esc(name)}: {H.esc(warning)}</p>'
            for name, r in view.results.items()
            for warning in r.data.get("warnings", [])
        ]
        protocols = list(
            dict.fromkeys(p for r in view.results.values() for p in r.data["protocols"])
        )
        plots = []
        for protocol in protocols:
            if len(view.classes) == 2:
                curves = {}
                for name, r in view.results.items():
                    points = oof_roc(r, protocol)
                    auc = r.data["protocols"].get(protocol, {}).get("1", {}).get("pooled", {})
                    value = (auc.get("auroc") or {}).get("value")
                    if points is not None:
                        curves[name] = (*points, math.nan if value is None else value)
                if curves:
                    title = f"ROC, {view.task} ({protocol})"
                    plots.append(H.image(figures.roc_curves(curves, title), title))
            matrices = {
                n: m for n, r in view.results.items() if (m := confusion(r, protocol)) is not None
            }
            if matrices:
                plots.append(
                    H.image(
                        figures.confusion_matrices(matrices, view.classes, protocol),
                        f"confusion {view.task} {protocol}",
                    )
                )
        out.append(f'<div class="row">{"".join(plots)}</div>')
    loc = localization_rows(results)
    if loc:
        out.append("<h3>lesion localization (patch-token probe)</h3>")
        columns = {
            "backbone": "backbone",
            "images": "images with lesions",
            "hit_rate": "hit rate (pointing game)",
            "patch_auroc": "patch AUROC",
            "position_prior": "position prior: hit rate / AUROC",
        }
        out.append(H.table(list(columns.values()), [[r[k] for k in columns] for r in loc]))
    return "\n".join(out)


def _section_crops(cfg) -> str:
    from mammodino.report.model_views import sample_crops
    from mammodino.settings import Settings

    samples = sample_crops(Settings.from_config(cfg), N_CROP_SAMPLES)
    note = (
        f"crops.sampler={cfg.crops.sampler}, masking.mode={cfg.masking.mode}: per sample the global "
        "crops, the tissue fraction of each ViT patch (yellow = all breast) and the iBOT mask "
        "(red = masked patch), then the local crops."
    )
    return f'<p class="note">{H.esc(note)}</p>' + H.image(figures.crop_samples(samples), "crops")


def _section_backbone(run: Path, cache: Path) -> str:
    from mammodino.eval.backbone import load_backbone
    from mammodino.report.model_views import canvas_image, cls_attention, patch_pca_rgb

    # At the size the run trained at (its global crops): a larger input shows the network
    # positions it never saw, which would make its maps look finer than what it learnt.
    backbone = load_backbone(run)
    rows = _pick_rows(read_manifest(cache, required=("id", "image")), N_IMAGES)
    pairs = [_load_pair(cache, r) for r in rows]
    images = [p[0] for p in pairs]
    attention = cls_attention(backbone, images)
    pca = patch_pca_rgb(backbone, images, [p[1] for p in pairs])
    shown = [canvas_image(im) for im in images]
    titles = [f"{r.get('laterality', '')} {r.get('view', '')}".strip() for r in rows]
    note = (
        f"Teacher backbone at {backbone.image_size} px, the run's global crop size "
        f"({backbone.grid_size}x{backbone.grid_size} patches). Attention: CLS to patches, last block, mean over heads. PCA: first three "
        "components of the patch features of the breast patches of these images as RGB."
    )
    maps = {"CLS attention (last block)": list(attention), "patch PCA (RGB)": list(pca)}
    return f'<p class="note">{H.esc(note)}</p>' + H.image(
        figures.image_maps(shown, maps, titles=titles, image_label="mammogram"),
        "attention and PCA",
    )


def _section_heatmaps(results: Sequence[EvalResult], cache: Path | None) -> str:
    from mammodino.report.model_views import canvas_image

    with_maps = sorted(
        (r for r in results if (r.folder / "heatmaps.npz").is_file()),
        key=lambda r: backbone_order(r.backbone),
    )
    if not with_maps:
        return (
            '<p class="note">No heat maps: run `mammodino eval --localization` on patch-grid '
            "features (embed --patch-grid).</p>"
        )
    if cache is None or not is_prepared_cache(cache):
        return '<p class="note">Heat maps found but the run\'s cache (data.source) is missing.</p>'
    rows = {r["id"]: r for r in read_manifest(cache, required=("id", "image"))}
    first = np.load(with_maps[0].folder / "heatmaps.npz", allow_pickle=False)
    ids = [str(i) for i in first["ids"]]
    lesion = [i for i, m in zip(ids, first["lesion_masks"], strict=True) if m.any() and i in rows]
    chosen = lesion[:N_IMAGES]
    if not chosen:
        return '<p class="note">No held-out image with a lesion among the heat maps.</p>'
    images = [canvas_image(_load_pair(cache, rows[i])[0]) for i in chosen]
    titles = [f"{rows[i].get('laterality', '')} {rows[i].get('view', '')}".strip() for i in chosen]
    maps: dict[str, list[np.ndarray]] = {
        # NaN is transparent: only the lesion patches are coloured.
        "lesion patches": [
            np.where(first["lesion_masks"][ids.index(i)], 1.0, np.nan) for i in chosen
        ]
    }
    seen = set()
    for r in with_maps:
        if r.backbone in seen:
            continue
        seen.add(r.backbone)
        data = np.load(r.folder / "heatmaps.npz", allow_pickle=False)
        index = {str(i): k for k, i in enumerate(data["ids"])}
        if all(i in index for i in chosen):
            maps[r.backbone] = [data["heatmaps"][index[i]] for i in chosen]
    note = (
        "First row: held-out mammograms with a lesion; then the annotated lesion patches; then per "
        "backbone the out-of-fold lesion probability per patch (probe trained on the other "
        "folds); colours span each map's own range."
    )
    figure = figures.image_maps(images, maps, titles=titles, image_label="held-out mammogram")
    return f'<p class="note">{note}</p>' + H.image(figure, "heat maps")


def _guard(name: str, make: Callable[[], str]) -> str:
    """A section, or one line saying why it could not be drawn (the rest of the report stays)."""
    try:
        return make()
    except Exception as err:  # noqa: BLE001 - a report shows what it can and says what it cannot
        return f'<p class="note">{H.esc(name)} not available: {H.esc(type(err).__name__)}: {H.esc(err)}</p>'


def build_report(
    run: Path,
    evals: Sequence[Path] = (),
    output: Path | None = None,
    compare: Sequence[Path] = (),
) -> Path:
    """Write the report of `run` (and of the results.json under RUN/eval and `evals`); the runs
    in `compare` (e.g. a baseline's) get a row in the table of steps, images seen and time."""
    from mammodino.config import load_config
    from mammodino.errors import ConfigError

    run = Path(run)
    if not run.is_dir():
        raise ConfigError(f"{run}: not a run folder")
    output = Path(output) if output else run / "report.html"
    cfg = load_config(preset=run / "config.yaml") if (run / "config.yaml").is_file() else None
    folders = [p for p in [run / "eval", *map(Path, evals)] if p.exists()]
    results = find_results(folders)
    source = cfg.data.source if cfg is not None else None
    cache = cache_folder(source) if source and is_prepared_cache(source) else None
    runs = [f for f in (run_facts(r) for r in [run, *map(Path, compare)]) if f is not None]
    sections = [
        ("training", "Training curves", _section_training(run, runs)),
        (
            "evaluation",
            "Evaluation (patient-level cross-validation)",
            _section_evaluation(results, runs),
        ),
    ]
    if cfg is not None and cache is not None:
        sections.append(
            ("crops", "Sampled crops and masks", _guard("crops", lambda: _section_crops(cfg)))
        )
    if cache is not None and (run / "checkpoints").is_dir():
        sections.append(
            (
                "backbone",
                "Attention and patch-feature PCA",
                _guard("maps", lambda: _section_backbone(run, cache)),
            )
        )
    sections.append(
        (
            "localization",
            "Lesion heat maps",
            _guard("heat maps", lambda: _section_heatmaps(results, cache)),
        )
    )
    arch = f"{cfg.model.arch}/{cfg.model.patch_size}" if cfg is not None else "unknown model"
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = f"run {run.name}: {arch}; {len(results)} evaluation result(s); generated {when}"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(H.page(f"MammoDINO report: {run.name}", subtitle, sections))
    return output
