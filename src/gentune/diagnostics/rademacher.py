"""Representation-induced Rademacher complexity of a head class on fixed downstream features (Deng, Hong, Zhou,
Mahdavi, "On the Generalization Ability of Unsupervised Pretraining", AISTATS 2024).

For features h_1..h_n (the pretrained encoder on n downstream inputs) and a head class F,

    R_hat(F o h) = E_sigma [ sup_{f in F} (1/n) sum_i sigma_i f(h_i) ],     sigma_i uniform in {-1, +1}.

The sup per sign vector: the closed form ``linear_complexity`` for linear heads, ``MLPHeads`` + ``ascent``
(projected gradient ascent) for two-layer ReLU heads. RadReg (``gentune.regularizers.radreg``) penalises the same
quantities during pretraining and imports them from here. The expectation over
sigma is a Monte Carlo mean (with a normal 95% interval), or exact by enumerating all 2^n sign vectors.

Bounds returned next to the estimate (bounds on the expectation over sigma, not on every sign vector):

- linear, ||theta||_2 <= B: E_sigma (B/n) ||sum_i sigma_i h_i|| <= (B/n) sqrt(sum_i ||h_i||^2) (Jensen), with
  equality for orthogonal features.
- MLP f(z) = w2^T relu(W1 z), ||W1||_F <= B, ||w2||_2 <= B: 2 B^2 sqrt(sum_i ||h_i||^2) / n. Derivation: write
  the rows of W1 as ||w_k|| u_k; relu is positively homogeneous, so sum_i sigma_i f(h_i) = sum_k w2_k ||w_k|| S(u_k)
  with S(u) = sum_i sigma_i relu(u^T h_i), and Cauchy-Schwarz gives sup_F = B^2 sup_{||u||<=1} |S(u)| (attained by
  one hidden unit, so any width >= 1 has the same complexity). E sup |S| <= E sup S + E sup (-S) = 2 E sup S
  (S(0) = 0 and sigma is symmetric), and Talagrand's contraction lemma (relu is 1-Lipschitz) gives
  E sup_u S(u) <= E sup_{||u||<=1} sum_i sigma_i u^T h_i = E ||sum_i sigma_i h_i|| <= sqrt(sum_i ||h_i||^2).
  The factor 2 is the price of the absolute value; the contraction-based bound usually quoted without it
  (B^2 sqrt(sum ||h_i||^2)/n) is the same bound up to this factor 2.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import GentuneError
from ..tensors import widen

HEADS = ("linear", "mlp")
MAX_EXHAUSTIVE = 16  # 2^16 = 65,536 sign vectors
_Z95 = 1.959963984540054  # the standard normal 0.975 quantile
_CHUNK = 1 << 22  # heads x samples x hidden units per batched ascent: ~32 MB of float64 activations


def _no_autocast(x: torch.Tensor):
    """Autocast off on ``x``'s device: under autocast the heads' einsums and the closed form's matmul would run in
    bf16 whatever dtype h has (about 1e-3 off on a 16-image batch; the MAE runs used bf16 autocast)."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def rademacher_signs(m: int, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """(m, n) independent uniform signs in {-1, +1} (float32)."""
    bits = torch.randint(0, 2, (m, n), generator=generator)
    return (bits * 2 - 1).float().to(device)


def normalize_scale(h: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """h / sqrt(mean_i ||h_i||^2): the batch's root-mean-square norm becomes 1, directions are unchanged.

    Args:
        h: (n, d) representations.
    """
    return h / (h.pow(2).sum(-1).mean() + eps).sqrt()


def linear_complexity(h: torch.Tensor, signs: torch.Tensor, bound: float = 1.0) -> torch.Tensor:
    """(1/m) sum_j (B/n) ||sum_i sigma_ji h_i||_2: the closed-form sup over linear heads with ||theta||_2 <= B.

    Args:
        h: (n, d) representations.
        signs: (m, n) Rademacher signs.
    """
    h = widen(h)
    with _no_autocast(h):
        return (bound / h.shape[0]) * (signs.to(h.dtype) @ h).norm(dim=-1).mean()


class LinearHeads(torch.nn.Module):
    """m linear heads theta_j (||theta_j||_2 <= bound), for the ascent path; the closed form is what training uses."""

    def __init__(self, m: int, dim: int, bound: float, generator: torch.Generator | None = None):
        super().__init__()
        self.bound = bound
        theta = torch.randn(m, dim, generator=generator)
        self.theta = torch.nn.Parameter(theta * (0.5 * bound / theta.norm(dim=1, keepdim=True)))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(n, d) -> (m, n), in h's precision (float32 for half-precision h) whatever the autocast."""
        h = widen(h)
        with _no_autocast(h):
            return self.theta.to(h.dtype) @ h.T

    @torch.no_grad()
    def project(self) -> None:
        norm = self.theta.norm(dim=1, keepdim=True)
        self.theta.mul_((self.bound / norm.clamp(min=1e-12)).clamp(max=1.0))


class MLPHeads(torch.nn.Module):
    """m two-layer ReLU heads d -> hidden -> 1 evaluated in one batched call; weights projected onto norm balls."""

    def __init__(self, m: int, dim: int, hidden: int, bound: float, generator: torch.Generator | None = None):
        super().__init__()
        self.bound = bound
        w1 = torch.randn(m, hidden, dim, generator=generator)
        w2 = torch.randn(m, hidden, generator=generator)
        self.w1 = torch.nn.Parameter(w1 * (0.5 * bound / w1[0].norm()))
        self.w2 = torch.nn.Parameter(w2 * (0.5 * bound / w2[0].norm()))
        self.project()  # a head drawn larger than head 0 would start outside its ball (and overstate the sup)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(n, d) -> (m, n): every head on every representation, in h's precision (float32 for half-precision h)
        whatever the autocast."""
        h = widen(h)
        with _no_autocast(h):
            hidden = torch.relu(torch.einsum("mkd,nd->mnk", self.w1.to(h.dtype), h))
            return torch.einsum("mnk,mk->mn", hidden, self.w2.to(h.dtype))

    @torch.no_grad()
    def revive(self, h: torch.Tensor) -> int:
        """Negate every hidden unit's W1 row that is inactive on all of ``h``; returns how many were.

        A ReLU unit with w^T h_i <= 0 on the whole batch outputs 0 and gets no gradient, so the ascent can never
        bring it back, and the encoder, descending on the same objective, can move the representations into every
        unit's dead half-space: on non-negative features (a ReLU network's) all units of all heads died within
        about 900 steps and the penalty was exactly 0 from then on, while the class's complexity was not.
        -w keeps the row's norm (the head stays in its ball) and is active wherever w was below 0, so a unit dead
        on the batch comes back active on it (unless it is orthogonal to every h_i); deterministic, so a resumed
        run continues exactly.
        """
        h = widen(h)
        with _no_autocast(h):
            dead = (torch.einsum("mkd,nd->mnk", self.w1.to(h.dtype), h) <= 0).all(dim=1)  # (m, hidden)
        self.w1[dead] *= -1
        return int(dead.sum())

    @torch.no_grad()
    def project(self) -> None:
        """Each head's W1 onto the Frobenius ball and w2 onto the l2 ball of radius ``bound``."""
        for w, dims in ((self.w1, (1, 2)), (self.w2, (1,))):
            norm = w.pow(2).sum(dims, keepdim=True).sqrt()
            w.mul_((self.bound / norm.clamp(min=1e-12)).clamp(max=1.0))


def head_objective(heads: torch.nn.Module, h: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """(1/m) sum_j (1/n) sum_i sigma_ji f_j(h_i), in the heads' output precision (they turn autocast off)."""
    values = heads(h)
    return (signs.to(values.dtype) * values).mean()


def ascent(heads: torch.nn.Module, h: torch.Tensor, signs: torch.Tensor, steps: int, lr: float, mu: float,
           normalized: bool = False) -> int:
    """T projected gradient-ascent steps of the heads on head_objective - (mu/2) ||theta||^2 (``h`` detached).
    MLP heads first revive their units dead on ``h`` (:meth:`MLPHeads.revive`); returns how many were revived.

    ``normalized``: each head's step on each weight is ``lr * bound`` long in the gradient's direction, whatever
    the gradient's size (on normalised features it is about 1/sqrt(n): plain steps would barely move).
    """
    h = widen(h.detach())
    with _no_autocast(h):  # the backward too: on the CPU it runs in this thread, under this thread's autocast
        return _ascent(heads, h, signs, steps, lr, mu, normalized)


def _ascent(heads: torch.nn.Module, h: torch.Tensor, signs: torch.Tensor, steps: int, lr: float, mu: float,
            normalized: bool) -> int:
    revived = 0
    for _ in range(steps):
        if isinstance(heads, MLPHeads):
            revived += heads.revive(h)
        params = list(heads.parameters())
        # the sum over heads: each head's ascent step does not depend on how many heads there are
        value = signs.shape[0] * head_objective(heads, h, signs) - 0.5 * mu * sum(p.pow(2).sum() for p in params)
        grads = torch.autograd.grad(value, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                if normalized:  # per head: the norm over all but the first (head) dimension
                    norm = g.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, *([1] * (g.ndim - 1)))
                    p.add_(g / norm, alpha=lr * heads.bound)
                else:
                    p.add_(g, alpha=lr)
        heads.project()
    return revived


def unit_values(u: torch.Tensor, h: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """(r,) (1/n) sum_i sigma_ri relu(u_r^T h_i) for directions u (r, d), features h (n, d) and signs (r, n).

    The sup of (1/n) sum_i sigma_i f(h_i) over the MLP class (||W1||_F <= B, ||w2||_2 <= B) is
    B^2 sup_{||u|| <= 1} |this| (one hidden unit attains it; see the module docstring).
    """
    with _no_autocast(h):
        return (signs.to(h.dtype) * torch.relu(u.to(h.dtype) @ h.T)).mean(-1)


def unit_supremum(h: torch.Tensor, signs: torch.Tensor, steps: int = 300, restarts: int = 32, lr: float = 0.5,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """sup_{||u|| <= 1} |(1/n) sum_i sigma_i relu(u^T h_i)| for each sign vector: (values (m,), directions u (m, d),
    orientation (m,) in {-1, +1}), with value = orientation * unit_values(u, h, signs) >= 0.

    ReLU is positively homogeneous, so the sup over the ball is 0 or attained on the sphere. Both signs of the
    objective are maximised (sup |S| = max(sup S, sup -S)); each from ``restarts`` starts on the sphere: the linear
    closed form's direction (the exact answer when every image ends up active) and ``restarts - 1`` Gaussian
    ones. A step moves u by ``lr`` (decaying linearly to 0) along the unit gradient
    sum_i sigma_i 1[u^T h_i > 0] h_i (closed form, no autograd) and back onto the sphere; the best point of each
    path counts, so the value is a lower estimate of the sup that never falls below its start. No gradient
    flows (``h`` is detached); float64 arithmetic for float64 ``h``, float32 otherwise, whatever the autocast.
    """
    h = widen(h.detach())
    m, n = signs.shape
    with torch.no_grad(), _no_autocast(h):
        s = torch.cat([signs, -signs]).to(h.dtype)  # rows m..2m-1: sup of -S
        linear = (s @ h).unsqueeze(1)  # (2m, 1, d)
        noise = torch.randn(2 * m, max(restarts, 1) - 1, h.shape[1], generator=generator).to(h)
        u = torch.nn.functional.normalize(torch.cat([linear, noise], 1), dim=-1)  # (2m, R, d)
        proj = u @ h.T  # (2m, R, n): one product per step, for the value and the next step's active set
        best = (s.unsqueeze(1) * torch.relu(proj)).mean(-1)  # (2m, R)
        best_u = u.clone()
        for t in range(steps):
            grad = (s.unsqueeze(1) * (proj > 0).to(h.dtype)) @ h  # (2m, R, d)
            step = lr * (1.0 - t / steps)
            u = torch.nn.functional.normalize(u + step * torch.nn.functional.normalize(grad, dim=-1), dim=-1)
            proj = u @ h.T
            value = (s.unsqueeze(1) * torch.relu(proj)).mean(-1)
            better = value > best
            best = torch.where(better, value, best)
            best_u = torch.where(better.unsqueeze(-1), u, best_u)
        per_row, which = best.max(1)  # the best restart of each of the 2m problems
        rows = best_u[torch.arange(2 * m), which]  # (2m, d)
        plus, minus = per_row[:m], per_row[m:]
        orientation = torch.where(minus > plus, -1.0, 1.0).to(h.dtype)
        directions = torch.where((minus > plus).unsqueeze(-1), rows[m:], rows[:m])
        values = torch.maximum(plus, minus).clamp(min=0.0)
    return values, directions, orientation


def as_features(x, name: str = "features") -> torch.Tensor:
    """A numpy array or torch tensor of shape (n, d) as a detached float64 CPU tensor; user errors raised."""
    try:
        t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float64))
    except (TypeError, ValueError) as e:
        raise GentuneError(f"{name}: not a numeric array ({e})") from None
    t = t.to(torch.float64)
    if t.ndim != 2:
        raise GentuneError(f"{name}: expected an (n, d) array of features, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise GentuneError(f"{name}: contains NaN or infinite values")
    return t


def all_signs(n: int) -> torch.Tensor:
    """(2^n, n) float64: every sign vector in {-1, +1}^n, once."""
    codes = torch.arange(2 ** n).unsqueeze(1)
    return (((codes >> torch.arange(n)) & 1) * 2 - 1).to(torch.float64)


def linear_values(h: torch.Tensor, signs: torch.Tensor, bound: float) -> torch.Tensor:
    """(m,) the closed-form sup over linear heads for each sign vector: ``linear_complexity`` row by row."""
    return torch.vmap(lambda s: linear_complexity(h, s.unsqueeze(0), bound))(signs)


def mlp_values(h: torch.Tensor, signs: torch.Tensor, bound: float, hidden: int, steps: int, lr: float,
               restarts: int, generator: torch.Generator) -> torch.Tensor:
    """(m,) lower estimates of sup_f (1/n) sum_i sigma_i f(h_i) over two-layer ReLU heads, one per sign vector.

    Fresh heads (``restarts`` per sign vector) run ``steps`` projected ascent steps; the best head counts, and
    never less than 0 (the zero head is in the class). A lower estimate: the ascent may stop short of the sup.
    The heads have no biases, so the sup is positively homogeneous in h: the ascent runs on h divided by its
    root-mean-square norm c and the values are multiplied by c, which makes the estimate (and how far it falls
    short of the sup) the same at every feature scale.
    """
    n = h.shape[0]
    scale = float(h.pow(2).sum(-1).mean().sqrt())
    if scale == 0.0:
        return torch.zeros(signs.shape[0], dtype=h.dtype)
    h = h / scale
    per_chunk = max(1, _CHUNK // (n * hidden * restarts))
    out = []
    for start in range(0, signs.shape[0], per_chunk):
        s = signs[start:start + per_chunk].repeat(restarts, 1)  # restart r of sign vector j at row r * m + j
        heads = MLPHeads(s.shape[0], h.shape[1], hidden, bound, generator).double()
        ascent(heads, h, s, steps, lr, mu=0.0)
        with torch.no_grad():
            value = (s * heads(h)).mean(1).view(restarts, -1).amax(0)
        out.append(value.clamp(min=0.0))
    return torch.cat(out) * scale


def rademacher_complexity(features, head: str = "linear", bound: float = 1.0, n_sigma: int = 200, seed: int = 0,
                          normalize: bool = False, hidden: int = 64, ascent_steps: int = 200,
                          ascent_lr: float = 0.5, exhaustive: bool = False, restarts: int = 1) -> dict:
    """Representation-induced Rademacher complexity (Deng, Hong, Zhou, Mahdavi, AISTATS 2024) of norm-bounded
    heads on fixed features.

    Args:
        features: (n, d) array or tensor, the representations of n downstream inputs.
        head: "linear" (||theta||_2 <= bound; exact sup per sign vector) or "mlp" (w2^T relu(W1 z) with
            ||W1||_F <= bound and ||w2||_2 <= bound; the sup by projected ascent, so a lower estimate of it).
        bound: B, the heads' norm bound.
        n_sigma: Monte Carlo sign vectors (at least 2); ignored when ``exhaustive``.
        seed: seeds the signs and the MLP heads' initialisation.
        normalize: divide the features by their root-mean-square norm first (``normalize_scale``), as RadReg does.
        hidden, ascent_steps, ascent_lr, restarts: the MLP heads' width, ascent steps, step size and random
            restarts per sign vector. Cost ~ n_sigma * restarts * ascent_steps * n * hidden * d.
        exhaustive: average over all 2^n sign vectors (n <= 16) instead of sampling: the exact expectation for
            linear heads; std_error is then 0.

    Returns:
        {"estimate", "std_error", "ci_low", "ci_high" (95% normal interval), "bound" (see the module docstring),
        "n", "head", "n_sigma" (sign vectors used), "exhaustive"}.
    """
    if head not in HEADS:
        raise GentuneError(f"rademacher_complexity: head must be one of {HEADS}, got {head!r}")
    if not bound > 0:
        raise GentuneError(f"rademacher_complexity: bound must be > 0, got {bound}")
    h = as_features(features)
    n = h.shape[0]
    if n < 2:
        raise GentuneError(f"rademacher_complexity: need at least 2 feature vectors, got {n}")
    if normalize:
        h = normalize_scale(h)
    if exhaustive:
        if n > MAX_EXHAUSTIVE:
            raise GentuneError(f"rademacher_complexity: exhaustive enumeration needs n <= {MAX_EXHAUSTIVE} "
                               f"(2^n sign vectors), got n = {n}; sample sign vectors with n_sigma instead")
        signs = all_signs(n)
    else:
        if n_sigma < 2:
            raise GentuneError(f"rademacher_complexity: n_sigma must be >= 2 (for a standard error), got {n_sigma}")
        signs = rademacher_signs(n_sigma, n, torch.Generator().manual_seed(seed)).to(torch.float64)
    if head == "linear":
        values = linear_values(h, signs, bound)
        upper = bound * math.sqrt(float(h.pow(2).sum())) / n
    else:
        if hidden < 1 or ascent_steps < 0 or restarts < 1:
            raise GentuneError("rademacher_complexity: hidden >= 1, ascent_steps >= 0 and restarts >= 1 needed")
        values = mlp_values(h, signs, bound, hidden, ascent_steps, ascent_lr, restarts,
                            torch.Generator().manual_seed(seed))
        upper = 2.0 * bound ** 2 * math.sqrt(float(h.pow(2).sum())) / n
    estimate = float(values.mean())
    std_error = 0.0 if exhaustive else float(values.std(unbiased=True)) / math.sqrt(len(values))
    return {"estimate": estimate, "std_error": std_error, "ci_low": estimate - _Z95 * std_error,
            "ci_high": estimate + _Z95 * std_error, "bound": upper, "n": n, "head": head,
            "n_sigma": int(signs.shape[0]), "exhaustive": bool(exhaustive)}


def default_sizes(total: int, start: int = 8) -> list[int]:
    """8, 16, 32, ... below ``total``, then ``total`` (or just ``total`` when it is below 8)."""
    sizes, n = [], start
    while n < total:
        sizes.append(n)
        n *= 2
    return sizes + [total]


def complexity_curve(features, sizes=None, seed: int = 0, **kw) -> list[dict]:
    """Rademacher complexity against the number of downstream samples (Deng, Hong, Zhou, Mahdavi, AISTATS 2024).

    Subsamples are nested (the first n of one seeded permutation), so the curve moves only with n, not with a
    fresh draw at every size.

    Args:
        features: (N, d) array or tensor.
        sizes: sample sizes n (each 2 <= n <= N); default ``default_sizes(N)``: 8, 16, ..., N.
        seed: seeds the permutation and every ``rademacher_complexity`` call.
        **kw: passed on to ``rademacher_complexity`` (head, bound, n_sigma, normalize, ...).

    Returns:
        One ``rademacher_complexity`` dict per size, in the order of ``sizes``.
    """
    h = as_features(features)
    total = h.shape[0]
    sizes = default_sizes(total) if sizes is None else [int(s) for s in sizes]
    bad = [s for s in sizes if not 2 <= s <= total]
    if bad:
        raise GentuneError(f"complexity_curve: sizes must lie in [2, {total}] (the number of features), got {bad}")
    order = torch.from_numpy(np.random.default_rng(seed).permutation(total))
    return [rademacher_complexity(h[order[:s]], seed=seed, **kw) for s in sizes]
