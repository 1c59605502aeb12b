"""Task metrics, computed with scikit-learn and scipy (the field's reference implementations)."""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn import metrics as skm


def accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    return float(skm.accuracy_score(labels, preds))


def f1(preds: np.ndarray, labels: np.ndarray) -> float:
    """Binary F1 of the positive class (label index 1), as GLUE reports it for MRPC and QQP."""
    return float(skm.f1_score(labels, preds, pos_label=1, average="binary", zero_division=0))


def mcc(preds: np.ndarray, labels: np.ndarray) -> float:
    return float(skm.matthews_corrcoef(labels, preds))


def _corr(fn, preds: np.ndarray, labels: np.ndarray) -> float:
    # A constant prediction has no defined correlation; report 0 (no linear/rank agreement) instead of NaN,
    # so "best checkpoint" comparisons stay well defined early in training.
    if np.std(preds) == 0 or np.std(labels) == 0:
        return 0.0
    return float(fn(preds, labels)[0])


def pearson(preds: np.ndarray, labels: np.ndarray) -> float:
    return _corr(stats.pearsonr, preds, labels)


def spearman(preds: np.ndarray, labels: np.ndarray) -> float:
    return _corr(stats.spearmanr, preds, labels)


def mse(preds: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared error: the scale and offset that a correlation cannot see."""
    return float(np.mean((np.asarray(preds, float) - np.asarray(labels, float)) ** 2))


def slope(preds: np.ndarray, labels: np.ndarray) -> float:
    """The least-squares slope of the predictions on the gold scores, cov(pred, gold) / var(gold): 1 for predictions
    on the gold scale, 0.5 for predictions shrunk to half of it (0 for constant gold scores)."""
    y, p = np.asarray(labels, float), np.asarray(preds, float)
    var = np.var(y)
    return float(np.mean((p - p.mean()) * (y - y.mean())) / var) if var > 0 else 0.0


METRICS = {"accuracy": accuracy, "f1": f1, "mcc": mcc, "pearson": pearson, "spearman": spearman, "mse": mse,
           "slope": slope}
# Reported beside a regression's own metrics: a shrunken or shifted prediction shows in them.
REGRESSION_SCALE = ("mse", "slope")


def compute(names: tuple[str, ...], preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """All metrics ``names`` of predictions against labels (class indices, or scores for regression)."""
    return {name: METRICS[name](preds, labels) for name in names}
