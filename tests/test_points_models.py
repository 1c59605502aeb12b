"""Point encoders (gentune.models.points): PointNet's permutation invariance, EdgeConv's k-NN against brute force
with only a chunk of the distances held, and DGCNN's shapes and equivariance."""

from __future__ import annotations

import pytest
import torch

from gentune.errors import GentuneError
from gentune.models.points import DGCNN, PointNet, create_point_encoder, knn


@pytest.mark.parametrize("name", ["pointnet", "dgcnn"])
def test_global_features_ignore_the_order_of_points_and_point_features_follow_it(name):
    torch.manual_seed(0)
    model = create_point_encoder(name, **({"k": 8} if name == "dgcnn" else {})).eval()
    x = torch.randn(2, 64, 3)
    perm = torch.randperm(64)
    with torch.no_grad():
        p, g = model(x)
        p2, g2 = model(x[:, perm])
    assert p.shape == (2, 64, model.point_dim) and g.shape == (2, model.global_dim)
    assert torch.allclose(g, g2, atol=1e-5) and torch.allclose(p[:, perm], p2, atol=1e-5)


def test_knn_matches_brute_force_and_holds_one_chunk_of_distances(monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(3, 100, 5, dtype=torch.float64)
    brute = ((x[:, :, None] - x[:, None]) ** 2).sum(-1).argsort(dim=-1)[..., :7]  # every pair, by hand
    seen = []
    real = torch.cdist

    def spy(a, b, *args, **kw):
        seen.append(tuple(a.shape[-2:]) + (b.shape[-2],))
        return real(a, b, *args, **kw)

    monkeypatch.setattr(torch, "cdist", spy)
    got = knn(x, 7, chunk=32)
    assert torch.equal(got, brute)
    assert seen and max(rows for rows, _, _ in seen) <= 32 and len(seen) == 4  # 100 queries in chunks of 32
    assert (got[..., 0] == torch.arange(100)).all()  # each point is its own nearest
    with pytest.raises(GentuneError, match="k must be"):
        knn(x, 101)


def test_pointnet_and_dgcnn_train_and_reject_unknown_options():
    torch.manual_seed(0)
    for model in (PointNet(widths=(16, 32)), DGCNN(k=4, widths=(8, 8), dim=16, chunk=8)):
        p, g = model(torch.randn(4, 20, 3))
        (p.sum() + g.sum()).backward()
        assert all(q.grad is not None for q in model.parameters())
    with pytest.raises(GentuneError, match="unknown point encoder"):
        create_point_encoder("pointnet++")
    with pytest.raises(GentuneError, match="dgcnn"):
        create_point_encoder("dgcnn", depth=3)
