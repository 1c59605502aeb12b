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


def test_per_class_and_mean_class_accuracy_by_hand():
    from accelerate import Accelerator

    from gentune.tasks.point_classification import evaluate_classifier

    class Fixed(torch.nn.Module):  # predicts class 0 for the first 3 shapes, class 1 after
        def forward(self, points):
            return torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 2)[: len(points)]

    batch = {"points": torch.zeros(5, 4, 3), "labels": torch.tensor([0, 0, 1, 1, 1])}
    got = evaluate_classifier(Fixed(), [batch], Accelerator(cpu=True), ["a", "b"])
    # a: 2 of 2 right; b: 2 of 3 right
    assert got["accuracy"] == pytest.approx(4 / 5) and got["accuracy_a"] == 1.0
    assert got["accuracy_b"] == pytest.approx(2 / 3) and got["mean_class_accuracy"] == pytest.approx(5 / 6)


def test_a_linear_probe_freezes_the_encoder_and_its_batch_norms():
    from gentune.models.points import PointClassifier

    torch.manual_seed(0)
    model = PointClassifier(PointNet(widths=(8, 16)), 3, linear_probe=True).train()
    stats = [m.running_mean.clone() for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    loss = model(torch.randn(4, 32, 3)).sum()
    loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters()) and model.head.weight.grad is not None
    after = [m.running_mean for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert all(torch.equal(a, b) for a, b in zip(stats, after))


def test_diagnose_reads_point_encoders_and_classifiers(tmp_path):
    """gentune diagnose serves point encoders: the complexity of their global features, and a fine-tuned point
    classifier's generalization gap from its run."""
    import numpy as np

    from gentune.config import apply_mapping
    from gentune.diagnose import diagnose
    from gentune.models.checkpoint import save_point_encoder
    from gentune.tasks.point_classification import TASK, PointClassificationConfig
    from gentune.train import run

    rng = np.random.default_rng(0)
    data = tmp_path / "points.npz"
    y = np.arange(24) % 2
    np.savez(data, x_train=(rng.normal(size=(24, 32, 3)) + y[:, None, None]).astype(np.float32), y_train=y,
             classes=np.array(["a", "b"]))
    torch.manual_seed(0)
    save_point_encoder(PointNet(widths=(8, 16)), tmp_path / "enc", {"points": 32})
    cfg = apply_mapping(PointClassificationConfig(), dict(data=str(data), out=str(tmp_path / "run"), val_size=6,
                                                          batch_size=6, max_steps=4, init=str(tmp_path / "enc"),
                                                          eval_every_epochs=0), "test")
    run(cfg, TASK.build)
    res = diagnose([str(tmp_path / "enc"), str(tmp_path / "run" / "best")], "point-classification", str(data),
                   str(tmp_path / "diag"), max_examples=20, n_sigma=8, mlp=False)
    enc, clf = res["checkpoints"]
    assert enc["kind"] == clf["kind"] == "point" and enc["dim"] == clf["dim"] == 16 and res["n"] == 20
    assert enc["complexity"]["linear"]["estimate"] > 0 and enc["gap"] is None
    assert set(clf["gap"]["train"]) >= {"accuracy", "mean_class_accuracy"} and "heldout" in clf["gap"]
    assert (tmp_path / "diag" / "report.html").is_file()
    with pytest.raises(GentuneError, match="cannot be diagnosed on task"):
        diagnose([str(tmp_path / "enc")], "image-classification", str(data), str(tmp_path / "d2"), mlp=False)
