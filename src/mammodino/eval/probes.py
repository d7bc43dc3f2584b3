"""Probes on frozen features: weighted kNN, logistic regression and a torch linear layer.

Each probe is `fit_predict(x_train, y_train, x_test, n_classes, groups_train, seed) -> proba`
with `proba` [n_test, n_classes] (rows sum to 1; a class absent from training gets 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mammodino.errors import EvaluationError

C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both z-scored with the training rows' mean and standard deviation."""
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std < 1e-8] = 1.0  # constant features carry no information; keep them at zero
    return (x_train - mean) / std, (x_test - mean) / std


@dataclass
class KNNProbe:
    """DINO's weighted k-nearest-neighbour vote on cosine similarity.

    p(c | x) is proportional to sum over the k nearest training images of class c of
    exp(cos(x, x_i) / temperature) (Wu et al. 2018; Caron et al. 2021). `standardise` z-scores
    each feature on the training images first: needed for hand-crafted features, whose scales
    differ by orders of magnitude, not for network embeddings.
    """

    k: int = 20
    temperature: float = 0.07
    standardise: bool = False

    def fit_predict(self, x_train, y_train, x_test, n_classes, groups_train=None, seed=0):
        """Class probabilities of the test images from their training neighbours."""
        if self.k < 1 or self.temperature <= 0:
            raise EvaluationError(
                f"kNN needs k >= 1 and temperature > 0; got {self.k}, {self.temperature}"
            )
        if self.standardise:
            x_train, x_test = standardise(x_train, x_test)
        a = x_train / np.maximum(np.linalg.norm(x_train, axis=1, keepdims=True), 1e-12)
        b = x_test / np.maximum(np.linalg.norm(x_test, axis=1, keepdims=True), 1e-12)
        sim = b @ a.T
        k = min(self.k, len(a))
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        top_sim = np.take_along_axis(sim, top, axis=1)
        # Subtracting the row maximum keeps exp() finite; the vote is invariant to it.
        weight = np.exp((top_sim - top_sim.max(axis=1, keepdims=True)) / self.temperature)
        proba = np.zeros((len(b), n_classes))
        np.add.at(proba, (np.repeat(np.arange(len(b)), k), y_train[top].ravel()), weight.ravel())
        return proba / proba.sum(axis=1, keepdims=True)


@dataclass
class LogRegProbe:
    """Standardised features -> multinomial logistic regression with balanced class weights.

    `C=None` picks C from `C_GRID` by patient-level inner cross-validation on log-loss.
    """

    C: float | None = None
    inner_folds: int = 3
    max_iter: int = 2000

    def _model(self, C: float):
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=C, class_weight="balanced", max_iter=self.max_iter)

    def choose_C(self, x: np.ndarray, y: np.ndarray, groups: Sequence[str] | None) -> float:
        """The C of the grid with the best inner-CV log-loss (1.0 when too few patients)."""
        from sklearn.metrics import log_loss
        from sklearn.model_selection import GroupKFold

        groups = np.arange(len(y)) if groups is None else np.asarray(groups)
        if len(np.unique(groups)) < self.inner_folds or len(np.unique(y)) < 2:
            return 1.0
        labels = np.unique(y)
        scores = {C: [] for C in C_GRID}
        for train, val in GroupKFold(self.inner_folds).split(x, y, groups):
            if len(np.unique(y[train])) < 2:
                continue
            xt, xv = standardise(x[train], x[val])
            for C in C_GRID:
                model = self._model(C).fit(xt, y[train])
                proba = _full_proba(model.predict_proba(xv), model.classes_, labels)
                proba = np.clip(proba, 1e-7, 1.0)
                scores[C].append(
                    log_loss(y[val], proba / proba.sum(1, keepdims=True), labels=labels)
                )
        means = {C: np.mean(s) for C, s in scores.items() if s}
        return min(means, key=means.get) if means else 1.0

    def fit_predict(self, x_train, y_train, x_test, n_classes, groups_train=None, seed=0):
        """Class probabilities from a logistic regression fitted on the training images."""
        C = self.C if self.C is not None else self.choose_C(x_train, y_train, groups_train)
        self.last_C = C
        xt, xv = standardise(x_train, x_test)
        model = self._model(C).fit(xt, y_train)
        return _full_proba(model.predict_proba(xv), model.classes_, np.arange(n_classes))


def _full_proba(proba: np.ndarray, classes: np.ndarray, all_classes: np.ndarray) -> np.ndarray:
    """Spread predict_proba's columns (classes seen in training) over every class."""
    if len(classes) == 1:  # sklearn refuses one class; the probe then always says that class
        raise EvaluationError("a training set holds a single class; use more data or folds")
    out = np.zeros((len(proba), len(all_classes)))
    for j, c in enumerate(classes):
        out[:, int(np.searchsorted(all_classes, c))] = proba[:, j]
    return out


@dataclass
class LinearProbe:
    """A torch linear layer on standardised features: full-batch AdamW, class-balanced CE."""

    epochs: int = 100
    lr: float = 0.1  # full-batch Adam on standardised inputs: 1e-2 underfits in 100 steps
    weight_decay: float = 1e-4

    def fit_predict(self, x_train, y_train, x_test, n_classes, groups_train=None, seed=0):
        """Class probabilities of a linear layer trained for `epochs` full-batch steps."""
        import torch

        xt, xv = standardise(x_train, x_test)
        generator = torch.Generator().manual_seed(seed)
        layer = torch.nn.Linear(xt.shape[1], n_classes)
        with torch.no_grad():
            layer.weight.normal_(0.0, 0.01, generator=generator)
            layer.bias.zero_()
        counts = np.bincount(y_train, minlength=n_classes).astype(np.float64)
        # Balanced weights as in the logistic regression; absent classes get weight 0.
        class_weight = np.where(counts > 0, len(y_train) / (n_classes * np.maximum(counts, 1)), 0)
        loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(class_weight, dtype=torch.float32))
        optim = torch.optim.AdamW(layer.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        x = torch.from_numpy(xt.astype(np.float32))
        y = torch.from_numpy(y_train.astype(np.int64))
        for _ in range(self.epochs):
            optim.zero_grad()
            loss_fn(layer(x), y).backward()
            optim.step()
        with torch.no_grad():
            logits = layer(torch.from_numpy(xv.astype(np.float32)))
            logits[:, counts == 0] = -torch.inf
            return torch.softmax(logits, dim=1).double().numpy()
