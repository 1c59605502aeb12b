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

from ..registry import register


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




# ----------------------------------------------------------------------------------------------- the objectives


class PointContrastModel(torch.nn.Module):
    """A point encoder read at its per-point features: what pretraining trains and keeps (``encoder``)."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.encoder(points)[0]


class _TwoViews:
    """What both losses share: two augmented views of every shape of a batch, drawn on the CPU from torch's global
    generator (which the loop saves and restores, so a resumed run draws the same views), their matched points,
    and ``npos`` of them sampled per shape."""

    default_encoder = "pointnet"

    def __init__(self, npos: int, negatives: str, rotation: str, up_axis: int, scale_low: float, scale_high: float,
                 jitter: float, crop: float, dropout: float):
        from ..data.points import Augment

        if npos < 1:
            raise ValueError(f"npos must be at least 1, got {npos}")
        if negatives not in ("shape", "batch"):
            raise ValueError(f"negatives must be shape or batch, got {negatives!r}")
        self.npos, self.negatives = npos, negatives
        try:
            self.augment = Augment(rotation, up_axis, (scale_low, scale_high), jitter, crop, dropout)
        except Exception as e:  # GentuneError: a bad option is the constructor's ValueError
            raise ValueError(str(e)) from None

    def build(self, encoder: torch.nn.Module) -> PointContrastModel:
        return PointContrastModel(encoder)

    def views(self, points: torch.Tensor):
        """(view 1 (B, K, 3), view 2, i (B, m), j (B, m), index 1 (B, K), index 2 (B, K)): the two views, m matched
        positions sampled per shape (m = npos, or the fewest matches a shape of the batch has), and each view
        point's index in its shape."""
        from ..data.points import correspondences, make_view

        cpu = points.detach().float().cpu()
        v1, v2, idx1, idx2, matches = [], [], [], [], []
        for shape in cpu:
            a, ia = make_view(shape, self.augment, None)
            b, ib = make_view(shape, self.augment, None)
            i, j = correspondences(ia, ib)
            if len(i) == 0:
                raise ValueError("two views share no point: raise crop (or lower dropout)")
            v1.append(a)
            v2.append(b)
            idx1.append(ia)
            idx2.append(ib)
            matches.append((i, j))
        m = min(self.npos, min(len(i) for i, _ in matches))
        picks = [torch.randperm(len(i))[:m] for i, _ in matches]
        i = torch.stack([i[p] for (i, _), p in zip(matches, picks)])
        j = torch.stack([j[p] for (_, j), p in zip(matches, picks)])
        device = points.device
        return (torch.stack(v1).to(device), torch.stack(v2).to(device), i.to(device), j.to(device),
                torch.stack(idx1).to(device), torch.stack(idx2).to(device))

    def features(self, model, batch: dict):
        """(features of view 1 at the sampled pairs (B, m, D), of view 2 (B, m, D), the views' full features
        (B, K, D) each, the pairs' positions i, j and the views' point indices)."""
        v1, v2, i, j, idx1, idx2 = self.views(batch["points"])
        both = model(torch.cat([v1, v2]))  # one pass: batch norm sees both views together
        f1, f2 = both[:len(v1)], both[len(v1):]
        rows = torch.arange(len(v1), device=i.device)[:, None]
        return f1[rows, i], f2[rows, j], f1, f2, i, j, idx1, idx2


@register("objective", "point-contrast")
class PointContrast(_TwoViews):
    """PointContrast's PointInfoNCE on two views of each shape, matched points as positives.

    Args:
        npos: matched pairs sampled per shape (the paper's 4,096 for scenes; a 1,024-point shape has fewer).
        tau: the temperature.
        negatives: shape (the other sampled points of the same shape) or batch (those of every shape).
        rotation: up (about the up axis), so3 or none.
        up_axis: the up axis (2: z, as ModelNet's).
        scale_low, scale_high: the range of the anisotropic scale.
        jitter: the std of Gaussian noise per coordinate.
        crop: the share of points a view's partial crop keeps (the views then overlap only partly).
        dropout: the share of the remaining points a view drops.
    """

    def __init__(self, npos: int = 256, tau: float = 0.07, negatives: str = "shape", rotation: str = "up",
                 up_axis: int = 2, scale_low: float = 0.8, scale_high: float = 1.2, jitter: float = 0.01,
                 crop: float = 0.8, dropout: float = 0.1):
        if tau <= 0:
            raise ValueError(f"point-contrast: tau must be positive, got {tau}")
        super().__init__(npos, negatives, rotation, up_axis, scale_low, scale_high, jitter, crop, dropout)
        self.tau = tau

    def __call__(self, model, batch: dict) -> dict:
        a, b, *_ = self.features(model, batch)
        if self.negatives == "batch":
            loss = point_info_nce(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]), self.tau)
        else:  # each shape's own pairs: a batched PointInfoNCE, averaged over shapes
            x, y = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
            logits = x @ y.transpose(1, 2) / self.tau  # (B, m, m)
            target = torch.arange(logits.shape[1], device=logits.device).expand(len(logits), -1)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        return {"loss": loss, "output": a, "log": {"pairs": torch.tensor(float(a.shape[1]))}}


@register("objective", "hardest-contrastive")
class HardestContrastive(_TwoViews):
    """FCGF's hardest-contrastive loss on two views of each shape (PointContrast's other loss), on L2-normalised
    features as FCGF's network gives them (the margins are distances on the unit sphere).

    Args:
        npos: matched pairs sampled per shape.
        candidates: the random subset of the other view's points the hardest negative is taken from, per shape.
        m_pos, m_neg: the positive and negative margins.
        negatives: shape (candidates from the same shape) or batch (from every shape of the batch).
        rotation, up_axis, scale_low, scale_high, jitter, crop, dropout: the views, as point-contrast's.
    """

    def __init__(self, npos: int = 256, candidates: int = 256, m_pos: float = 0.1, m_neg: float = 1.4,
                 negatives: str = "shape", rotation: str = "up", up_axis: int = 2, scale_low: float = 0.8,
                 scale_high: float = 1.2, jitter: float = 0.01, crop: float = 0.8, dropout: float = 0.1):
        if candidates < 1 or m_pos < 0 or m_neg <= 0:
            raise ValueError("hardest-contrastive: candidates >= 1, m_pos >= 0 and m_neg > 0")
        super().__init__(npos, negatives, rotation, up_axis, scale_low, scale_high, jitter, crop, dropout)
        self.candidates, self.m_pos, self.m_neg = candidates, m_pos, m_neg

    def __call__(self, model, batch: dict) -> dict:
        a, b, f1, f2, i, j, idx1, idx2 = self.features(model, batch)
        unit = lambda t: F.normalize(t.float(), dim=-1)  # noqa: E731  FCGF's unit features: the margins' scale
        a, b, f1, f2 = unit(a), unit(b), unit(f1), unit(f2)
        n_shapes, k = idx1.shape
        s = min(self.candidates, k)
        c1 = torch.stack([torch.randperm(k)[:s] for _ in range(n_shapes)]).to(i.device)
        c2 = torch.stack([torch.randperm(k)[:s] for _ in range(n_shapes)]).to(i.device)
        rows = torch.arange(n_shapes, device=i.device)[:, None]
        pool1, pool2 = f1[rows, c1], f2[rows, c2]  # (B, s, D) candidate negatives
        own1, own2 = idx1[rows, i], idx2[rows, j]  # the original point of each pair (the same in both views)
        orig1, orig2 = idx1[rows, c1], idx2[rows, c2]  # the original point of each candidate
        if self.negatives == "batch":
            shape = torch.arange(n_shapes, device=i.device)
            row_shape = shape[:, None].expand_as(own1).reshape(-1)
            cand_shape = shape[:, None].expand_as(orig1).reshape(-1)
            same1 = (own1.reshape(-1)[:, None] == orig2.reshape(-1)[None]) & (row_shape[:, None] == cand_shape[None])
            same2 = (own2.reshape(-1)[:, None] == orig1.reshape(-1)[None]) & (row_shape[:, None] == cand_shape[None])
            d = a.shape[-1]
            positive, negative = hardest_contrastive(a.reshape(-1, d), b.reshape(-1, d), pool1.reshape(-1, d),
                                                     pool2.reshape(-1, d), same1, same2, self.m_pos, self.m_neg)
        else:
            terms = [hardest_contrastive(a[t], b[t], pool1[t], pool2[t], own1[t][:, None] == orig2[t][None],
                                         own2[t][:, None] == orig1[t][None], self.m_pos, self.m_neg)
                     for t in range(n_shapes)]
            positive = torch.stack([p for p, _ in terms]).mean()
            negative = torch.stack([n for _, n in terms]).mean()
        return {"loss": positive + negative, "output": a,
                "log": {"positive": positive.detach(), "negative": negative.detach()}}


PointContrastConfig = PointContrast.Config
HardestContrastiveConfig = HardestContrastive.Config


__all__ = ["HardestContrastive", "PointContrast", "PointContrastModel", "hardest_contrastive", "point_info_nce"]
