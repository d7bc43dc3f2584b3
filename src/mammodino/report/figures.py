"""Matplotlib figures of the report, each returned as PNG bytes (Agg backend, no display).

Every function takes plain arrays/dicts, so the figures are testable without a run or a model.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 90


def to_png(fig) -> bytes:
    """Render a figure to PNG bytes and close it (figures are not kept around)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def training_curves(records: Sequence[Mapping]) -> bytes:
    """Loss and each loss/* term, the learning rate and the kNN monitor against the step."""
    rows = [r for r in records if "step" in r and not r.get("skipped")]
    loss_keys = sorted({k for r in rows for k in r if k == "loss" or k.startswith("loss/")})
    panels = [("losses", loss_keys), ("learning rate", ["lr"])]
    health = [k for k in ("dino/teacher_entropy", "dino/agreement") if any(k in r for r in rows)]
    if health:  # both in [0, 1]: uniform targets near 1, no agreement near 0
        panels.append(("learning health", health))
    monitor = sorted({k for r in rows for k in r if k.startswith("monitor/")})
    if monitor:
        panels.append(("kNN monitor (teacher)", monitor))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.4))
    for ax, (title, keys) in zip(np.atleast_1d(axes), panels, strict=True):
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
            if pts:
                steps, values = zip(*pts, strict=True)
                ax.plot(steps, values, marker="." if len(pts) < 30 else None, label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines and (len(keys) > 1 or title.startswith(("kNN", "learning"))):
            ax.legend(fontsize=8)
    return to_png(fig)


def roc_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], title: str) -> bytes:
    """ROC curves of several backbones on one binary task: name -> (fpr, tpr, auroc)."""
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} ({auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return to_png(fig)


def confusion_matrices(
    matrices: Mapping[str, Sequence[Sequence[int]]], classes: Sequence[str], label: str = ""
) -> bytes:
    """One confusion matrix per backbone side by side (rows: truth, columns: prediction)."""
    names = list(matrices)
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names) + 0.6, 2.9), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        m = np.asarray(matrices[name], dtype=float)
        share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for (i, j), v in np.ndenumerate(m):
            colour = "white" if share[i, j] > 0.6 else "black"
            ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=8, color=colour)
        ticks = range(len(classes))
        ax.set_xticks(ticks, classes, fontsize=7)
        ax.set_yticks(ticks, classes, fontsize=7)
        ax.set_title(f"{label}: {name}" if label else name, fontsize=9)
        ax.set_xlabel("predicted", fontsize=8)
    axes[0][0].set_ylabel("true", fontsize=8)
    return to_png(fig)


def _overlay_grid(
    ax, image: np.ndarray, grid: np.ndarray, cmap: str, alpha: float, vmin=None, vmax=None
) -> None:
    """An image with a per-patch value grid stretched over it (colour range: the grid's own
    range unless given, so near-uniform attention still shows its structure)."""
    h, w = image.shape
    ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    extent = (0, w, h, 0)
    finite = np.asarray(np.ma.filled(np.ma.masked_invalid(grid), np.nan), dtype=float)
    finite = finite[np.isfinite(finite)]
    if vmin is None and vmax is None and finite.size and finite.min() == finite.max():
        vmin, vmax = finite.max() - 1.0, finite.max()  # a constant map (a mask): top colour
    ax.imshow(
        grid, cmap=cmap, alpha=alpha, extent=extent, vmin=vmin, vmax=vmax, interpolation="nearest"
    )
    ax.axis("off")


def crop_samples(samples: Sequence[Mapping[str, np.ndarray]]) -> bytes:
    """Per sample: each global crop with its patch tissue fraction and its iBOT mask, and the
    local crops (one row per sample)."""
    n_global = max(len(s["global_crops"]) for s in samples)
    n_local = max(len(s["local_crops"]) for s in samples)
    cols = 3 * n_global + n_local
    fig, axes = plt.subplots(
        len(samples), cols, figsize=(1.6 * cols, 1.75 * len(samples)), squeeze=False
    )
    for row, s in zip(axes, samples, strict=True):
        for ax in row:
            ax.axis("off")
        for g in range(len(s["global_crops"])):
            crop = s["global_crops"][g, 0]
            tissue = s["global_patch_tissue"][g]
            side = tissue.shape[0]
            masked = s["masks"][g].reshape(side, side).astype(float)
            row[3 * g].imshow(crop, cmap="gray", vmin=0, vmax=1)
            row[3 * g].set_title(f"global {g + 1}", fontsize=7)
            _overlay_grid(row[3 * g + 1], crop, tissue, "viridis", 0.45, 0, 1)
            row[3 * g + 1].set_title("tissue fraction", fontsize=7)
            _overlay_grid(row[3 * g + 2], crop, np.ma.masked_equal(masked, 0), "bwr", 0.6, 0, 1)
            row[3 * g + 2].set_title(f"iBOT mask ({int(masked.sum())})", fontsize=7)
        for j in range(len(s["local_crops"])):
            ax = row[3 * n_global + j]
            ax.imshow(s["local_crops"][j, 0], cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"local {j + 1}", fontsize=7)
    return to_png(fig)


def image_maps(
    images: Sequence[np.ndarray],
    maps: Mapping[str, Sequence[np.ndarray]],
    *,
    cmap: str = "inferno",
    alpha: float = 0.55,
    titles: Sequence[str] | None = None,
    image_label: str = "image",
) -> bytes:
    """A grid: one column per image, a first row with the image (labelled `image_label`, each
    with its title), then one row per map kind, labelled with its name.

    A map is either [h, w] (a heat map stretched over the image, NaN transparent) or [h, w, 3]
    RGB in [0, 1] (shown as is, e.g. the PCA of patch features).
    """
    rows = 1 + len(maps)
    n = len(images)
    fig, axes = plt.subplots(rows, n, figsize=(2.1 * n, 2.3 * rows), squeeze=False)
    for j, image in enumerate(images):
        axes[0][j].imshow(image, cmap="gray", vmin=0, vmax=1)
        axes[0][j].axis("off")
        if titles is not None:
            axes[0][j].set_title(titles[j], fontsize=7, loc="right")
        if j == 0:
            axes[0][j].set_title(image_label, fontsize=8, loc="left")
        for i, (name, values) in enumerate(maps.items(), start=1):
            ax = axes[i][j]
            value = np.asarray(values[j])
            if value.ndim == 3:
                h, w = image.shape
                ax.imshow(image, cmap="gray", vmin=0, vmax=1)
                ax.imshow(value, extent=(0, w, h, 0), interpolation="nearest")
                ax.axis("off")
            else:
                _overlay_grid(ax, image, np.ma.masked_invalid(value), cmap, alpha)
            if j == 0:
                ax.set_title(name, fontsize=8, loc="left")
    return to_png(fig)
