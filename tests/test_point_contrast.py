"""PointContrast's losses against literal formulas: PointInfoNCE on a small example and on identical views, and the
hardest-contrastive margins."""

from __future__ import annotations

import math

import pytest
import torch

from gentune.objectives.point_contrast import hardest_contrastive, point_info_nce


def test_point_info_nce_is_the_literal_formula():
    torch.manual_seed(0)
    f1, f2 = torch.randn(5, 4), torch.randn(5, 4)
    tau = 0.07

    def unit(v):
        return [x / math.sqrt(sum(y * y for y in v)) for x in v]

    a, b = [unit(r) for r in f1.tolist()], [unit(r) for r in f2.tolist()]
    total = 0.0
    for i in range(5):
        s = [sum(x * y for x, y in zip(a[i], b[k])) / tau for k in range(5)]
        total += -(s[i] - math.log(sum(math.exp(v) for v in s)))
    assert float(point_info_nce(f1, f2, tau)) == pytest.approx(total / 5, rel=1e-5)


def test_point_info_nce_of_identical_orthogonal_views():
    # one-hot features: the positive's similarity is 1, every negative's 0
    for m, tau in ((4, 0.07), (6, 0.5)):
        f = torch.eye(m)
        want = math.log(1 + (m - 1) * math.exp(-1 / tau))
        assert float(point_info_nce(f, f, tau)) == pytest.approx(want, rel=1e-5, abs=1e-7)  # float32 near 0
    f = torch.randn(8, 16)
    assert float(point_info_nce(f, f, 0.07)) < float(point_info_nce(f, torch.randn(8, 16), 0.07))


def test_hardest_contrastive_margins():
    # pair 0: features 0.2 apart (squared 0.04 < m_pos 0.1: no positive loss); pair 1: 1.0 apart (squared 1 - 0.1)
    f1 = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    f2 = torch.tensor([[0.2, 0.0], [1.0, 0.0]])
    pool1 = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    pool2 = torch.tensor([[0.2, 0.0], [0.0, 0.5]])
    # f1's rows: pool2[0] is row 0's own match (excluded); its hardest negative is pool2[1] at 0.5
    same1 = torch.tensor([[True, False], [False, False]])
    same2 = torch.tensor([[True, False], [False, False]])
    pos, neg = hardest_contrastive(f1, f2, pool1, pool2, same1, same2, m_pos=0.1, m_neg=1.4)
    assert float(pos) == pytest.approx((0.0 + 0.9) / 2)
    d12 = [0.5, 0.2]  # row 0: pool2[1]; row 1: min(0.2, 0.5)
    d21 = [2.8, 1.0]  # f2 row 0 (0.2, 0): pool1[0] excluded -> pool1[1] at 2.8; row 1: pool1[0] at 1.0
    want = 0.5 * (sum(max(1.4 - d, 0) ** 2 for d in d12) / 2 + sum(max(1.4 - d, 0) ** 2 for d in d21) / 2)
    assert float(neg) == pytest.approx(want, rel=1e-5)
