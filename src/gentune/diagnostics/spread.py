"""How much a representation varies across the examples it is given: the check that a regularizer of the head
class's complexity (RadReg) has not been met by mapping every downstream example to nearly the same point.

With features h_1..h_n, their mean m and covariance C = (1/n) sum_i (h_i - m)(h_i - m)^T:

- ``spread`` = tr(C) / ((1/n) sum_i ||h_i||^2): the share of the features' mean squared norm that differs between
  examples; 0 when every example has the same features, 1 when the features are centred; scale-free;
- ``effective_rank`` = exp(H(p)), p_k = lambda_k / sum_j lambda_j over C's eigenvalues (Roy and Vetterli, 2007):
  how many directions the variation spreads over, from 1 (one direction) to the feature dimension (isotropic);
  0 when nothing varies.
"""

from __future__ import annotations

import torch

from ..errors import GentuneError
from .rademacher import as_features


def feature_spread(features) -> dict:
    """``{"spread", "effective_rank", "n", "dim"}`` of an (n, d) array (n >= 2), as Python floats and ints."""
    h = as_features(features)
    n, d = h.shape
    if n < 2:
        raise GentuneError(f"features: the spread needs at least 2 examples, got {n}")
    centred = h - h.mean(0)
    total = float((h * h).sum(1).mean())
    # C's eigenvalues are the squared singular values of the centred rows over n
    eig = torch.linalg.svdvals(centred) ** 2 / n
    variance = float(eig.sum())
    # below float64 round-off of the mean (identical rows whose mean is inexact): nothing varies
    if variance <= (d * torch.finfo(torch.float64).eps) ** 2 * total:
        return {"spread": 0.0, "effective_rank": 0.0, "n": n, "dim": d}
    p = eig / eig.sum()
    p = p[p > 0]
    return {"spread": variance / total, "effective_rank": float(torch.exp(-(p * p.log()).sum())), "n": n, "dim": d}
