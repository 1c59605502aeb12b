"""SMART's smoothness-inducing adversarial regularizer (Jiang, He, Chen, Liu, Gao, Zhao, "SMART: Robust and
Efficient Fine-Tuning for Pre-trained Natural Language Models through Principled Regularized Optimization",
ACL 2020), and R3F (Aghajanyan et al., "Better Fine-Tuning by Reducing Representational Collapse", ICLR 2021).

R_s = l_s(f(e + delta), f(e)), where e are the *input token embeddings* (the output of
``model.get_input_embeddings()``, before position embeddings and LayerNorm) and delta is found by K steps of
projected normalised ascent from Gaussian noise on the non-padding tokens:

    delta_0 ~ N(0, sigma^2)                         (padding tokens: 0)
    g       = d/d delta  l_s(f(e + delta), stopgrad f(e))
    delta  <- Proj_{||.|| <= eps}(delta + eta * g / ||g||)     (norm per token by default)

l_s is the symmetric KL divergence (batch mean, float32) for classification and the squared error for regression.
The perturbation enters through a forward hook on the embedding module, so any Hugging Face model works without
editing its code, and position embeddings are never added twice.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..registry import register
from ._common import unwrap, widen

NORMS = ("inf", "l2")
GRANULARITIES = ("token", "sequence")


def symmetric_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p||q) + KL(q||p) between the softmax distributions of two logit tensors, averaged over the batch.

    Args:
        p_logits, q_logits: (batch, classes); computed in at least float32 whatever their dtype.
    """
    p = F.log_softmax(widen(p_logits), dim=-1)
    q = F.log_softmax(widen(q_logits), dim=-1)
    return ((p.exp() - q.exp()) * (p - q)).sum(-1).mean()


def smoothness_divergence(adv: torch.Tensor, clean: torch.Tensor, regression: bool) -> torch.Tensor:
    """l_s: symmetric KL for classification logits (batch, C), squared error for regression outputs (batch, 1)."""
    if regression:
        return (widen(adv) - widen(clean)).pow(2).sum(-1).mean()
    return symmetric_kl(adv, clean)


def _reduce_dims(x: torch.Tensor, granularity: str) -> tuple[int, ...]:
    return (-1,) if granularity == "token" else tuple(range(1, x.ndim))


def _norm(x: torch.Tensor, norm: str, granularity: str) -> torch.Tensor:
    dims = _reduce_dims(x, granularity)
    if norm == "inf":
        return x.abs().amax(dim=dims, keepdim=True)
    return x.pow(2).sum(dim=dims, keepdim=True).sqrt()


def project(delta: torch.Tensor, eps: float, norm: str = "inf", granularity: str = "token") -> torch.Tensor:
    """Project ``delta`` (batch, length, hidden) onto the eps-ball of ``norm``, per token or per sequence."""
    if norm == "inf":
        return delta.clamp(-eps, eps)  # the inf-ball is a box: per token and per sequence coincide
    scale = (eps / (_norm(delta, norm, granularity) + 1e-12)).clamp(max=1.0)
    return delta * scale


def ascent_step(delta: torch.Tensor, grad: torch.Tensor, eta: float, eps: float, norm: str = "inf",
                granularity: str = "token", mask: torch.Tensor | None = None) -> torch.Tensor:
    """One projected, normalised ascent step: Proj(delta + eta * g / ||g||), zero on padding (``mask`` 0)."""
    direction = grad / (_norm(grad, norm, granularity) + 1e-12)
    out = project(delta + eta * direction, eps, norm, granularity)
    return out if mask is None else out * mask


def mtdnn_step(delta: torch.Tensor, grad: torch.Tensor, eta: float, norm: str = "inf",
               granularity: str = "token", mask: torch.Tensor | None = None) -> torch.Tensor:
    """The official mt-dnn code's step: (delta + eta * g) rescaled to unit norm per token, with no eps-ball.

    Offered so results can be compared with that code; it differs from the paper's projected step.
    """
    raw = delta + eta * grad
    out = raw / (_norm(raw, norm, granularity) + 1e-6)
    return out if mask is None else out * mask


def embedding_module(model: torch.nn.Module) -> torch.nn.Module:
    """The input token-embedding module of a (possibly DDP- or PEFT-wrapped) Hugging Face model."""
    inner = unwrap(model)
    if not hasattr(inner, "get_input_embeddings"):
        raise TypeError(f"{type(inner).__name__} has no get_input_embeddings(); SMART perturbs input embeddings")
    return inner.get_input_embeddings()


@contextlib.contextmanager
def perturbed_embeddings(module: torch.nn.Module, delta: torch.Tensor):
    """While active, the embedding module's output is ``output + delta`` (a forward hook; no model edits)."""

    def hook(_mod, _inp, output):
        return output + delta.to(output.dtype)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def adversarial_delta(forward: Callable[[torch.Tensor], torch.Tensor], clean: torch.Tensor, shape: tuple,
                      mask: torch.Tensor, sigma: float, eps: float, eta: float, steps: int, norm: str,
                      granularity: str, regression: bool, step_style: str = "paper",
                      generator: torch.Generator | None = None) -> torch.Tensor | None:
    """The perturbation delta after ``steps`` ascent steps, or ``None`` when a noise gradient is not finite.

    Args:
        forward: delta (batch, length, hidden) -> model outputs with the embeddings perturbed by delta.
        clean: (batch, C) clean outputs; detached here.
        shape: (batch, length, hidden).
        mask: (batch, length, 1), 1 on real tokens and 0 on padding.
    """
    noise = torch.randn(shape, device=mask.device, dtype=torch.float32, generator=generator)
    delta = noise * sigma * mask
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = smoothness_divergence(forward(delta), clean.detach(), regression)
        (grad,) = torch.autograd.grad(loss, delta)
        if not torch.isfinite(grad).all():
            return None
        with torch.no_grad():
            if step_style == "mtdnn":
                delta = mtdnn_step(delta, grad, eta, norm, granularity, mask)
            else:
                delta = ascent_step(delta, grad, eta, eps, norm, granularity, mask)
    return delta.detach()


class _Perturbable:
    """One batch, ready to be re-run with perturbed input embeddings: clean outputs, padding mask, noise shape."""

    def __init__(self, model, batch: dict, outputs, regression: bool | None):
        self.model = model
        self.inputs = {k: v for k, v in batch.items() if k != "labels"}
        self.clean = outputs.logits
        self.regression = self.clean.shape[-1] == 1 if regression is None else regression
        self.module = embedding_module(model)
        ids = self.inputs["input_ids"]
        self.mask = self.inputs.get("attention_mask", torch.ones_like(ids)).unsqueeze(-1).float()
        self.shape = (*ids.shape, self.module.embedding_dim)

    def forward(self, delta: torch.Tensor) -> torch.Tensor:
        with perturbed_embeddings(self.module, delta):
            return self.model(**self.inputs).logits


@dataclass
class SmartAdversarialConfig:
    weight: float = 1.0  # lambda_s
    sigma: float = 1e-5
    eps: float = 1e-5
    eta: float = 1e-3
    steps: int = 1  # K
    norm: str = "inf"
    granularity: str = "token"
    step_style: str = "paper"  # or "mtdnn"
    start_step: int = 0  # optimizer steps before R_s is switched on
    regression: bool | None = None  # None: inferred from the output width (1 -> regression)


@register("regularizer", "smart-adv", SmartAdversarialConfig)
class SmartAdversarial:
    """SMART's smoothness-inducing adversarial regularizer R_s alone (Jiang et al., ACL 2020)."""

    def __init__(self, weight: float = 1.0, sigma: float = 1e-5, eps: float = 1e-5, eta: float = 1e-3,
                 steps: int = 1, norm: str = "inf", granularity: str = "token", step_style: str = "paper",
                 start_step: int = 0, regression: bool | None = None):
        if norm not in NORMS or granularity not in GRANULARITIES or step_style not in ("paper", "mtdnn"):
            raise ValueError(f"smart-adv: norm in {NORMS}, granularity in {GRANULARITIES}, "
                             "step_style in ('paper', 'mtdnn')")
        self.weight, self.sigma, self.eps, self.eta, self.steps = weight, sigma, eps, eta, steps
        self.norm, self.granularity, self.step_style = norm, granularity, step_style
        self.start_step, self.regression = start_step, regression
        self.step = 0
        self.skipped = 0  # steps whose noise gradient was not finite

    def __call__(self, model, batch: dict, outputs) -> dict[str, torch.Tensor]:
        if self.step < self.start_step or self.weight == 0:
            return {}
        p = _Perturbable(model, batch, outputs, self.regression)
        clean, regression = p.clean, p.regression
        delta = adversarial_delta(p.forward, clean, p.shape, p.mask, self.sigma, self.eps, self.eta, self.steps,
                                  self.norm, self.granularity, regression, self.step_style)
        if delta is None:  # skip R_s this step, keep training; the count is in state_dict()
            self.skipped += 1
            return {}
        return {"smart_adv": self.weight * smoothness_divergence(p.forward(delta), clean, regression)}

    def after_step(self, model) -> None:
        self.step += 1

    def state_dict(self) -> dict:
        return {"step": self.step, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.skipped = state["step"], state["skipped"]


@dataclass
class R3FConfig:
    weight: float = 1.0
    sigma: float = 1e-5
    noise: str = "normal"  # or "uniform" in [-sigma, sigma]
    regression: bool | None = None


@register("regularizer", "r3f", R3FConfig)
class R3F:
    """R3F: one random-noise forward and a symmetric KL, no ascent (Aghajanyan et al., ICLR 2021)."""

    def __init__(self, weight: float = 1.0, sigma: float = 1e-5, noise: str = "normal",
                 regression: bool | None = None):
        if noise not in ("normal", "uniform"):
            raise ValueError("r3f: noise must be 'normal' or 'uniform'")
        self.weight, self.sigma, self.noise, self.regression = weight, sigma, noise, regression

    def __call__(self, model, batch: dict, outputs) -> dict[str, torch.Tensor]:
        p = _Perturbable(model, batch, outputs, self.regression)
        if self.noise == "normal":
            delta = torch.randn(p.shape, device=p.mask.device) * self.sigma
        else:
            delta = (torch.rand(p.shape, device=p.mask.device) * 2 - 1) * self.sigma
        return {"r3f": self.weight * smoothness_divergence(p.forward(delta * p.mask), p.clean, p.regression)}
