"""RadReg: Rademacher representation regularization during pretraining (Deng, Hong, Zhou, Mahdavi, "On the
Generalization Ability of Unsupervised Pretraining", AISTATS 2024).

Pretraining minimises L_pre(h, g) + lambda * R_hat(h), with the representation-induced Rademacher complexity of
the downstream head class F on n unlabeled downstream inputs

    R_hat(h) = E_sigma [ sup_{f in F} (1/n) sum_i sigma_i f(h~(x_i)) ],     sigma_i uniform in {-1, +1},

estimated with m sign vectors per step. h~ is the representation with its scale taken out (``normalize``, on by
default): h~_i = h_i / sqrt((1/n) sum_j ||h_j||^2). R_hat of h~ does not change when h is multiplied by any c > 0,
so the penalty cannot be met by shrinking the features (which a decoder would undo at no cost).

- Linear heads, ||theta||_2 <= B: sup_theta (1/n) sum_i sigma_i theta^T h~_i = (B/n) ||sum_i sigma_i h~_i||_2,
  a closed form, differentiable in h.
- Two-layer MLP heads f(z) = w2^T relu(W1 z) with ||W1||_F <= B and ||w2||_2 <= B: m head copies, each step T
  projected gradient-ascent steps on (1/n) sum_i sigma_ij f_j(h~_i) - (mu/2) ||theta_j||^2, warm-started from the
  previous step (stochastic gradient descent-ascent); the encoder then gets the gradient of
  lambda * (1/m) sum_j (1/n) sum_i sigma_ij f_j(h~_i) at the current heads.

The downstream images are their own stream (``data``), cycled with the regularizer's own generator and saved in
its state, so a resumed run continues exactly. Under DDP each process encodes its share of the downstream batch
(``RadReg._features``), so the regularizer's cost per process falls with the number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import GentuneError
from ..registry import register
from ._common import unwrap, widen

HEADS = ("linear", "mlp", "linear-ascent")  # linear-ascent: linear heads by ascent, to check it against the closed form


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
    return (bound / h.shape[0]) * (signs.to(h.dtype) @ h).norm(dim=-1).mean()


class LinearHeads(torch.nn.Module):
    """m linear heads theta_j (||theta_j||_2 <= bound), for the ascent path; the closed form is what training uses."""

    def __init__(self, m: int, dim: int, bound: float, generator: torch.Generator | None = None):
        super().__init__()
        self.bound = bound
        theta = torch.randn(m, dim, generator=generator)
        self.theta = torch.nn.Parameter(theta * (0.5 * bound / theta.norm(dim=1, keepdim=True)))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(n, d) -> (m, n)."""
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
        """(n, d) -> (m, n): every head on every representation."""
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
    """(1/m) sum_j (1/n) sum_i sigma_ji f_j(h_i)."""
    return (signs.to(h.dtype) * heads(h)).mean()


def ascent(heads: torch.nn.Module, h: torch.Tensor, signs: torch.Tensor, steps: int, lr: float, mu: float,
           normalized: bool = False) -> int:
    """T projected gradient-ascent steps of the heads on head_objective - (mu/2) ||theta||^2 (``h`` detached).
    MLP heads first revive their units dead on ``h`` (:meth:`MLPHeads.revive`); returns how many were revived.

    ``normalized``: each head's step on each weight is ``lr * bound`` long in the gradient's direction, whatever
    the gradient's size (on normalised features it is about 1/sqrt(n): plain steps would barely move).
    """
    h = h.detach()
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


class _GatherShares(torch.autograd.Function):
    """Every process's (share, d) block, concatenated in rank order; the backward sums the gradient over processes
    and returns this process's rows."""

    @staticmethod
    def forward(ctx, share: torch.Tensor) -> torch.Tensor:
        dist = torch.distributed
        parts = [torch.empty_like(share) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, share.contiguous())
        ctx.rows = (dist.get_rank() * len(share), (dist.get_rank() + 1) * len(share))
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        torch.distributed.all_reduce(grad)
        return grad[ctx.rows[0]:ctx.rows[1]]


@dataclass
class RadRegConfig:
    weight: float = 0.1  # lambda
    data: str = ""  # unlabeled downstream images (folder or archive); required
    head: str = "linear"  # linear (closed form) | mlp (ascent) | linear-ascent
    samples: int = 4  # m, sign vectors per step
    batch_size: int = 16  # n, downstream images per step (a full encoder pass each: the main cost)
    bound: float = 1.0  # B
    normalize: bool = True  # take the representation's scale out (see the module docstring)
    hidden: int = 64  # mlp heads
    ascent_steps: int = 1  # T
    ascent_lr: float = 0.2  # normalised steps: lr * bound long
    mu: float = 0.0  # the heads' ridge term in the ascent
    seed: int = 0
    image_size: int | None = None  # filled in by the pretraining job (the pretraining images' size)
    mean: list[float] | None = None  # filled in by the pretraining job (its pixel normalisation)
    std: list[float] | None = None


@register("regularizer", "radreg", RadRegConfig)
class RadReg:
    """RadReg: penalise the Rademacher complexity of downstream heads during pretraining (Deng et al., AISTATS 2024).

    The complexity is the representation-induced one, on a stream of unlabeled downstream images.

    The model must expose the encoder as ``model.encoder`` with ``forward_features`` (the pretraining models do),
    or ``forward_features`` itself. ``images`` (a uint8 (N, H, W, 3) array or tensor) may replace ``data``.
    """

    def __init__(self, weight: float = 0.1, data: str = "", head: str = "linear", samples: int = 4,
                 batch_size: int = 16, bound: float = 1.0, normalize: bool = True, hidden: int = 64,
                 ascent_steps: int = 1, ascent_lr: float = 0.2, mu: float = 0.0, seed: int = 0,
                 image_size: int | None = None, mean: list[float] | None = None, std: list[float] | None = None,
                 images=None):
        if head not in HEADS:
            raise ValueError(f"radreg: head must be one of {HEADS}, got {head!r}")
        if not data and images is None:
            raise ValueError("radreg: data is required (--set radreg.data=PATH: the downstream images, unlabeled)")
        if samples < 1 or batch_size < 2 or bound <= 0 or ascent_steps < 0:
            raise ValueError("radreg: samples >= 1, batch_size >= 2, bound > 0 and ascent_steps >= 0")
        self.weight, self.data, self.head, self.m, self.n = weight, data, head, samples, batch_size
        self.bound, self.normalize, self.hidden = bound, normalize, hidden
        self.steps, self.lr, self.mu = ascent_steps, ascent_lr, mu
        self.image_size, self.mean, self.std = image_size, mean, std
        self.generator = torch.Generator().manual_seed(seed)  # downstream batches and signs
        self.seed = seed
        self._images = None if images is None else torch.as_tensor(images)
        self._order: torch.Tensor | None = None  # the current pass over the downstream images
        self._pos = 0
        self._pool_signs: torch.Tensor | None = None  # (m, N): ascent heads' fixed sign per downstream image
        self.heads: MLPHeads | None = None
        self._pending: dict | None = None
        self.last: float | None = None  # the unweighted estimate of the last step, for the log
        self.revived: int | None = None  # MLP heads: hidden units revived in the last step, for the log

    def _batch(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised images (n, 3, H, W), their indices in the downstream pool)."""
        if self._images is None:
            from ..data.images import load_images

            if self.mean is None:
                raise GentuneError("radreg: no pixel normalisation (mean, std) for its images: use it in gentune "
                                   "pretrain or image fine-tuning, or set radreg.mean and radreg.std")

            self._images = torch.from_numpy(load_images(self.data, image_size=self.image_size).images)
        picked = []
        while sum(len(p) for p in picked) < self.n:  # cycle: a fresh permutation after every pass
            if self._order is None or self._pos >= len(self._order):
                self._order, self._pos = torch.randperm(len(self._images), generator=self.generator), 0
            take = self._order[self._pos:self._pos + self.n - sum(len(p) for p in picked)]
            picked.append(take)
            self._pos += len(take)
        idx = torch.cat(picked)
        x = self._images[idx].to(device).permute(0, 3, 1, 2).float() / 255.0
        if self.mean is not None:
            mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
            x = (x - mean) / torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        return x, idx

    @staticmethod
    def _features(encoder, x: torch.Tensor) -> torch.Tensor:
        """h(x) of the whole downstream batch. Under torch.distributed every process draws the same batch, encodes
        only its 1/P share and gathers the others' with their gradients, so each holds the h one process would.

        The gradient stays exact: every process computes the same penalty, so the gather's backward (a sum over
        processes) hands each share P times its gradient, and DDP's average over processes divides it back. A
        batch that does not split evenly is encoded whole on every process (correct, P times the work).
        """
        dist = torch.distributed
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if world == 1 or len(x) % world:
            return encoder.forward_features(x)
        share, rank = len(x) // world, dist.get_rank()
        return _GatherShares.apply(encoder.forward_features(x[rank * share:(rank + 1) * share]))

    def __call__(self, model, batch: dict, outputs) -> dict[str, torch.Tensor]:
        inner = unwrap(model)
        encoder = getattr(inner, "encoder", inner)
        device = next(encoder.parameters()).device
        x, idx = self._batch(device)
        h = widen(self._features(encoder, x))
        if self.normalize:
            h = normalize_scale(h)
        if self.head == "linear":  # the closed form: fresh signs every step
            estimate = linear_complexity(h, rademacher_signs(self.m, self.n, self.generator, device), self.bound)
        else:
            # Ascent heads need a target that holds still while they track it: each head j keeps one sign per
            # downstream image (drawn once from the seed), so it ascends (1/N) sum_pool sigma_ji f_j(h~_i) through
            # minibatches (stochastic gradient descent-ascent on the pool's complexity with m sign vectors).
            if self._pool_signs is None:
                self._pool_signs = rademacher_signs(self.m, len(self._images),
                                                    torch.Generator().manual_seed(self.seed + 2))
            signs = self._pool_signs[:, idx].to(device)
            if self.heads is None:
                # initialised from their own generator: a restored run (heads loaded lazily) draws the same signs
                init = torch.Generator().manual_seed(self.seed + 1)
                self.heads = (MLPHeads(self.m, h.shape[-1], self.hidden, self.bound, init)
                              if self.head == "mlp" else LinearHeads(self.m, h.shape[-1], self.bound, init))
                self.heads = self.heads.to(device)
                if self._pending is not None:
                    self.heads.load_state_dict(self._pending)
                    self._pending = None
            self.revived = ascent(self.heads, h, signs, self.steps, self.lr, self.mu, normalized=True)
            estimate = head_objective(self.heads, h, signs)
        self.last = float(estimate.detach())
        return {"radreg": self.weight * estimate}

    def log(self) -> dict[str, float]:
        """Extra values for the training log: the unweighted complexity estimate."""
        out = {} if self.last is None else {"radreg_complexity": self.last}
        if self.revived is not None:
            out["radreg_revived_units"] = float(self.revived)
        return out

    def state_dict(self) -> dict:
        # a copy: the ascent updates the heads in place after the state is taken
        heads = self._pending if self.heads is None else {k: v.clone() for k, v in self.heads.state_dict().items()}
        return {"generator": self.generator.get_state(), "heads": heads, "order": self._order, "pos": self._pos}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self._order, self._pos = state["order"], state["pos"]
        if self.heads is not None and state["heads"] is not None:
            self.heads.load_state_dict(state["heads"])
        else:
            self._pending = state["heads"]
