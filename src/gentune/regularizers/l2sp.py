"""L2-SP (Li, Grandvalet, Davoine, "Explicit Inductive Bias for Transfer Learning with Convolutional Networks",
ICML 2018): keep fine-tuned weights near the pretrained starting point.

    Omega(w) = alpha/2 * ||w_S - w_S^0||^2 + beta/2 * ||w_new||^2

where w_S are the parameters that existed at the start of fine-tuning (the pretrained backbone) and w_new
the freshly initialised head (selected by name prefix).
"""

from __future__ import annotations

import torch

from ..registry import register
from ..tensors import unwrap, widen
from .base import Regularizer


def l2sp_penalty(params: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor], head: set[str],
                 alpha: float, beta: float) -> torch.Tensor:
    """L2-SP penalty.

    Args:
        params: name -> current parameter (any shape).
        anchor: name -> starting-point parameter, same shapes, for every name not in ``head``.
        head: names of new parameters, penalised towards 0 instead.
        alpha: weight of the distance to the starting point.
        beta: weight of the plain L2 on new parameters.

    Returns:
        A scalar tensor, differentiable in ``params``.
    """
    total = None
    for name, p in params.items():
        if name in head:
            term = 0.5 * beta * widen(p).pow(2).sum()
        else:
            term = 0.5 * alpha * (widen(p) - anchor[name].to(device=p.device, dtype=widen(p).dtype)).pow(2).sum()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("l2sp: the model has no trainable parameters")
    return total


@register("regularizer", "l2sp")
class L2SP(Regularizer):
    """L2-SP: penalise the distance to the pretrained starting point (Li et al., ICML 2018).

    Args:
        alpha: weight of the distance of the pretrained parameters to their starting point.
        beta: weight of the plain L2 penalty on the new head.
        head_prefixes: parameter-name prefixes of the new head (penalised towards 0).
    """

    def __init__(self, alpha: float = 0.01, beta: float = 0.01,
                 head_prefixes: tuple[str, ...] = ("classifier", "score", "head", "pre_classifier")):
        if alpha < 0 or beta < 0:
            raise ValueError(f"l2sp: alpha and beta must be >= 0 (a negative weight rewards distance), got {alpha}, {beta}")
        self.alpha, self.beta = alpha, beta
        self.head_prefixes = tuple(head_prefixes)
        self.anchor: dict[str, torch.Tensor] | None = None

    @staticmethod
    def _named(model):
        return {n: p for n, p in unwrap(model).named_parameters() if p.requires_grad}

    def _is_head(self, name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in self.head_prefixes)

    def __call__(self, model, batch, outputs) -> dict[str, torch.Tensor]:
        params = self._named(model)
        if self.anchor is None:  # first call happens before the first optimizer step: the starting point
            self.anchor = {n: p.detach().clone() for n, p in params.items() if not self._is_head(n)}
        head = {n for n in params if self._is_head(n)}
        return {"l2sp": l2sp_penalty(params, self.anchor, head, self.alpha, self.beta)}

    def state_dict(self) -> dict:
        return {"anchor": self.anchor}

    def load_state_dict(self, state: dict) -> None:
        self.anchor = state["anchor"]


L2SPConfig = L2SP.Config
