"""Point-cloud encoders in pure PyTorch: PointNet and a small DGCNN, each giving per-point features (what a
contrastive loss over point correspondences reads) and a global feature (what a classifier reads).

- PointNet (Qi et al., CVPR 2017, without its input and feature transforms): a shared MLP on each point's
  coordinates (1 x 1 convolutions with batch norm), per-point features from its last layer, the global feature their
  max over points. A function of the set of points: invariant to their order.
- DGCNN (Wang et al., ACM TOG 2019), small: EdgeConv layers on the k-nearest-neighbour graph of the current
  features, h_i = max_{j in kNN(i)} MLP([x_i, x_j - x_i]); the per-point features are the layers' outputs
  concatenated and mixed by a 1 x 1 convolution, the global feature their max and mean over points. The kNN graph
  is found by :func:`knn` from ``torch.cdist`` on chunks of query points, so no more than a chunk x n block of the
  n x n distances is ever held.

``forward(points)`` takes (B, N, 3) and returns ``(per_point (B, N, D), global (B, G))``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import GentuneError


def knn(x: torch.Tensor, k: int, chunk: int = 256) -> torch.Tensor:
    """The indices (B, N, k) of each point's k nearest points (itself included, at distance 0) in x (B, N, C), by
    squared Euclidean distance, computed ``chunk`` query points at a time."""
    b, n, _ = x.shape
    if not 0 < k <= n:
        raise GentuneError(f"knn: k must be in 1..{n} (the points), got {k}")
    out = torch.empty(b, n, k, dtype=torch.long, device=x.device)
    for start in range(0, n, chunk):
        d = torch.cdist(x[:, start:start + chunk], x)  # (B, chunk, N): the only distances held at once
        out[:, start:start + chunk] = d.topk(k, dim=-1, largest=False).indices
    return out


class SharedMLP(nn.Module):
    """Linear - BatchNorm - activation layers applied to every point (or edge) alike: (..., C) -> (..., C'). A
    1 x 1 convolution written as one GEMM over all points, the batch norm over every point of the batch."""

    def __init__(self, sizes: list[int], slope: float = 0.0):
        super().__init__()
        self.linears = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(sizes[:-1], sizes[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm1d(b) for b in sizes[1:])
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1]
        h = x.reshape(-1, x.shape[-1])
        for linear, norm in zip(self.linears, self.norms):
            h = nn.functional.leaky_relu(norm(linear(h)), self.slope)
        return h.reshape(*shape, h.shape[-1])


class PointNet(nn.Module):
    """PointNet's shared per-point MLP and max pooling.

    Args:
        widths: the shared MLP's layer widths (the last is the feature size).
    """

    architecture = "pointnet"

    def __init__(self, widths: tuple[int, ...] = (64, 64, 128, 256)):
        super().__init__()
        self.config = {"widths": list(widths)}
        self.mlp = SharedMLP([3, *widths])
        self.point_dim = self.global_dim = widths[-1]

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.mlp(points)  # (B, N, D)
        return h, h.max(dim=1).values


class EdgeConv(nn.Module):
    """h_i = max over j in kNN(i) of MLP([x_i, x_j - x_i])."""

    def __init__(self, cin: int, cout: int, k: int):
        super().__init__()
        self.k = k
        self.mlp = SharedMLP([2 * cin, cout], slope=0.2)

    def forward(self, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """(B, N, C) -> (B, N, cout); the graph is the kNN of ``x`` itself."""
        b = x.shape[0]
        idx = knn(x.detach(), self.k, chunk)  # (B, N, k)
        neighbours = x[torch.arange(b, device=x.device)[:, None, None], idx]  # (B, N, k, C)
        centre = x.unsqueeze(2).expand_as(neighbours)
        edge = torch.cat([centre, neighbours - centre], dim=-1)  # (B, N, k, 2C)
        return self.mlp(edge).max(dim=2).values


class DGCNN(nn.Module):
    """A small DGCNN: EdgeConv layers on the kNN graph of their own input features.

    Args:
        k: neighbours per point.
        widths: the EdgeConv layers' output widths.
        dim: the per-point feature size after the 1 x 1 mixing convolution.
        chunk: query points per block of the distance computation.
    """

    architecture = "dgcnn"

    def __init__(self, k: int = 16, widths: tuple[int, ...] = (64, 64, 128), dim: int = 256, chunk: int = 256):
        super().__init__()
        self.config = {"k": k, "widths": list(widths), "dim": dim, "chunk": chunk}
        self.k, self.chunk = k, chunk
        sizes = [3, *widths]
        self.edges = nn.ModuleList(EdgeConv(a, b, k) for a, b in zip(sizes[:-1], sizes[1:]))
        self.mix = SharedMLP([sum(widths), dim])
        self.point_dim, self.global_dim = dim, 2 * dim

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, outs = points, []
        for edge in self.edges:
            x = edge(x, self.chunk)
            outs.append(x)
        h = self.mix(torch.cat(outs, dim=-1))  # (B, N, dim)
        return h, torch.cat([h.max(dim=1).values, h.mean(dim=1)], dim=1)


HEADS = ("linear", "mlp")


class PointClassifier(nn.Module):
    """A point encoder (``forward(points) -> (per_point, global)``) with a classification head on its global
    feature.

    Args:
        encoder: a :mod:`gentune.models.points` encoder.
        num_classes: the classes.
        head: linear, or mlp (Linear-BatchNorm-ReLU-Dropout 0.5-Linear, hidden 256, as PointNet's classifier).
        linear_probe: freeze the encoder (no gradients, always in eval mode: its batch norms keep their statistics).
    """

    def __init__(self, encoder: nn.Module, num_classes: int, head: str = "linear", linear_probe: bool = False):
        super().__init__()
        d = encoder.global_dim
        if head == "linear":
            self.head = nn.Linear(d, num_classes)
        elif head == "mlp":
            self.head = nn.Sequential(nn.Linear(d, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(0.5),
                                      nn.Linear(256, num_classes))
        else:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        self.encoder, self.linear_probe, self.num_classes, self.head_kind = encoder, linear_probe, num_classes, head
        if linear_probe:
            encoder.requires_grad_(False)
            encoder.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.linear_probe:
            self.encoder.eval()
        return self

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) -> (B, num_classes) logits."""
        if self.linear_probe:
            with torch.no_grad():
                features = self.encoder(points)[1]
        else:
            features = self.encoder(points)[1]
        return self.head(features)



ENCODERS = {"pointnet": PointNet, "dgcnn": DGCNN}


def create_point_encoder(name: str, **options) -> nn.Module:
    """A point encoder by name (pointnet, dgcnn) with its options."""
    if name not in ENCODERS:
        raise GentuneError(f"unknown point encoder {name!r} (known: {', '.join(ENCODERS)})")
    try:
        return ENCODERS[name](**options)
    except TypeError as e:
        raise GentuneError(f"{name}: {e}") from None


__all__ = ["DGCNN", "ENCODERS", "HEADS", "EdgeConv", "PointClassifier", "PointNet", "SharedMLP", "create_point_encoder",
           "knn"]
