"""The trivial predictors every text table stands beside, scored on the split the table reports."""

from __future__ import annotations

import os

from .paths import ROOT


def trivial_baseline(task: str) -> dict[str, float]:
    """The best constant predictor of each metric, scored on the dev set the tables report: accuracy of the dev
    set's majority class, F1 of predicting the positive class everywhere, MCC 0 (any constant); for regression
    the MSE of predicting the training mean (Pearson and Spearman are undefined for a constant). Empty when the
    data are not here."""
    import numpy as np

    from gentune.data import get_task, load_splits

    spec = get_task(task)
    # GENTUNE_DATA, else the tree beside the repository: a render in a fresh shell must not lose the column
    data = os.environ.get("GENTUNE_DATA") or str(ROOT.parent / "shared" / "data" / "glue")
    try:
        train, dev = load_splits(spec, data)
    except Exception:  # no data here: the column shows "-"
        return {}
    labels = np.asarray(dev["label"])
    if spec.is_regression:
        y = labels.astype(float)
        return {"mse": float(np.mean((y - np.mean(train["label"])) ** 2)),
                "mse_half": float(np.mean((y / 2 - y) ** 2))}  # every prediction shrunk to half the gold score
    return constant_scores(spec, labels)


def constant_scores(spec, labels) -> dict[str, float]:
    """The best constant predictor of each of a classification task's metrics on ``labels`` (the reported
    split's gold labels): the majority class's accuracy, all-positive F1, MCC 0."""
    import numpy as np

    from gentune.metrics import compute

    labels = np.asarray(labels)
    out = {}
    for metric in spec.metrics:
        if metric == "mcc":
            out[metric] = 0.0
        elif metric == "f1":
            out[metric] = compute(["f1"], np.ones_like(labels), labels)["f1"]
        else:
            out[metric] = compute([metric], np.full_like(labels, np.bincount(labels).argmax()), labels)[metric]
    return out
