"""PointContrast (Xie, Gu, Guo, Qi, Guibas, Litany, ECCV 2020): contrastive pretraining of point-cloud encoders
on two views of a shape, the matched points of the views as positives.

The losses, for per-point features of two views and their matched pairs (i, j) (the same original point):

- PointInfoNCE: over ``npos`` sampled pairs, with features L2-normalised,
  L = -1/npos sum_i log( exp(f1_i . f2_j(i) / tau) / sum_k exp(f1_i . f2_j(k) / tau) ),
  the other sampled pairs' second points as the negatives;
- hardest-contrastive (FCGF, Choy, Park, Koltun, ICCV 2019): over the sampled pairs,
  relu(||f1_i - f2_j||^2 - m_pos) for positives, and for each point the hardest negative among a random subset of
  the other view's points that are not its match, relu(m_neg - min_k ||f1_i - f2_k||)^2, in both directions.

Negatives come from the same shape (``negatives="shape"``, the default) or from every shape of the batch
(``"batch"``): the reference code draws them across its batch of scenes, which the paper does not say.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def point_info_nce(f1: torch.Tensor, f2: torch.Tensor, tau: float = 0.07) -> torch.Tensor:
    """PointInfoNCE of matched rows: row i of ``f1`` (M, D) and of ``f2`` (M, D) are one pair; the other rows of
    ``f2`` are row i's negatives. Features are L2-normalised first; float32."""
    a, b = F.normalize(f1.float(), dim=1), F.normalize(f2.float(), dim=1)
    logits = a @ b.T / tau
    return F.cross_entropy(logits, torch.arange(len(a), device=a.device))


def hardest_contrastive(f1: torch.Tensor, f2: torch.Tensor, pool1: torch.Tensor, pool2: torch.Tensor,
                        same1: torch.Tensor, same2: torch.Tensor, m_pos: float = 0.1,
                        m_neg: float = 1.4) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive term, negative term) of FCGF's hardest-contrastive loss.

    Args:
        f1, f2: (M, D) features of the matched pairs (row i of each is one pair).
        pool1, pool2: (S, D) features of the candidate negatives in view 1 and view 2.
        same1: (M, S) True where pool2's candidate is f1's row's own match (never a negative); same2 likewise
            for f2's rows against pool1.
        m_pos, m_neg: the margins.
    """
    f1, f2, pool1, pool2 = f1.float(), f2.float(), pool1.float(), pool2.float()
    positive = F.relu((f1 - f2).pow(2).sum(1) - m_pos).mean()
    d12 = torch.cdist(f1, pool2).masked_fill(same1, float("inf")).min(dim=1).values
    d21 = torch.cdist(f2, pool1).masked_fill(same2, float("inf")).min(dim=1).values
    negative = 0.5 * (F.relu(m_neg - d12).pow(2).mean() + F.relu(m_neg - d21).pow(2).mean())
    return positive, negative


__all__ = ["hardest_contrastive", "point_info_nce"]
