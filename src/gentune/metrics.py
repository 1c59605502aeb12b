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


METRICS = {"accuracy": accuracy, "f1": f1, "mcc": mcc, "pearson": pearson, "spearman": spearman}


def compute(names: tuple[str, ...], preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """All metrics ``names`` of predictions against labels (class indices, or scores for regression)."""
    return {name: METRICS[name](preds, labels) for name in names}
