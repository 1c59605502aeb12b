"""Bregman proximal point optimization with momentum, from SMART (Jiang et al., ACL 2020).

A teacher copy theta~ of the model trails the student; after every S optimizer steps (``inner_steps``, default 1)

    theta~ <- (1 - beta) * theta + beta * theta~          (beta = beta_early for the first early_fraction of steps)

The paper's absolute schedule (0.99, then 0.999) was made for runs of many thousands of steps: over 189 steps the
teacher ends 0.99^19 x 0.999^170 = 0.70 the initial model. ``half_life`` (a fraction of the run) sets the momentum
from the run's length instead: beta = 0.5 ** (inner_steps / (half_life * total_steps)), so that the teacher's
weight on where the student was ``half_life`` of the run ago is one half, at any run length.

With ``momentum=False`` (beta = 0) this is the paper's plain Bregman proximal point method (its eq. 4): the teacher
is the iterate theta_t, held fixed while S optimizer steps approximately solve
min_theta F(theta) + mu * D_Breg(theta, theta_t), then moved to the new iterate.

and the loss gains R_B = mu * l_s(f(x; theta), stopgrad f(x; theta~)) on the clean inputs, with l_s the symmetric KL
(classification) or squared error (regression). The teacher starts as the model at the first call (before the first
optimizer step), runs without dropout and without gradients, and is saved in checkpoints.
"""

from __future__ import annotations

import copy

import torch

from ..registry import register
from ..tensors import unwrap
from .base import Context, Regularizer
from .smart import SmartAdversarial, logits_of, smoothness_divergence


@torch.no_grad()
def momentum_update(teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor], beta: float) -> None:
    """In place: teacher <- (1 - beta) * student + beta * teacher, for every floating-point tensor.

    Integer buffers (position ids) are copied. Same-dtype pairs go through one fused ``_foreach`` call each.
    A tensor stored under two names (tied input and output embeddings) is updated once.
    """
    fused_t, fused_s, seen = [], [], set()
    for name, t in teacher.items():
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        s = student[name].detach()
        if not t.is_floating_point():
            t.copy_(s)
        elif s.dtype == t.dtype and s.device == t.device:
            fused_t.append(t)
            fused_s.append(s)
        else:
            t.mul_(beta).add_(s.to(t), alpha=1.0 - beta)
    if fused_t:
        torch._foreach_mul_(fused_t, beta)
        torch._foreach_add_(fused_t, fused_s, alpha=1.0 - beta)


def beta_at(step: int, total_steps: int, beta: float, beta_early: float, early_fraction: float) -> float:
    """The momentum for optimizer step ``step`` (0-based): ``beta_early`` during the first ``early_fraction``."""
    return beta_early if step < early_fraction * total_steps else beta


def half_life_beta(half_life: float, total_steps: int, inner_steps: int = 1) -> float:
    """The momentum whose half-life is ``half_life`` of a run of ``total_steps`` optimizer steps, for a teacher
    updated every ``inner_steps``: beta ** (half_life * total_steps / inner_steps) = 1/2."""
    if half_life <= 0 or total_steps <= 0:
        raise ValueError(f"half_life and total_steps must be positive, got {half_life} and {total_steps}")
    return 0.5 ** (inner_steps / (half_life * total_steps))


@register("regularizer", "bregman")
class Bregman(Regularizer):
    """SMART's Bregman proximal point term R_B with a momentum teacher (Jiang et al., ACL 2020).

    Args:
        mu: the weight of R_B (in ``smart``, 0 switches it off).
        beta: the teacher's momentum after the first ``early_fraction`` of the steps.
        beta_early: the momentum before that.
        early_fraction: the share of ``total_steps`` that uses ``beta_early``.
        total_steps: the run's optimizer steps; 0: the run's own, given by :meth:`setup`.
        momentum: False: the teacher is the previous iterate (beta = 0), the paper's plain proximal point.
        inner_steps: S, optimizer steps between teacher updates.
        regression: squared error instead of the symmetric KL; None infers it from the output width (1).
        half_life: > 0: the momentum from the run's length, the teacher's half-life as this fraction of the run
            (replaces beta and beta_early); 0: the paper's absolute schedule.
        embed_fn, forward_from_embeddings: for a plain ``nn.Module`` (see ``smart-adv``): the teacher's outputs
            are ``forward_from_embeddings(teacher, embed_fn(teacher, batch), batch)``.
    """

    def __init__(self, mu: float = 1.0, beta: float = 0.999, beta_early: float = 0.99, early_fraction: float = 0.1,
                 total_steps: int = 0, momentum: bool = True, inner_steps: int = 1, regression: bool | None = None,
                 half_life: float = 0.0, *, embed_fn=None, forward_from_embeddings=None):
        if inner_steps < 1:
            raise ValueError(f"bregman: inner_steps must be >= 1, got {inner_steps}")
        if half_life < 0 or half_life != half_life:
            raise ValueError(f"bregman: half_life must be >= 0 (a fraction of the run), got {half_life}")
        self.half_life = half_life
        self.init_weight = 1.0  # the teacher's weight on the starting model: the product of the betas so far
        self.mu, self.beta, self.beta_early, self.early_fraction = mu, beta, beta_early, early_fraction
        self.total_steps, self.momentum, self.inner_steps, self.regression = total_steps, momentum, inner_steps, regression
        self._run_length = not total_steps  # left at 0: each run's setup() gives it
        self.embed_fn, self.forward_fn = embed_fn, forward_from_embeddings
        self.teacher: torch.nn.Module | None = None
        self._pending: dict | None = None  # a checkpointed teacher, applied once the model is seen
        self.step = 0

    def setup(self, context: Context) -> None:
        """Take the run's length for the momentum schedule, unless ``total_steps`` was given."""
        if self._run_length:
            self.total_steps = context.total_steps

    def _ensure_teacher(self, model) -> torch.nn.Module:
        if self.teacher is None:
            self.teacher = copy.deepcopy(unwrap(model))
            self.teacher.requires_grad_(False)
            if self._pending is not None:
                self.teacher.load_state_dict(self._pending)
                self._pending = None
        self.teacher.eval()  # a deterministic target: no dropout in the teacher
        return self.teacher

    def __call__(self, model, batch: dict, outputs) -> dict[str, torch.Tensor]:
        teacher = self._ensure_teacher(model)
        with torch.no_grad():
            if self.forward_fn is not None:
                target = logits_of(self.forward_fn(teacher, self.embed_fn(teacher, batch), batch))
            else:
                target = logits_of(teacher(**{k: v for k, v in batch.items() if k != "labels"}))
        student = logits_of(outputs)
        regression = student.shape[-1] == 1 if self.regression is None else self.regression
        return {"bregman": self.mu * smoothness_divergence(student, target, regression)}

    def beta_now(self) -> float:
        """The momentum of the update after the current step."""
        if not self.momentum:
            return 0.0
        if self.half_life:
            if self.total_steps <= 0:
                raise ValueError("bregman: half_life needs the run's length (total_steps, given at setup)")
            return half_life_beta(self.half_life, self.total_steps, self.inner_steps)
        return beta_at(self.step, self.total_steps, self.beta, self.beta_early, self.early_fraction)

    def after_step(self, model) -> None:
        teacher = self._ensure_teacher(model)
        if (self.step + 1) % self.inner_steps == 0:
            beta = self.beta_now()
            momentum_update(teacher.state_dict(), unwrap(model).state_dict(), beta)
            self.init_weight *= beta
        self.step += 1

    def log(self) -> dict[str, float]:
        """``bregman_init_weight``: how much of the starting model the teacher still is (1 at the start)."""
        return {"bregman_init_weight": self.init_weight}

    def state_dict(self) -> dict:
        # a loaded teacher not yet applied (no forward since load_state_dict) is passed on as it is
        teacher = self._pending if self.teacher is None else self.teacher.state_dict()
        return {"step": self.step, "teacher": teacher, "init_weight": self.init_weight}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.init_weight = state.get("init_weight", 1.0)
        if self.teacher is not None and state["teacher"] is not None:
            self.teacher.load_state_dict(state["teacher"])
        else:
            self._pending = state["teacher"]


@register("regularizer", "smart")
class Smart(Regularizer):
    """SMART: adversarial smoothness R_s plus the Bregman momentum-teacher term R_B (Jiang et al., ACL 2020).

    Args:
        adv_weight: lambda_s, the weight of R_s (0 switches it off).
        sigma: standard deviation of R_s's initial noise.
        eps: radius of the perturbation ball.
        eta: ascent step size.
        steps: K, ascent steps.
        norm: inf or l2, the norm of the ball and of the step normalisation.
        granularity: token (a ball per token) or sequence.
        step_style: paper (projected normalised ascent) or mtdnn (the official code's step).
        start_step: optimizer steps before R_s is switched on.
        dropout: independent (the paper's code) or shared (perturbed forwards replay the clean forward's masks).
        mu: the weight of R_B (0 switches it off).
        beta: the teacher's momentum after the first early_fraction of the steps.
        beta_early: the momentum before that.
        early_fraction: the share of total_steps that uses beta_early.
        total_steps: the run's optimizer steps; 0: the run's own, given at setup.
        momentum: false: the teacher is the previous iterate (beta = 0), the paper's plain proximal point.
        inner_steps: S, optimizer steps between teacher updates.
        regression: squared error instead of the symmetric KL, for both terms; None infers it from the output
            width (1: regression).
        half_life: > 0: the teacher's momentum from the run's length, its half-life as this fraction of the run
            (replaces beta and beta_early); 0: the paper's absolute schedule.
        embed_fn, forward_from_embeddings: for a plain module (see smart-adv).
    """

    def __init__(self, adv_weight: float = 1.0, sigma: float = 1e-5, eps: float = 1e-5, eta: float = 1e-3,
                 steps: int = 1, norm: str = "inf", granularity: str = "token", step_style: str = "paper",
                 start_step: int = 0, dropout: str = "independent", mu: float = 1.0, beta: float = 0.999,
                 beta_early: float = 0.99, early_fraction: float = 0.1, total_steps: int = 0, momentum: bool = True,
                 inner_steps: int = 1, regression: bool | None = None, half_life: float = 0.0, *, embed_fn=None,
                 forward_from_embeddings=None):
        plain = {"embed_fn": embed_fn, "forward_from_embeddings": forward_from_embeddings}
        self.adversarial = SmartAdversarial(adv_weight, sigma, eps, eta, steps, norm, granularity, step_style,
                                            start_step, dropout, regression, **plain)
        self.bregman = (Bregman(mu, beta, beta_early, early_fraction, total_steps, momentum, inner_steps, regression,
                                half_life, **plain) if mu else None)

    def setup(self, context: Context) -> None:
        self.adversarial.setup(context)
        if self.bregman:
            self.bregman.setup(context)

    def __call__(self, model, batch: dict, outputs) -> dict[str, torch.Tensor]:
        # R_B first: its teacher is deep-copied on the first call, before R_s attaches hooks to the model
        terms = self.bregman(model, batch, outputs) if self.bregman else {}
        return {**self.adversarial(model, batch, outputs), **terms}

    def close(self) -> None:
        """Release the hooks the adversarial part may hold on the model."""
        self.adversarial.close()

    def log(self) -> dict[str, float]:
        """The adversarial part's log values (smart_zero_grad) and the teacher's (bregman_init_weight)."""
        return {**self.adversarial.log(), **(self.bregman.log() if self.bregman else {})}

    def after_step(self, model) -> None:
        self.adversarial.after_step(model)
        if self.bregman:
            self.bregman.after_step(model)

    def state_dict(self) -> dict:
        return {"adversarial": self.adversarial.state_dict(),
                "bregman": self.bregman.state_dict() if self.bregman else None}

    def load_state_dict(self, state: dict) -> None:
        self.adversarial.load_state_dict(state["adversarial"])
        if self.bregman and state["bregman"] is not None:
            self.bregman.load_state_dict(state["bregman"])


BregmanConfig = Bregman.Config
SmartConfig = Smart.Config
