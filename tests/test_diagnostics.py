"""Diagnostics (Deng, Hong, Zhou, Mahdavi, AISTATS 2024): the Rademacher complexity against exhaustive enumeration,
closed forms (orthogonal and identical features) and the exact MLP sup in two dimensions; MMD against a literal
re-implementation and its permutation test under the null and a shift; the domain classifier; the transferability
fit on exact power laws; the signs of generalization gaps."""

import itertools
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from gentune.diagnostics import (complexity_curve, generalization_gap, heterogeneity, rademacher_complexity,
                                 transferability)
from gentune.errors import GentuneError
from gentune.diagnostics.rademacher import MLPHeads


def enumerated_linear(h: np.ndarray, bound: float) -> float:
    """E_sigma (B/n) ||sum_i sigma_i h_i|| over all 2^n sign vectors, by a plain loop."""
    n = len(h)
    return float(np.mean([bound / n * np.linalg.norm(np.array(s) @ h)
                          for s in itertools.product([-1.0, 1.0], repeat=n)]))


def mean_abs_sign_sum(n: int) -> float:
    """E |sigma_1 + ... + sigma_n| = n C(n-1, floor((n-1)/2)) / 2^(n-1)."""
    return n * math.comb(n - 1, (n - 1) // 2) / 2 ** (n - 1)


# ---------------------------------------------------------------- Rademacher complexity, linear heads

@pytest.mark.parametrize("n,d,bound", [(3, 2, 1.0), (7, 4, 2.5), (10, 3, 0.3)])
def test_exhaustive_linear_equals_enumeration_and_monte_carlo_agrees(n, d, bound):
    h = np.random.default_rng(n).normal(size=(n, d))
    exact = enumerated_linear(h, bound)
    got = rademacher_complexity(h, bound=bound, exhaustive=True)
    assert got["estimate"] == pytest.approx(exact, rel=1e-12)
    assert got["n_sigma"] == 2 ** n and got["std_error"] == 0 and got["ci_low"] == got["ci_high"] == got["estimate"]
    mc = rademacher_complexity(h, bound=bound, n_sigma=4000, seed=1)
    assert mc["n_sigma"] == 4000 and mc["std_error"] > 0
    assert abs(mc["estimate"] - exact) < 4 * mc["std_error"]
    assert mc["ci_high"] - mc["ci_low"] == pytest.approx(2 * 1.959964 * mc["std_error"], rel=1e-6)


def test_the_linear_bound_dominates_the_estimate():
    """Jensen: E ||sum sigma h|| <= sqrt(sum ||h||^2), for exact expectations; and for MC means where the gap
    is wide (n >> d <= 3: ||sum sigma h|| is then far from concentrated, e.g. E|N(0, 1)| = 0.80)."""
    for seed in range(30):
        rng = np.random.default_rng(seed)
        n, d = int(rng.integers(2, 11)), int(rng.integers(1, 9))
        h = rng.normal(size=(n, d)) * rng.uniform(0.1, 3.0, size=(n, 1))
        r = rademacher_complexity(h, bound=float(rng.uniform(0.5, 2)), exhaustive=True)
        assert r["estimate"] <= r["bound"] * (1 + 1e-12)
        big = rng.normal(size=(int(rng.integers(20, 200)), int(rng.integers(1, 4))))
        r = rademacher_complexity(big, n_sigma=100, seed=seed)
        assert r["estimate"] <= r["bound"]


def test_orthogonal_features_of_equal_norm_attain_the_bound_for_every_sign_vector():
    """||sum sigma_i h_i||^2 = sum ||h_i||^2 for orthogonal h_i: each sign vector gives B sqrt(n) c / n."""
    n, d, c, bound = 6, 10, 3.0, 1.7
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(d, n)))
    h = c * q.T  # n orthogonal rows of norm c
    want = bound * c / math.sqrt(n)
    for kw in ({"exhaustive": True}, {"n_sigma": 50, "seed": 3}):
        r = rademacher_complexity(h, bound=bound, **kw)
        assert r["bound"] == pytest.approx(want, rel=1e-12)
        assert r["estimate"] == pytest.approx(want, rel=1e-12)
        assert r["std_error"] < 1e-12


@pytest.mark.parametrize("n", [1 + 1, 9, 10, 16])
def test_identical_features_give_the_mean_absolute_sign_sum(n):
    z = np.array([0.5, -2.0, 1.0])
    r = rademacher_complexity(np.tile(z, (n, 1)), bound=2.0, exhaustive=True)
    binomial = sum(math.comb(n, k) * abs(2 * k - n) for k in range(n + 1)) / 2 ** n  # enumeration by counts
    assert mean_abs_sign_sum(n) == pytest.approx(binomial, rel=1e-12)
    assert r["estimate"] == pytest.approx(2.0 * np.linalg.norm(z) * binomial / n, rel=1e-12)
    assert r["bound"] == pytest.approx(2.0 * np.linalg.norm(z) / math.sqrt(n), rel=1e-12)


def test_identical_features_fall_like_one_over_root_n():
    z = np.array([1.0, 2.0])
    small = rademacher_complexity(np.tile(z, (16, 1)), n_sigma=4000, seed=0)
    large = rademacher_complexity(np.tile(z, (64, 1)), n_sigma=4000, seed=1)
    exact = (mean_abs_sign_sum(16) / 16) / (mean_abs_sign_sum(64) / 64)  # 1.976
    ratio = small["estimate"] / large["estimate"]
    assert ratio == pytest.approx(exact, abs=0.08)
    assert ratio == pytest.approx(2.0, abs=0.12)


def test_numpy_and_torch_inputs_agree_and_normalize_takes_the_scale_out():
    h = np.random.default_rng(5).normal(size=(30, 4))
    a = rademacher_complexity(h, n_sigma=64)
    assert rademacher_complexity(torch.tensor(h, dtype=torch.float64), n_sigma=64) == a
    assert rademacher_complexity(torch.tensor(h, requires_grad=True), n_sigma=64) == a
    norm = rademacher_complexity(h, n_sigma=64, normalize=True)
    scaled = rademacher_complexity(0.1 * h, n_sigma=64, normalize=True)  # (normalize_scale adds eps 1e-12)
    assert scaled["estimate"] == pytest.approx(norm["estimate"], rel=1e-9)
    assert norm["bound"] == pytest.approx(1 / math.sqrt(30), rel=1e-12)  # unit RMS norm: sqrt(sum ||h||^2) = sqrt(n)
    rms = math.sqrt((h ** 2).sum(1).mean())
    assert norm["estimate"] == pytest.approx(a["estimate"] / rms, rel=1e-9)
    json.dumps(a)


def test_complexity_curve_is_the_estimate_on_nested_seeded_subsamples():
    h = np.random.default_rng(6).normal(size=(50, 3))
    curve = complexity_curve(h, n_sigma=40, seed=2)
    assert [c["n"] for c in curve] == [8, 16, 32, 50]
    order = np.random.default_rng(2).permutation(50)
    for c in curve:
        assert c == rademacher_complexity(h[order[:c["n"]]], n_sigma=40, seed=2)
    assert curve[-1]["estimate"] < curve[0]["estimate"]  # more samples, smaller complexity
    assert [c["n"] for c in complexity_curve(h, sizes=[5, 50], n_sigma=8)] == [5, 50]
    with pytest.raises(GentuneError, match="sizes"):
        complexity_curve(h, sizes=[51])
    json.dumps(curve)


def test_user_errors():
    h = np.zeros((20, 3))
    with pytest.raises(GentuneError, match="head"):
        rademacher_complexity(h, head="conv")
    with pytest.raises(GentuneError, match="n <= 16"):
        rademacher_complexity(h, exhaustive=True)
    with pytest.raises(GentuneError, match="shape"):
        rademacher_complexity(np.zeros(5))
    with pytest.raises(GentuneError, match="n_sigma"):
        rademacher_complexity(h, n_sigma=1)
    with pytest.raises(GentuneError, match="NaN"):
        rademacher_complexity(np.full((4, 2), np.nan))


# ---------------------------------------------------------------- Rademacher complexity, MLP heads

def exact_mlp_2d(h: np.ndarray, bound: float, grid: int = 200_001) -> float:
    """Exact E_sigma sup over {w2^T relu(W1 z): ||W1||_F, ||w2|| <= B} for 2-d features, enumerating sigma.

    Per sign vector the sup is B^2 max_{||u||=1} |sum_i sigma_i relu(u^T h_i)| / n (module docstring of
    gentune.diagnostics.rademacher); u runs over a fine grid of angles (error ~ grid spacing^2 at smooth maxima).
    """
    n = len(h)
    angles = np.linspace(0, 2 * np.pi, grid)
    relu = np.maximum(h @ np.stack([np.cos(angles), np.sin(angles)]), 0)  # (n, grid)
    signs = np.array(list(itertools.product([-1.0, 1.0], repeat=n)))
    return float((bound ** 2 * np.abs(signs @ relu).max(1) / n).mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_mlp_ascent_reaches_the_exact_sup_in_two_dimensions(seed):
    h = np.random.default_rng(seed).normal(size=(8, 2))
    exact = exact_mlp_2d(h, 1.5)
    r = rademacher_complexity(h, head="mlp", bound=1.5, exhaustive=True, hidden=8, ascent_steps=200, restarts=2)
    assert r["estimate"] <= exact + 1e-9  # a lower estimate of the sup: never above it
    assert r["estimate"] >= 0.98 * exact
    assert r["bound"] == pytest.approx(2 * 1.5 ** 2 * np.sqrt((h ** 2).sum()) / 8, rel=1e-12)
    assert exact <= r["bound"]


@pytest.mark.parametrize("scale", [0.01, 100.0])
def test_mlp_estimate_is_scale_equivariant(scale):
    """The sup over bias-free ReLU heads is positively homogeneous in h, and so is the estimate: at a feature
    scale of 0.01 or 100 it still reaches the exact sup (plain ascent steps on raw features stalled at 12% of it
    at 0.01)."""
    h = np.random.default_rng(0).normal(size=(8, 2))
    exact = exact_mlp_2d(h, 1.5)
    r = rademacher_complexity(scale * h, head="mlp", bound=1.5, exhaustive=True, hidden=8, ascent_steps=200,
                              restarts=2)
    assert 0.98 * scale * exact <= r["estimate"] <= scale * exact * (1 + 1e-9)


def test_relu_mlp_heads_with_bound_sqrt_2b_contain_the_linear_heads_with_bound_b():
    """theta^T z = (1/c) relu(c theta^T z) - (1/c) relu(-c theta^T z); with c = ||theta||^(-1/2) both
    ||W1||_F = ||(c theta, -c theta)||_F and ||w2|| = ||(1/c, -1/c)|| equal sqrt(2 ||theta||): linear heads with
    ||theta|| <= B lie in the MLP class (hidden >= 2) with bound sqrt(2 B). So R_mlp(sqrt(2B)) >= R_linear(B)."""
    rng = np.random.default_rng(7)
    d, b_lin = 5, 1.0
    theta = torch.tensor(rng.normal(size=d))
    theta *= b_lin / theta.norm()
    c = theta.norm() ** -0.5
    heads = MLPHeads(1, d, 2, math.sqrt(2 * b_lin)).double()
    with torch.no_grad():
        heads.w1.copy_(torch.stack([c * theta, -c * theta])[None])
        heads.w2.copy_(torch.tensor([[1 / c, -1 / c]]))
    z = torch.tensor(rng.normal(size=(20, d)))
    before = [p.clone() for p in heads.parameters()]
    heads.project()  # already inside both balls: unchanged
    assert all(torch.allclose(p, q, rtol=1e-12) for p, q in zip(heads.parameters(), before))
    assert torch.allclose(heads(z)[0], z @ theta, rtol=1e-12)

    h = rng.normal(size=(9, d))
    linear = rademacher_complexity(h, bound=b_lin, exhaustive=True)
    mlp = rademacher_complexity(h, head="mlp", bound=math.sqrt(2 * b_lin), exhaustive=True, hidden=16,
                                ascent_steps=150)
    assert mlp["estimate"] >= 0.99 * linear["estimate"]
    assert mlp["estimate"] <= mlp["bound"]


# ---------------------------------------------------------------- heterogeneity

def literal_mmd2(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) with the median-heuristic RBF kernel, by loops."""
    pooled = np.concatenate([a, b])
    dist = [np.linalg.norm(pooled[i] - pooled[j]) for i in range(len(pooled)) for j in range(i + 1, len(pooled))]
    bw = float(np.median(dist))

    def k(x, y):
        return math.exp(-np.sum((x - y) ** 2) / (2 * bw ** 2))

    m, n = len(a), len(b)
    xx = sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(b[i], b[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(a[i], b[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy, bw


def test_mmd_and_its_permutation_p_value_equal_a_literal_reimplementation():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 3)), rng.normal(size=(7, 3)) + 0.7
    want, bw = literal_mmd2(a, b)
    got = heterogeneity(a, b, n_permutations=150, seed=4)
    assert got["mmd2"] == pytest.approx(want, rel=1e-10)
    assert got["bandwidth"] == pytest.approx(bw, rel=1e-12)
    # the permutation test, literally: the same generator stream relabels the pooled sample
    perm_rng = np.random.default_rng(4)
    labels = np.r_[np.ones(6), np.zeros(7)]
    pooled = np.concatenate([a, b])
    stats_ = [literal_mmd2(pooled[p == 1], pooled[p == 0])[0] for p in
              (perm_rng.permutation(labels) for _ in range(150))]
    assert got["p_value"] == pytest.approx((1 + sum(s >= want - 1e-12 for s in stats_)) / 151, rel=1e-12)
    assert (got["n_a"], got["n_b"], got["n_permutations"]) == (6, 7, 150)
    json.dumps(got)


def test_mmd_under_the_null_is_near_zero_with_roughly_uniform_p_values():
    p_values, mmds = [], []
    for rep in range(20):
        rng = np.random.default_rng(100 + rep)
        r = heterogeneity(rng.normal(size=(60, 4)), rng.normal(size=(60, 4)), n_permutations=100, seed=rep)
        p_values.append(r["p_value"])
        mmds.append(r["mmd2"])
    assert 0.25 <= np.mean(p_values) <= 0.75
    assert np.mean(np.array(p_values) < 0.1) < 0.4
    assert max(abs(m) for m in mmds) < 0.05
    shifted = heterogeneity(rng.normal(size=(60, 4)), rng.normal(size=(60, 4)) + 1.0, n_permutations=100)
    assert shifted["p_value"] < 0.05 and shifted["mmd2"] > 0.2


def test_domain_classifier_is_at_chance_for_one_distribution_and_perfect_for_separated_ones():
    rng = np.random.default_rng(1)
    same = heterogeneity(rng.normal(size=(200, 5)), rng.normal(size=(200, 5)), n_permutations=0)
    assert same["p_value"] is None and same["domain_chance"] == 0.5
    assert abs(same["domain_accuracy"] - 0.5) < 0.08
    far = heterogeneity(rng.normal(size=(200, 5)), rng.normal(size=(150, 5)) + 4.0, n_permutations=0)
    assert far["domain_accuracy"] > 0.97 and far["domain_chance"] == pytest.approx(200 / 350)


def test_heterogeneity_subsamples_and_refuses_bad_input():
    rng = np.random.default_rng(2)
    r = heterogeneity(torch.tensor(rng.normal(size=(300, 3))), rng.normal(size=(40, 3)), max_samples=100,
                      n_permutations=10)
    assert (r["n_a"], r["n_b"]) == (100, 40)
    with pytest.raises(GentuneError, match="feature sizes"):
        heterogeneity(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(GentuneError, match="at least 5"):
        heterogeneity(np.zeros((10, 3)), np.zeros((4, 3)))


# ---------------------------------------------------------------- transferability and gaps

@pytest.mark.parametrize("beta,c", [(0.5, 2.0), (2.0, 0.1), (1.0, 1.0)])
def test_transferability_recovers_an_exact_power_law(beta, c):
    pre = np.array([0.05, 0.1, 0.3, 0.7, 1.5, 0.0, -1.0])
    down = c * np.abs(pre) ** beta
    r = transferability(pre, down, names=list("abcdefg"))
    assert r["beta"] == pytest.approx(beta, rel=1e-10) and r["c_beta"] == pytest.approx(c, rel=1e-10)
    assert r["r2"] == pytest.approx(1.0) and r["spearman"] == pytest.approx(1.0)
    assert r["n"] == 5 and r["names"] == list("abcde") and r["dropped"] == ["f", "g"]
    assert np.allclose(r["residuals"], 0, atol=1e-12)
    json.dumps(r)


def test_transferability_on_noisy_data_matches_a_log_log_polyfit():
    rng = np.random.default_rng(3)
    pre = rng.uniform(0.05, 1.0, size=12)
    down = 0.5 * pre ** 1.5 * np.exp(rng.normal(scale=0.2, size=12))
    r = transferability(torch.tensor(pre), down)
    slope, intercept = np.polyfit(np.log(pre), np.log(down), 1)
    assert r["beta"] == pytest.approx(slope, rel=1e-9) and r["c_beta"] == pytest.approx(np.exp(intercept), rel=1e-9)
    fitted = intercept + slope * np.log(pre)
    assert np.allclose(r["residuals"], np.log(down) - fitted, atol=1e-10)
    assert r["r2"] == pytest.approx(np.corrcoef(np.log(pre), np.log(down))[0, 1] ** 2, rel=1e-9)
    assert r["spearman"] == pytest.approx(stats.spearmanr(pre, down)[0], rel=1e-12)


def test_transferability_errors():
    with pytest.raises(GentuneError, match="at least 3 pairs"):
        transferability([0.1, 0.2, 0.0], [0.1, 0.3, 0.5])
    with pytest.raises(GentuneError, match="3 pretraining values but 2"):
        transferability([0.1, 0.2, 0.3], [0.1, 0.3])
    with pytest.raises(GentuneError, match="equal"):
        transferability([0.2, 0.2, 0.2], [0.1, 0.3, 0.5])


def test_generalization_gap_signs():
    train = {"loss": 0.2, "accuracy": 0.95, "f1": 0.9, "eval_loss": 0.1, "epoch": 3.0, "note": "x", "only": 1.0}
    heldout = {"loss": 0.5, "accuracy": 0.80, "f1": np.float32(0.95), "eval_loss": torch.tensor(0.05),
               "epoch": 3.0, "note": "y"}
    gaps = generalization_gap(train, heldout)
    assert set(gaps) == {"loss_gap", "accuracy_gap", "f1_gap", "eval_loss_gap"}
    assert gaps["loss_gap"] == pytest.approx(0.3)  # worse held out: positive
    assert gaps["accuracy_gap"] == pytest.approx(0.15)  # worse held out: positive
    assert gaps["f1_gap"] == pytest.approx(-0.05)  # better held out: negative
    assert gaps["eval_loss_gap"] == pytest.approx(-0.05)
    json.dumps(gaps)


# ------------------------------------------------------------------------------------------- feature spread


def test_feature_spread_against_closed_forms():
    from gentune.diagnostics import feature_spread

    same = np.tile([[3.0, -4.0]], (10, 1))  # every example the same point: nothing varies
    assert feature_spread(same) == {"spread": 0.0, "effective_rank": 0.0, "n": 10, "dim": 2}
    inexact = np.tile([[0.1, 0.7, 1 / 3]], (3, 1))  # a mean that float64 cannot hold exactly: still nothing
    assert feature_spread(inexact)["effective_rank"] == 0.0
    # two examples m +- v: tr(C) = ||v||^2, mean squared norm = ||m||^2 + ||v||^2, one direction of variation
    m, v = np.array([1.0, 2.0, 0.0]), np.array([0.0, 0.0, 2.0])
    got = feature_spread(np.stack([m + v, m - v]))
    assert got["spread"] == pytest.approx(4.0 / (5.0 + 4.0), rel=1e-12)
    assert got["effective_rank"] == pytest.approx(1.0, rel=1e-12)
    # centred, isotropic: spread 1, effective rank = the dimension (the +-e_k of each axis)
    eye = np.eye(4)
    got = feature_spread(np.concatenate([eye, -eye]))
    assert got["spread"] == pytest.approx(1.0, rel=1e-12)
    assert got["effective_rank"] == pytest.approx(4.0, rel=1e-12)
    # variances 3:1 on two centred axes: exp of the entropy of (3/4, 1/4)
    x = np.array([[3 ** 0.5, 0.0], [-(3 ** 0.5), 0.0], [0.0, 1.0], [0.0, -1.0]])
    p = np.array([0.75, 0.25])
    assert feature_spread(x)["effective_rank"] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-12)


def test_feature_spread_is_scale_free_and_sees_a_shrinking_variation():
    from gentune.diagnostics import feature_spread

    rng = np.random.default_rng(0)
    h = rng.normal(size=(200, 16)) + 2.0
    base = feature_spread(h)
    assert feature_spread(1e-3 * h)["spread"] == pytest.approx(base["spread"], rel=1e-9)
    assert feature_spread(1e-3 * h)["effective_rank"] == pytest.approx(base["effective_rank"], rel=1e-9)
    # the examples pulled towards their mean by 100x (what a collapse does): tr(C) falls by 10^4, so the spread is
    # 1e-4 tr(C) / (||m||^2 + 1e-4 tr(C)), at the same rank
    mean = h.mean(0)
    shrunk = feature_spread(mean + 0.01 * (h - mean))
    trace = float(((h - mean) ** 2).sum(1).mean())
    assert shrunk["spread"] == pytest.approx(1e-4 * trace / (float(mean @ mean) + 1e-4 * trace), rel=1e-9)
    assert shrunk["effective_rank"] == pytest.approx(base["effective_rank"], rel=1e-9)
    with pytest.raises(GentuneError, match="at least 2"):
        feature_spread(h[:1])
