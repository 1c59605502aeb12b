"""Heterogeneity between the pretraining and downstream representation distributions (Deng, Hong, Zhou, Mahdavi,
"On the Generalization Ability of Unsupervised Pretraining", AISTATS 2024).

The paper's transfer bound pays for the distance between the distribution of representations on pretraining data
and on downstream data. Two standard two-sample measures of it on finite samples:

- the unbiased RBF-kernel MMD^2 (Gretton et al., JMLR 2012), bandwidth by the median heuristic on the pooled
  sample, with a permutation test;
- the cross-validated accuracy of a logistic-regression domain classifier (0.5 or the majority share: no
  detectable difference; 1: fully separable).
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..errors import GentuneError
from .rademacher import as_features

_PERM_CHUNK = 64  # permutations evaluated per matrix product


def squared_distances(x: np.ndarray) -> np.ndarray:
    """(N, N) pairwise squared Euclidean distances of the rows of x (exact zeros on the diagonal)."""
    sq = (x * x).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
    np.fill_diagonal(d2, 0.0)
    return d2


def median_bandwidth(d2: np.ndarray) -> float:
    """The median heuristic: the median Euclidean distance over distinct pairs (positive pairs if that is 0)."""
    dist = np.sqrt(d2[np.triu_indices(d2.shape[0], k=1)])
    med = float(np.median(dist))
    if med > 0:
        return med
    positive = dist[dist > 0]
    return float(np.median(positive)) if positive.size else 1.0  # all points equal: any bandwidth gives MMD 0


def mmd2_from_kernel(k0: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Unbiased MMD^2 for each row of ``labels`` (P, N) (1 = sample a, 0 = sample b), given the kernel matrix
    with its diagonal zeroed (k0). Gretton et al. (2012), eq. 3: the within-sample means over i != j."""
    a = labels.astype(np.float64)
    m = a.sum(1)
    n = a.shape[1] - m
    ka = a @ k0  # (P, N)
    s_aa = (ka * a).sum(1)
    a_total = ka.sum(1)  # sum_{i in a, all j} k0_ij
    s_ab = a_total - s_aa
    s_bb = k0.sum() - 2.0 * a_total + s_aa
    return s_aa / (m * (m - 1)) + s_bb / (n * (n - 1)) - 2.0 * s_ab / (m * n)


def _subsample(x: np.ndarray, max_samples: int, rng: np.random.Generator) -> np.ndarray:
    if x.shape[0] <= max_samples:
        return x
    return x[np.sort(rng.choice(x.shape[0], max_samples, replace=False))]


def heterogeneity(features_a, features_b, n_permutations: int = 200, seed: int = 0, max_samples: int = 2000) -> dict:
    """Heterogeneity of two representation samples (Deng, Hong, Zhou, Mahdavi, AISTATS 2024): kernel MMD^2 with a
    permutation test, and a domain classifier's cross-validated accuracy.

    Args:
        features_a: (n_a, d) array or tensor, e.g. representations of pretraining inputs.
        features_b: (n_b, d) array or tensor, e.g. representations of downstream inputs.
        n_permutations: label permutations for the p-value (0 skips the test: p_value None).
        seed: seeds the subsampling, the permutations and the classifier's folds.
        max_samples: each side is subsampled (without replacement) to at most this many rows.

    Returns:
        {"mmd2": unbiased MMD^2 with k(x, y) = exp(-||x - y||^2 / (2 bandwidth^2)), "p_value": (1 + #{permuted
        MMD^2 >= observed}) / (1 + n_permutations), "bandwidth": the median pairwise distance of the pooled
        sample, "domain_accuracy": 5-fold stratified CV accuracy of logistic regression on standardized features,
        "domain_chance": the majority share (the accuracy of always guessing the larger side), "n_a", "n_b",
        "n_permutations"}.
    """
    a = as_features(features_a, "features_a").numpy()
    b = as_features(features_b, "features_b").numpy()
    if a.shape[1] != b.shape[1]:
        raise GentuneError(f"heterogeneity: the two samples have different feature sizes ({a.shape[1]} and "
                           f"{b.shape[1]})")
    if max_samples < 5 or n_permutations < 0:
        raise GentuneError("heterogeneity: max_samples >= 5 and n_permutations >= 0 needed")
    rng = np.random.default_rng(seed)
    a, b = _subsample(a, max_samples, rng), _subsample(b, max_samples, rng)
    n_a, n_b = a.shape[0], b.shape[0]
    if min(n_a, n_b) < 5:
        raise GentuneError(f"heterogeneity: need at least 5 samples on each side (5-fold classifier), got {n_a} "
                           f"and {n_b}")
    pooled = np.concatenate([a, b])
    d2 = squared_distances(pooled)
    bandwidth = median_bandwidth(d2)
    k0 = np.exp(-d2 / (2.0 * bandwidth ** 2))
    np.fill_diagonal(k0, 0.0)
    labels = np.r_[np.ones(n_a), np.zeros(n_b)]
    observed = float(mmd2_from_kernel(k0, labels[None])[0])
    p_value = None
    if n_permutations:
        exceed = 0
        for start in range(0, n_permutations, _PERM_CHUNK):
            count = min(_PERM_CHUNK, n_permutations - start)
            perms = np.stack([rng.permutation(labels) for _ in range(count)])
            # a small tolerance: permutations that reproduce the observed split count as ties, not below it
            exceed += int((mmd2_from_kernel(k0, perms) >= observed - 1e-12 * max(1.0, abs(observed))).sum())
        p_value = (1 + exceed) / (1 + n_permutations)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    accuracy = float(cross_val_score(clf, pooled, labels.astype(int), cv=folds, scoring="accuracy").mean())
    return {"mmd2": observed, "p_value": p_value, "bandwidth": bandwidth, "domain_accuracy": accuracy,
            "domain_chance": max(n_a, n_b) / (n_a + n_b), "n_a": n_a, "n_b": n_b,
            "n_permutations": int(n_permutations)}
