"""Transferability and generalization gaps (Deng, Hong, Zhou, Mahdavi, "On the Generalization Ability of
Unsupervised Pretraining", AISTATS 2024).

The paper calls a pretraining task (C_beta, beta)-transferable to a downstream task when the downstream excess
risk of a representation is at most C_beta times its pretraining excess loss to the power beta:

    E_down(h) <= C_beta * E_pre(h)^beta.

Given both excess values for several representations (checkpoints, seeds, methods), ``transferability`` fits
that power law through the points, log E_down = log C_beta + beta log E_pre, by least squares.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np
from scipy import stats

from ..errors import GentuneError

# metric names where lower is better; every other numeric metric is a score (higher is better)
LOWER_IS_BETTER = ("loss", "mse", "mae", "rmse", "perplexity", "error")
# bookkeeping numbers in evaluation records that are not metrics
NOT_METRICS = ("epoch", "step", "lr", "runtime", "time", "samples", "n")


def _vector(x, name: str) -> np.ndarray:
    try:
        v = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise GentuneError(f"transferability: {name} is not a list of numbers ({e})") from None
    return v


def _float_or_none(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


def transferability(pretrain_excess, downstream_excess, names=None) -> dict:
    """(C_beta, beta)-transferability (Deng, Hong, Zhou, Mahdavi, AISTATS 2024): the power law
    downstream = C_beta * pretrain^beta fitted by least squares in log-log space.

    Args:
        pretrain_excess: (k,) pretraining excess losses, one per representation.
        downstream_excess: (k,) downstream excess risks of the same representations.
        names: (k,) labels of the representations (default "0", "1", ...).

    Returns:
        {"beta", "c_beta", "r2" (of the log-log fit; None when the log downstream values are all equal),
        "spearman" (rank correlation of the used pairs; None when undefined), "n" (pairs used: both values finite
        and > 0), "names" (those pairs), "residuals" (log downstream minus the fit, aligned with names),
        "dropped" (names of the pairs left out)}.

    Raises:
        GentuneError: the lengths differ, fewer than 3 pairs have both values > 0, or the pretraining values of
            those pairs are all equal (beta undefined).
    """
    p = _vector(pretrain_excess, "pretrain_excess")
    q = _vector(downstream_excess, "downstream_excess")
    if len(p) != len(q):
        raise GentuneError(f"transferability: {len(p)} pretraining values but {len(q)} downstream values")
    names = [str(i) for i in range(len(p))] if names is None else [str(s) for s in names]
    if len(names) != len(p):
        raise GentuneError(f"transferability: {len(names)} names for {len(p)} pairs")
    keep = np.isfinite(p) & np.isfinite(q) & (p > 0) & (q > 0)
    if keep.sum() < 3:
        raise GentuneError(f"transferability: need at least 3 pairs with both excess values > 0 to fit "
                           f"downstream = C * pretrain^beta, got {int(keep.sum())} of {len(p)}")
    x, y = np.log(p[keep]), np.log(q[keep])
    if np.ptp(x) == 0:
        raise GentuneError("transferability: all pretraining excess values are equal; beta is undefined")
    design = np.stack([np.ones_like(x), x], axis=1)
    (log_c, beta), *_ = np.linalg.lstsq(design, y, rcond=None)
    residuals = y - design @ np.array([log_c, beta])
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = None if ss_tot == 0 else 1.0 - float((residuals ** 2).sum()) / ss_tot
    rho = float(stats.spearmanr(x, y)[0]) if np.ptp(y) > 0 else float("nan")
    return {"beta": float(beta), "c_beta": float(np.exp(log_c)), "r2": r2, "spearman": _float_or_none(rho),
            "n": int(keep.sum()), "names": [s for s, k in zip(names, keep) if k],
            "residuals": [float(r) for r in residuals], "dropped": [s for s, k in zip(names, keep) if not k]}


def _scalar(v) -> float | None:
    """A metric value as a float: Python or numpy numbers, one-element arrays or tensors; None otherwise."""
    if isinstance(v, bool):
        return None
    if isinstance(v, Real):
        return float(v)
    if hasattr(v, "item") and getattr(v, "ndim", None) == 0:
        return _scalar(v.item())
    return None


def lower_is_better(key: str) -> bool:
    """Whether a metric named ``key`` is a loss (lower is better): "loss", "mse", ... or a name ending in
    "_loss", "_mse", ..."""
    return any(key == w or key.endswith("_" + w) for w in LOWER_IS_BETTER)


def generalization_gap(train: dict, heldout: dict) -> dict:
    """Generalization gaps of one model (Deng, Hong, Zhou, Mahdavi, AISTATS 2024, the quantity their bounds
    control): heldout metrics against training metrics, signed so that a positive gap means worse held out.

    For losses (``lower_is_better``: "loss", "mse", ..., "*_loss") the gap is heldout - train; for scores
    (accuracy, f1, mcc, pearson, spearman, any other numeric key) it is train - heldout. Keys in only one dict,
    non-numeric values (zero-dimensional arrays and tensors count as numbers), booleans and bookkeeping keys
    (``NOT_METRICS``: epoch, step, ...) are skipped.

    Args:
        train: {metric: value} on the training data.
        heldout: {metric: value} on held-out data.

    Returns:
        {"<metric>_gap": float} for every metric present in both, e.g. {"loss_gap": 0.3, "accuracy_gap": 0.1}.
    """
    gaps = {}
    for key in train:
        if key not in heldout or key in NOT_METRICS:
            continue
        tr, ho = _scalar(train[key]), _scalar(heldout[key])
        if tr is None or ho is None:
            continue
        gaps[f"{key}_gap"] = ho - tr if lower_is_better(key) else tr - ho
    return gaps
