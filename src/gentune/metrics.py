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


# ----------------------------------------------------------------------------------------------- named entities


def entity_scores(gold: list[list[str]], pred: list[list[str]]) -> dict:
    """Entity-level micro precision, recall and F1 over IOB2 tag sequences, and per type, by seqeval in strict
    mode (an entity counts only with its exact boundaries and type). ``{"precision", "recall", "f1", "per_type":
    {TYPE: {"precision", "recall", "f1", "support"}}}``."""
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    if len(gold) != len(pred) or any(len(g) != len(p) for g, p in zip(gold, pred)):
        raise ValueError("entity_scores: gold and predicted tags differ in shape")
    report = classification_report(gold, pred, mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
    micro = report["micro avg"]
    kinds = sorted(k for k in report if not k.endswith(" avg"))
    return {"precision": float(micro["precision"]), "recall": float(micro["recall"]), "f1": float(micro["f1-score"]),
            "per_type": {k: {"precision": float(report[k]["precision"]), "recall": float(report[k]["recall"]),
                             "f1": float(report[k]["f1-score"]), "support": int(report[k]["support"])}
                         for k in kinds}}


def span_scores(gold: list[set], pred: list[set]) -> dict:
    """FFF-NER's span micro P/R/F1: per sentence a set of (start, end, type) spans, predicted against gold (spans
    may overlap: scored raw before overlap resolution, or after it)."""
    tp = sum(len(g & p) for g, p in zip(gold, pred))
    n_pred, n_gold = sum(map(len, pred)), sum(map(len, gold))
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f}
