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
editing its code, and position embeddings are never added twice. A plain ``nn.Module`` works when given an
``embed_fn(model, batch) -> (batch, length, hidden)`` and ``forward_from_embeddings(model, embeddings, batch) ->
logits`` pair.

Dropout: with ``dropout="independent"`` (the paper's code) the perturbed forwards draw their own dropout masks, so
at the paper's eps = 1e-5 R_s is dominated by the mask difference (benchmarks/smart_divergence_scale.py).
``dropout="shared"`` replays the clean forward's masks, so R_s measures the perturbation alone.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import GentuneError
from ..registry import register
from ..tensors import unwrap, widen
from .base import Context, Regularizer

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
        raise GentuneError(f"{type(inner).__name__} has no get_input_embeddings(): SMART and R3F perturb the input "
                           "token embeddings of a text model (a plain module needs embed_fn and "
                           "forward_from_embeddings)")
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


def _rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


@contextlib.contextmanager
def replayed_rng(state: tuple, device: torch.device):
    """Run the block from a recorded RNG state (same dropout masks as when it was recorded); restore after."""
    cpu, cuda = state
    with torch.random.fork_rng(devices=[device] if cuda is not None else []):
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)
        yield


class DropoutReplay:
    """Records the RNG state at each top-level forward of a model, keyed by its ``input_ids`` tensor.

    A perturbed forward run from the recorded state draws the same dropout masks as the clean forward did
    (same operations in the same order), so the two outputs differ only through the perturbation.
    """

    def __init__(self):
        self.module: torch.nn.Module | None = None
        self.handle = None
        self.state: tuple | None = None
        self.key: torch.Tensor | None = None
        self.paused = False

    def attach(self, model: torch.nn.Module) -> None:
        inner = unwrap(model)
        if self.module is not inner:
            if self.handle is not None:
                self.handle.remove()
            self.module, self.handle = inner, inner.register_forward_pre_hook(self._record, with_kwargs=True)

    def detach(self) -> None:
        """Remove the forward pre-hook (a regularizer that is replaced should not leave it on the model)."""
        if self.handle is not None:
            self.handle.remove()
        self.module = self.handle = self.state = self.key = None

    def _record(self, _mod, args, kwargs):
        if not self.paused:
            key = kwargs.get("input_ids", args[0] if args else None)
            self.key = key
            device = key.device if isinstance(key, torch.Tensor) else torch.device("cpu")
            self.state = _rng_state(device)

    def state_for(self, key) -> tuple | None:
        """The RNG state recorded just before the forward on ``key`` (the same tensor object), if any."""
        return self.state if self.key is not None and self.key is key else None


def adversarial_delta(forward: Callable[[torch.Tensor], torch.Tensor], clean: torch.Tensor, shape: tuple,
                      mask: torch.Tensor, sigma: float, eps: float, eta: float, steps: int, norm: str,
                      granularity: str, regression: bool, step_style: str = "paper",
                      generator: torch.Generator | None = None, stats: dict | None = None) -> torch.Tensor | None:
    """The perturbation delta after ``steps`` ascent steps, or ``None`` when a noise gradient is not finite.

    Args:
        forward: delta (batch, length, hidden) -> model outputs with the embeddings perturbed by delta.
        clean: (batch, C) clean outputs; detached here.
        shape: (batch, length, hidden).
        mask: (batch, length, 1), 1 on real tokens and 0 on padding.
        stats: if given, ``stats["zero_grad"]`` is set to the number of sequences whose noise gradient was exactly
            zero at the last ascent step (their delta did not move: under bf16 autocast a perturbation of 1e-5 is
            rounded away and the perturbed output equals the clean one), ``stats["sequences"]`` to the batch size.
    """
    noise = torch.randn(shape, device=mask.device, dtype=torch.float32, generator=generator)
    delta = noise * sigma * mask
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = smoothness_divergence(forward(delta), clean.detach(), regression)
        (grad,) = torch.autograd.grad(loss, delta)
        if not torch.isfinite(grad).all():
            return None
        if stats is not None:
            stats["zero_grad"] = int(((grad * mask).flatten(1).abs().amax(1) == 0).sum())
            stats["sequences"] = grad.shape[0]
        with torch.no_grad():
            if step_style == "mtdnn":
                delta = mtdnn_step(delta, grad, eta, norm, granularity, mask)
            else:
                delta = ascent_step(delta, grad, eta, eps, norm, granularity, mask)
    return delta.detach()


def logits_of(outputs) -> torch.Tensor:
    """The logits of a Hugging Face output object, an output dict, or a plain tensor.

    Raises:
        GentuneError: the outputs hold no logits (e.g. a reconstruction objective's), so there is no prediction
            to compare.
    """
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = outputs.get("logits") if isinstance(outputs, dict) else getattr(outputs, "logits", None)
    if logits is None:
        have = ", ".join(outputs) if isinstance(outputs, dict) else type(outputs).__name__
        raise GentuneError(f"the model's outputs have no logits ({have}): SMART, R3F and the Bregman term compare a "
                           "classifier's or regressor's predictions")
    return logits


def _embedding_width(module: torch.nn.Module) -> int:
    """The output width of an input-embedding module: ``nn.Embedding``, a wrapper around one (PEFT's LoRA
    ``base_layer``), or any module with a (vocabulary, width) ``weight``."""
    for m in (module, getattr(module, "base_layer", None)):
        if isinstance(getattr(m, "embedding_dim", None), int):
            return m.embedding_dim
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.ndim == 2:
        return weight.shape[1]
    raise ValueError(f"cannot tell the width of the input embeddings ({type(module).__name__}): give "
                     "embed_fn and forward_from_embeddings")


class _Perturbable:
    """One batch, ready to be re-run with perturbed input embeddings: clean outputs, padding mask, noise shape.

    The extra forwards go through the unwrapped model: under DDP the wrapper then sees one forward per backward,
    and the parameters (shared with the wrapper) still receive the gradients of the final R_s.
    """

    def __init__(self, model, batch: dict, outputs, regression: bool | None, embed_fn=None, forward_fn=None,
                 replay: DropoutReplay | None = None):
        self.model = unwrap(model)
        self.batch = batch
        self.inputs = {k: v for k, v in batch.items() if k != "labels"}
        self.clean = logits_of(outputs)
        self.regression = self.clean.shape[-1] == 1 if regression is None else regression
        self.forward_fn = forward_fn
        if (embed_fn is None) != (forward_fn is None):
            raise ValueError("give both embed_fn and forward_from_embeddings, or neither")
        if embed_fn is not None:
            self.embeddings = embed_fn(self.model, batch)
            shape = self.embeddings.shape
        else:
            self.module = embedding_module(model)
            shape = (*self.inputs["input_ids"].shape, _embedding_width(self.module))
        self.shape = tuple(shape)
        mask = self.inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones(self.shape[:-1], device=self.clean.device)
        self.mask = mask.unsqueeze(-1).float()
        self.rng = None
        if replay is not None:
            replay.attach(model)
            self.rng = replay.state_for(self.inputs.get("input_ids"))
            if self.rng is None:
                # No recorded clean forward for this batch (the first call, or outputs from elsewhere): run the
                # clean forward again from a known state, and use it as the clean branch.
                replay.paused = True
                try:
                    self.rng = _rng_state(self.clean.device)
                    with replayed_rng(self.rng, self.clean.device):
                        self.clean = self._forward(None, detach_base=False)
                finally:
                    replay.paused = False
        self.replay = replay

    def _forward(self, delta: torch.Tensor | None, detach_base: bool) -> torch.Tensor:
        if self.forward_fn is not None:
            base = self.embeddings.detach() if detach_base else self.embeddings
            embeddings = base if delta is None else base + delta.to(base.dtype)
            return logits_of(self.forward_fn(self.model, embeddings, self.batch))
        if delta is None:
            return logits_of(self.model(**self.inputs))
        with perturbed_embeddings(self.module, delta):
            return logits_of(self.model(**self.inputs))

    def forward(self, delta: torch.Tensor, detach_base: bool = False) -> torch.Tensor:
        """Outputs with the embeddings perturbed by ``delta``; from the clean forward's RNG state if replaying."""
        if self.rng is None:
            return self._forward(delta, detach_base)
        self.replay.paused = True
        try:
            with replayed_rng(self.rng, self.clean.device):
                return self._forward(delta, detach_base)
        finally:
            self.replay.paused = False

    def ascent_forward(self, delta: torch.Tensor) -> torch.Tensor:
        # only d/d delta is needed here: the embeddings of the plain-module path are cut from their graph
        return self.forward(delta, detach_base=True)


DROPOUT = ("independent", "shared")


@register("regularizer", "smart-adv")
class SmartAdversarial(Regularizer):
    """SMART's smoothness-inducing adversarial regularizer R_s alone (Jiang et al., ACL 2020).

    Args:
        weight: lambda_s, the weight of R_s (0 switches it off).
        sigma: standard deviation of the initial noise.
        eps: radius of the perturbation ball.
        eta: ascent step size.
        steps: K, ascent steps.
        norm: ``inf`` or ``l2``, the norm of the ball and of the step normalisation.
        granularity: ``token`` (a ball per token) or ``sequence``.
        step_style: ``paper`` (projected normalised ascent) or ``mtdnn`` (the official code's step).
        start_step: optimizer steps before R_s is switched on.
        dropout: ``independent`` (the paper's code) or ``shared`` (perturbed forwards replay the clean masks).
        regression: squared error instead of the symmetric KL; None infers it from the output width (1).
        embed_fn, forward_from_embeddings: for a model without ``get_input_embeddings()``:
            ``embed_fn(model, batch)`` gives the (batch, length, hidden) input embeddings and
            ``forward_from_embeddings(model, embeddings, batch)`` the outputs computed from them. Not part of the
            config (they are code, not data).
    """

    def __init__(self, weight: float = 1.0, sigma: float = 1e-5, eps: float = 1e-5, eta: float = 1e-3,
                 steps: int = 1, norm: str = "inf", granularity: str = "token", step_style: str = "paper",
                 start_step: int = 0, dropout: str = "independent", regression: bool | None = None, *,
                 embed_fn=None, forward_from_embeddings=None):
        for key, value, allowed in (("norm", norm, NORMS), ("granularity", granularity, GRANULARITIES),
                                    ("step_style", step_style, ("paper", "mtdnn"))):
            if value not in allowed:
                raise ValueError(f"smart-adv: {key} must be one of {allowed}, got {value!r}")
        if dropout not in DROPOUT:
            raise ValueError(f"smart-adv: dropout must be one of {DROPOUT}, got {dropout!r}")
        self.weight, self.sigma, self.eps, self.eta, self.steps = weight, sigma, eps, eta, steps
        self.norm, self.granularity, self.step_style = norm, granularity, step_style
        self.start_step, self.regression = start_step, regression
        self.embed_fn, self.forward_fn = embed_fn, forward_from_embeddings
        self.replay = DropoutReplay() if dropout == "shared" else None
        self.step = 0
        self.skipped = 0  # steps whose noise gradient was not finite
        self.zero_grad: float | None = None  # share of the last batch's sequences whose noise gradient was 0
        self._warned = False

    def setup(self, context: Context) -> None:
        """Check, before the first step, that the model has input embeddings to perturb."""
        if context.model is not None and self.embed_fn is None and self.weight:
            embedding_module(context.model)

    def close(self) -> None:
        """Release the hook ``dropout=shared`` puts on the model."""
        if self.replay is not None:
            self.replay.detach()

    def __call__(self, model, batch: dict, outputs) -> dict[str, torch.Tensor]:
        if self.step < self.start_step or self.weight == 0:
            return {}
        p = _Perturbable(model, batch, outputs, self.regression, self.embed_fn, self.forward_fn, self.replay)
        clean, regression = p.clean, p.regression
        stats: dict = {}
        delta = adversarial_delta(p.ascent_forward, clean, p.shape, p.mask, self.sigma, self.eps, self.eta,
                                  self.steps, self.norm, self.granularity, regression, self.step_style,
                                  stats=stats)
        if delta is None:  # skip R_s this step, keep training; the count is in state_dict()
            self.skipped += 1
            return {}
        if stats:
            self.zero_grad = stats["zero_grad"] / max(stats["sequences"], 1)
            self._warn_if_lost(clean.device)
        return {"smart_adv": self.weight * smoothness_divergence(p.forward(delta), clean, regression)}

    def _warn_if_lost(self, device: torch.device) -> None:
        if self._warned or self.zero_grad is None or self.zero_grad < 0.5:
            return
        self._warned = True
        half = torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type) in (
            torch.float16, torch.bfloat16)
        cause = (f"under {torch.get_autocast_dtype(device.type)} autocast a perturbation of sigma={self.sigma:g}, "
                 f"eps={self.eps:g} is below the precision of the input embeddings, so the perturbed output "
                 "equals the clean one; fine-tune in float32 (--set mixed_precision=no) or raise sigma and eps"
                 if half else "sigma=0: the ascent starts from zero noise, where the divergence is at its minimum "
                 "and its gradient is zero (without dropout nothing moves it)" if self.sigma == 0
                 else f"sigma={self.sigma:g} / eps={self.eps:g} may be too small for this model")
        warnings.warn(f"smart-adv: the noise gradient is exactly zero for {100 * self.zero_grad:.0f}% of the "
                      f"sequences, so the ascent does not move them and R_s is only a dropout term: {cause}. "
                      "The share is logged as smart_zero_grad.", stacklevel=2)

    def log(self) -> dict[str, float]:
        """Extra values for the training log: the share of sequences whose noise gradient was exactly zero."""
        return {} if self.zero_grad is None else {"smart_zero_grad": self.zero_grad}

    def after_step(self, model) -> None:
        self.step += 1

    def state_dict(self) -> dict:
        return {"step": self.step, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.skipped = state["step"], state["skipped"]


@register("regularizer", "r3f")
class R3F(Regularizer):
    """R3F: one random-noise forward and a symmetric KL, no ascent (Aghajanyan et al., ICLR 2021).

    Args:
        weight: the term's weight.
        sigma: the noise scale: the standard deviation (``normal``) or the half-width (``uniform``).
        noise: ``normal`` or ``uniform`` in [-sigma, sigma].
        dropout: ``independent`` or ``shared``, as for ``smart-adv``.
        regression: squared error instead of the symmetric KL; None infers it from the output width (1).
        embed_fn, forward_from_embeddings: as for ``smart-adv``.
    """

    def __init__(self, weight: float = 1.0, sigma: float = 1e-5, noise: str = "normal",
                 dropout: str = "independent", regression: bool | None = None, *, embed_fn=None,
                 forward_from_embeddings=None):
        if noise not in ("normal", "uniform"):
            raise ValueError("r3f: noise must be 'normal' or 'uniform'")
        if dropout not in DROPOUT:
            raise ValueError(f"r3f: dropout must be one of {DROPOUT}, got {dropout!r}")
        self.weight, self.sigma, self.noise, self.regression = weight, sigma, noise, regression
        self.embed_fn, self.forward_fn = embed_fn, forward_from_embeddings
        self.replay = DropoutReplay() if dropout == "shared" else None

    setup = SmartAdversarial.setup
    close = SmartAdversarial.close

    def __call__(self, model, batch: dict, outputs) -> dict[str, torch.Tensor]:
        p = _Perturbable(model, batch, outputs, self.regression, self.embed_fn, self.forward_fn, self.replay)
        if self.noise == "normal":
            delta = torch.randn(p.shape, device=p.mask.device) * self.sigma
        else:
            delta = (torch.rand(p.shape, device=p.mask.device) * 2 - 1) * self.sigma
        return {"r3f": self.weight * smoothness_divergence(p.forward(delta * p.mask), p.clean, p.regression)}


SmartAdversarialConfig = SmartAdversarial.Config
R3FConfig = R3F.Config
