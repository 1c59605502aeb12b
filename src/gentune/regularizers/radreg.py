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
- Two-layer MLP heads f(z) = w2^T relu(W1 z) with ||W1||_F <= B and ||w2||_2 <= B, two estimators:
  ``estimator=heads``: m head copies, each step T projected gradient-ascent steps on
  (1/n) sum_i sigma_ij f_j(h~_i) - (mu/2) ||theta_j||^2, warm-started from the previous step (stochastic gradient
  descent-ascent); the encoder then gets the gradient of lambda * (1/m) sum_j (1/n) sum_i sigma_ij f_j(h~_i) at the
  current heads. The signs are one per downstream image and head (``signs=pool``), or fresh every step.
  ``estimator=unit``: the sup over the class is B^2 sup_{||u||<=1} |(1/n) sum_i sigma_i relu(u^T h~_i)| (one hidden
  unit attains it), so fresh signs every step and T steps of the closed-form single-unit ascent
  (:func:`~gentune.diagnostics.rademacher.unit_supremum`, started from the linear closed form's direction) find it
  on the batch itself; the encoder gets the gradient at the unit found (Danskin's theorem: the gradient of a max
  is the gradient at the maximiser).
- ``supremum_every=K`` logs, every K calls, the sup on the current batch with the signs the estimate used
  (``radreg_supremum``, a long search off the training graph with its own generator, so it does not change the
  run) and the running estimate's share of it (``radreg_supremum_ratio``).

The downstream examples are their own stream (``data``, opened by the task at :meth:`RadReg.setup`), cycled with
the regularizer's own generator; both are saved in its state, so a resumed run continues exactly. Images for the
image encoders (h: the encoder's ``forward_features``); text for masked-LM pretraining (``gentune pretrain
--objective mlm``, the file read as ``--data`` is; h: the masked mean of the encoder's last hidden states over the
tokens, the representation a mean-pooled head or linear probe reads). The Rademacher
maths (signs, the closed form, the ascent heads) is :mod:`gentune.diagnostics.rademacher`'s. Under DDP each process encodes its share of the downstream batch
(``RadReg._features``), so the regularizer's cost per process falls with the number of processes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..diagnostics.rademacher import (LinearHeads, MLPHeads, ascent, head_objective, linear_complexity,
                                      normalize_scale, rademacher_signs, unit_supremum, unit_values)
from ..data.streams import batch_len, batch_to, rows
from ..errors import GentuneError
from ..registry import register
from ..tensors import unwrap, widen
from .base import Context, Regularizer

HEADS = ("linear", "mlp", "linear-ascent")  # linear-ascent: linear heads by ascent, to check it against the closed form
ESTIMATORS = ("heads", "unit")
SIGNS = ("pool", "fresh")
SUPREMUM_STEPS, SUPREMUM_RESTARTS = 300, 32  # the logged supremum's search (``supremum_every``)


class _GatherShares(torch.autograd.Function):
    """Every process's (share, d) block, concatenated in rank order; the backward sums the gradient over processes
    and returns this process's rows.

    Not ``torch.distributed.nn.functional.all_gather``: on gloo its backward hands a non-contiguous incoming
    gradient to ``all_to_all`` as it is, and the gradient comes back silently wrong (seen with torch 2.13: the MLP
    heads' einsum gives such a gradient, and the two-process test then fails by 2e-2); it is also deprecated there
    in favour of a private module. Here the gradient is made contiguous first.
    """

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


def _gather(share: torch.Tensor) -> torch.Tensor:
    """Every process's (share, d) block in rank order, differentiable (:class:`_GatherShares`)."""
    return _GatherShares.apply(share)


@register("regularizer", "radreg")
class RadReg(Regularizer):
    """RadReg: penalise the Rademacher complexity of downstream heads during pretraining (Deng et al., AISTATS 2024).

    The complexity is the representation-induced one, on a stream of unlabeled downstream examples. The model must
    expose the encoder as ``model.encoder`` with ``forward_features`` (the image pretraining models do), or
    ``forward_features`` itself, unless ``features`` says how to represent a batch (the text task gives it).

    Args:
        weight: lambda, the penalty's weight.
        data: the unlabeled downstream examples, read through the task at :meth:`setup`: images (an image folder or
            archive) for image pretraining, text (a file read as the run's ``--data`` is) for masked-LM
            pretraining; or give ``images`` or ``stream`` instead.
        head: ``linear`` (the closed form), ``mlp`` (two-layer ReLU heads by projected ascent) or
            ``linear-ascent`` (linear heads by ascent, to check the ascent against the closed form).
        samples: m, sign vectors (heads) per step.
        batch_size: n, downstream images per step (a full encoder pass each: the main cost).
        bound: B, the heads' norm bound.
        normalize: take the representation's scale out (see the module docstring).
        hidden: the MLP heads' width.
        estimator: MLP heads only: ``heads`` (m warm-started heads by projected ascent) or ``unit`` (the sup on
            each batch by the single-unit ascent; fresh signs). See the module docstring.
        signs: ``estimator=heads`` only: ``pool`` (each head keeps one sign per downstream image) or ``fresh``
            (new signs every step, the heads warm-started).
        pool_size: use only this many downstream images (a seeded subset), so that they come back often; 0: all.
        restarts: ``estimator=unit``: starts per sign vector (the linear closed form's direction + random ones).
        supremum_every: log the sup on the current batch every this many calls (see the module docstring); 0: never.
        ascent_steps: T, ascent steps per training step; None: 1 for ``heads``, 20 for ``unit``.
        ascent_lr: the ascent's step: ``ascent_lr * bound`` long for the heads (normalised steps), an angle of
            about ``ascent_lr`` radians, decaying to 0, for the unit; None: 0.2 for ``heads``, 0.5 for ``unit``.
        mu: the heads' ridge term in the ascent.
        seed: seeds the downstream batches, the signs and the heads.
        image_size, mean, std: the downstream images' size and pixel normalisation; None: the task's (given
            at :meth:`setup`, the pretraining images' own).
        center: subtract the batch's mean representation first (before ``normalize``), so that the penalty cannot
            be met by mapping every downstream image to nearly one point either: with both, R is the same for
            a + c h as for h (any offset a, any c > 0). Off by default (the paper's estimator, and the runs
            reported so far).
        images: a uint8 (N, H, W, 3) array or tensor of downstream images, instead of ``data``.
        stream: an iterator of ``(batch, indices into a pool of len(stream) examples)``, the batch a pixel tensor
            (n, C, H, W) or a dict of (n, ...) tensors, e.g. a :class:`gentune.data.images.ImageStream` or
            :class:`gentune.data.streams.TextStream`, instead of ``data``; it must draw from this regularizer's
            ``generator`` for a resumed run to continue exactly.
        features: ``features(model, batch) -> (n, d)``, the representation of a batch of the stream; None: the
            task's (``features`` in its context), else ``model.encoder.forward_features(batch)``.
    """

    def __init__(self, weight: float = 0.1, data: str = "", head: str = "linear", samples: int = 4,
                 batch_size: int = 16, bound: float = 1.0, normalize: bool = True, hidden: int = 64,
                 estimator: str = "heads", signs: str = "pool", pool_size: int = 0, restarts: int = 8,
                 supremum_every: int = 0, ascent_steps: int | None = None, ascent_lr: float | None = None,
                 mu: float = 0.0, seed: int = 0, image_size: int | None = None, mean: list[float] | None = None,
                 std: list[float] | None = None, center: bool = False, *, images=None, stream=None, features=None):
        if head not in HEADS:
            raise ValueError(f"radreg: head must be one of {HEADS}, got {head!r}")
        if estimator not in ESTIMATORS or signs not in SIGNS:
            raise ValueError(f"radreg: estimator must be one of {ESTIMATORS} and signs one of {SIGNS}, got "
                             f"{estimator!r} and {signs!r}")
        if estimator == "unit" and head != "mlp":
            raise ValueError(f"radreg: estimator=unit is for head=mlp (head={head!r} has its own)")
        if pool_size < 0 or restarts < 1 or supremum_every < 0:
            raise ValueError("radreg: pool_size >= 0, restarts >= 1 and supremum_every >= 0")
        unit = estimator == "unit"
        ascent_steps = (20 if unit else 1) if ascent_steps is None else ascent_steps
        ascent_lr = (0.5 if unit else 0.2) if ascent_lr is None else ascent_lr
        if not data and images is None and stream is None:
            raise ValueError("radreg: data is required (--set radreg.data=PATH: the downstream examples, unlabeled)")
        if data and images is None and stream is None and not Path(str(data)).exists():
            raise ValueError(f"radreg.data {data}: no such file or folder")
        if samples < 1 or batch_size < 2 or bound <= 0 or ascent_steps < 0:
            raise ValueError("radreg: samples >= 1, batch_size >= 2, bound > 0 and ascent_steps >= 0")
        self.weight, self.data, self.head, self.m, self.n = weight, data, head, samples, batch_size
        self.bound, self.normalize, self.hidden, self.center = bound, normalize, hidden, center
        self.steps, self.lr, self.mu = ascent_steps, ascent_lr, mu
        self.estimator, self.signs, self.pool_size, self.restarts = estimator, signs, pool_size, restarts
        self.supremum_every = supremum_every
        self.calls = 0  # calls so far (saved): when to log the supremum
        self.image_size, self.mean, self.std = image_size, mean, std
        self.generator = torch.Generator().manual_seed(seed)  # downstream batches and signs
        self.seed = seed
        self._images = None if images is None else torch.as_tensor(images)
        self.stream = stream
        self.features = features
        self._stream_state: dict | None = None  # a checkpointed stream position, applied once the stream exists
        self._pool_signs: torch.Tensor | None = None  # (m, N): ascent heads' fixed sign per downstream image
        self.heads: MLPHeads | LinearHeads | None = None
        self._pending: dict | None = None
        self.last: float | None = None  # the unweighted estimate of the last step, for the log
        self.revived: int | None = None  # MLP heads: hidden units revived in the last step, for the log
        self.supremum: float | None = None  # the last logged supremum (supremum_every), for the log

    def setup(self, context: Context) -> None:
        """Fill the normalisation and size from the task, open the downstream stream, check the model."""
        data = context.data
        self.image_size = self.image_size if self.image_size is not None else data.get("image_size")
        if self.mean is None and data.get("mean") is not None:
            self.mean, self.std = list(data["mean"]), list(data["std"])
        if self.features is None:
            self.features = data.get("features")
        if context.model is not None:
            self._encoder(context.model)
        if self.stream is None and self._images is None:
            if "unlabeled" not in data:
                raise GentuneError("radreg: this task has no stream of unlabeled examples for radreg.data (RadReg "
                                   "regularizes image pretraining and masked-LM pretraining; in Python give images= "
                                   "or stream=)")
            self.stream = data["unlabeled"](self.data, self.n, self.generator, self.image_size, self.mean, self.std)
        self._limit_pool()

    def _limit_pool(self) -> None:
        """Keep ``pool_size`` images of the stream's pool: the first of a permutation seeded by ``seed``."""
        if not self.pool_size or self.stream is None or self.pool_size >= len(self.stream):
            return
        if not callable(getattr(self.stream, "subset", None)):
            raise GentuneError(f"radreg.pool_size: the stream ({type(self.stream).__name__}) has no subset() to "
                               "take part of its pool with; give a smaller stream instead")
        keep = torch.randperm(len(self.stream), generator=torch.Generator().manual_seed(self.seed + 3))
        self.stream.subset(keep[:self.pool_size].sort().values)

    def _encoder(self, model) -> torch.nn.Module:
        """What ``features`` is called with (the model itself when the task gives ``features``), checked."""
        inner = unwrap(model)
        if self.features is not None:
            return inner
        encoder = getattr(inner, "encoder", inner)
        if not callable(getattr(encoder, "forward_features", None)):
            raise GentuneError(f"radreg: {type(inner).__name__} has no encoder with forward_features(): RadReg "
                               "penalises the representation of an image encoder, or of a text encoder in masked-LM "
                               "pretraining (gentune pretrain --objective mlm)")
        return encoder

    def _next(self, device) -> tuple[torch.Tensor | dict, torch.Tensor]:
        """(a downstream batch: normalised images (n, C, H, W) or a dict of tensors, their indices in the pool), the
        batch on ``device``."""
        if self.stream is None:  # images given in Python, no setup: a stream over them
            from ..data.images import ImageStream

            if self.mean is None:
                raise GentuneError("radreg: no pixel normalisation (mean, std) for its images: use it in gentune "
                                   "pretrain or image fine-tuning, or set radreg.mean and radreg.std")
            self.stream = ImageStream(self._images, self.n, self.generator, self.mean, self.std)
            self._limit_pool()
        if self._stream_state is not None:
            self.stream.load_state_dict(self._stream_state)
            self._stream_state = None
        x, idx = next(self.stream)
        return batch_to(x, device), idx

    def _represent(self, encoder, x) -> torch.Tensor:
        return encoder.forward_features(x) if self.features is None else self.features(encoder, x)

    def _features(self, encoder, x) -> torch.Tensor:
        """h(x) of the whole downstream batch. Under torch.distributed every process draws the same batch, encodes
        only its 1/P share and gathers the others' with their gradients, so each holds the h one process would.

        The gradient stays exact: every process computes the same penalty, so the gather's backward (a sum over
        processes) hands each share P times its gradient, and DDP's average over processes divides it back. A
        batch that does not split evenly is encoded whole on every process (correct, P times the work).
        """
        dist = torch.distributed
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        n = batch_len(x)
        if world == 1 or n % world:
            return self._represent(encoder, x)
        share, rank = n // world, dist.get_rank()
        return _gather(self._represent(encoder, rows(x, rank * share, (rank + 1) * share)))

    def __call__(self, model, batch: dict, outputs) -> dict[str, torch.Tensor]:
        encoder = self._encoder(model)
        device = next(encoder.parameters()).device
        x, idx = self._next(device)
        h = widen(self._features(encoder, x))
        if self.center:
            h = h - h.mean(0, keepdim=True)
        if self.normalize:
            h = normalize_scale(h)
        if self.head == "linear":  # the closed form: fresh signs every step
            signs = rademacher_signs(self.m, self.n, self.generator, device)
            estimate = linear_complexity(h, signs, self.bound)
        elif self.estimator == "unit":  # fresh signs, the sup on this batch by the single-unit ascent
            signs = rademacher_signs(self.m, self.n, self.generator, device)
            _, u, orientation = unit_supremum(h, signs, self.steps, self.restarts, self.lr, self.generator)
            estimate = self.bound ** 2 * (orientation * unit_values(u, h, signs)).mean()
        else:
            signs = self._head_signs(idx, device)
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
        self.calls += 1
        due = self.supremum_every and self.calls % self.supremum_every == 0
        self.supremum = self._supremum(h, signs) if due else None
        return {"radreg": self.weight * estimate}

    def _head_signs(self, idx: torch.Tensor, device) -> torch.Tensor:
        """The ascent heads' signs for this batch: fresh (``signs=fresh``), or each head's fixed sign per downstream
        image (``pool``), drawn once from the seed, so a head ascends (1/N) sum_pool sigma_ji f_j(h~_i) through
        minibatches (stochastic gradient descent-ascent on the pool's complexity with m sign vectors): a target that
        holds still while the heads track it, but only as far as images come back."""
        if self.signs == "fresh":
            return rademacher_signs(self.m, self.n, self.generator, device)
        if self._pool_signs is None:
            self._pool_signs = rademacher_signs(self.m, len(self.stream), torch.Generator().manual_seed(self.seed + 2))
        return self._pool_signs[:, idx].to(device)

    def _supremum(self, h: torch.Tensor, signs: torch.Tensor) -> float:
        """The sup over the head class on this batch with these signs (what the estimate stands for), averaged over
        the m sign vectors: the closed form for linear heads, a long single-unit search for MLP heads."""
        h = h.detach()
        if self.head != "mlp":
            return float(linear_complexity(h, signs, self.bound))
        generator = torch.Generator().manual_seed(self.seed + 4 + self.calls)  # not the run's: it stays unchanged
        values, _, _ = unit_supremum(h, signs, SUPREMUM_STEPS, SUPREMUM_RESTARTS, generator=generator)
        return float(self.bound ** 2 * values.mean())

    def log(self) -> dict[str, float]:
        """Extra values for the training log: the unweighted complexity estimate."""
        out = {} if self.last is None else {"radreg_complexity": self.last}
        if self.revived is not None:
            out["radreg_revived_units"] = float(self.revived)
        if self.supremum is not None:  # only after the calls that computed it
            out["radreg_supremum"] = self.supremum
            if self.supremum > 0:
                out["radreg_supremum_ratio"] = self.last / self.supremum
        return out

    def state_dict(self) -> dict:
        # a copy: the ascent updates the heads in place after the state is taken
        heads = self._pending if self.heads is None else {k: v.clone() for k, v in self.heads.state_dict().items()}
        position = self._stream_state if self._stream_state is not None or self.stream is None \
            else self.stream.state_dict()
        return {"generator": self.generator.get_state(), "heads": heads, "calls": self.calls, **(position or {})}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.calls = int(state.get("calls", 0))  # (absent from checkpoints written before it was saved)
        position = {k: v for k, v in state.items() if k not in ("generator", "heads", "calls")}
        if self.stream is not None:
            self.stream.load_state_dict(position)
        else:
            self._stream_state = position
        if self.heads is not None and state["heads"] is not None:
            self.heads.load_state_dict(state["heads"])
        else:
            self._pending = state["heads"]


RadRegConfig = RadReg.Config
