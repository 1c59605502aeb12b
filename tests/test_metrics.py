"""Metrics against independent re-implementations of their textbook definitions."""

import math

import numpy as np
import pytest

from gentune.metrics import compute


def _counts(p, y):
    tp = int(np.sum((p == 1) & (y == 1)))
    tn = int(np.sum((p == 0) & (y == 0)))
    fp = int(np.sum((p == 1) & (y == 0)))
    fn = int(np.sum((p == 0) & (y == 1)))
    return tp, tn, fp, fn


def _ranks(x):
    # average ranks for ties
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2
        i = j + 1
    return ranks


@pytest.mark.parametrize("seed", range(5))
def test_binary_metrics(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    p = np.where(rng.random(200) < 0.7, y, 1 - y)
    tp, tn, fp, fn = _counts(p, y)
    got = compute(("accuracy", "f1", "mcc"), p, y)
    assert got["accuracy"] == pytest.approx((tp + tn) / 200)
    assert got["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert got["mcc"] == pytest.approx(mcc)


@pytest.mark.parametrize("seed", range(5))
def test_correlations(seed):
    rng = np.random.default_rng(seed)
    y = np.round(rng.uniform(0, 5, 100), 1)  # rounded: ties, as in STS-B
    p = y + rng.normal(0, 1.5, 100)
    got = compute(("pearson", "spearman"), p, y)
    assert got["pearson"] == pytest.approx(np.corrcoef(p, y)[0, 1])
    assert got["spearman"] == pytest.approx(np.corrcoef(_ranks(p), _ranks(y))[0, 1])


def test_regression_scale_metrics_see_what_correlations_cannot():
    rng = np.random.default_rng(0)
    y = rng.uniform(0, 5, 200)
    half = compute(("pearson", "mse", "slope"), y / 2, y)  # perfectly correlated, shrunk to half the scale
    assert half["pearson"] == pytest.approx(1.0)
    assert half["slope"] == pytest.approx(0.5) and half["mse"] == pytest.approx(np.mean(y ** 2) / 4)
    p = 3.0 * y + 1.0 + rng.normal(0, 0.1, 200)
    fit = np.polyfit(y, p, 1)[0]  # numpy's least-squares line of prediction on gold
    assert compute(("slope",), p, y)["slope"] == pytest.approx(fit, rel=1e-10)
    assert compute(("slope",), p, np.ones(200))["slope"] == 0.0


def test_degenerate_cases():
    y = np.array([0, 1, 1, 0])
    assert compute(("f1",), np.zeros(4, int), y)["f1"] == 0.0  # never predicts the positive class
    assert compute(("mcc",), np.zeros(4, int), y)["mcc"] == 0.0
    assert compute(("pearson",), np.ones(4), np.arange(4.0))["pearson"] == 0.0  # constant prediction
    assert compute(("accuracy",), y, y)["accuracy"] == 1.0
