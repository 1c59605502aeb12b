"""R-Drop (Liang et al., "R-Drop: Regularized Dropout for Neural Networks", NeurIPS 2021): two forwards of the same
batch through different dropout masks, and the symmetric KL between their predictions.

    L = L_NLL + alpha * 1/2 (KL(P1 || P2) + KL(P2 || P1))

with P1 the loop's own forward and P2 a second forward with fresh dropout (gradients flow through both). The NLL
is the mean of the two forwards' (``nll="mean"``, as in the authors' Hugging Face code: the term ``rdrop_nll`` =
(NLL2 - NLL1) / 2 turns the loop's NLL1 into it) or the first forward's alone (``nll="first"``). For a regression
output the divergence is the squared difference of the two predictions.

It isolates the dropout-consistency effect that SMART's R_s reduces to at a tiny eps with dropout on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import register
from ..tensors import widen
from .base import Regularizer
from .smart import logits_of, smoothness_divergence

NLL = ("mean", "first")


def rdrop_divergence(first: torch.Tensor, second: torch.Tensor, regression: bool) -> torch.Tensor:
    """1/2 (KL(P1||P2) + KL(P2||P1)) averaged over the batch, or for regression the mean squared difference."""
    if regression:
        return smoothness_divergence(first, second, True)
    return 0.5 * smoothness_divergence(first, second, False)


def task_nll(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    """Cross-entropy of classification logits, or the squared error of a regression output (batch, 1)."""
    if regression:
        return F.mse_loss(widen(logits).squeeze(-1), labels.to(widen(logits).dtype))
    return F.cross_entropy(widen(logits), labels)


@register("regularizer", "rdrop")
class RDrop(Regularizer):
    """R-Drop: the symmetric KL between two dropout forwards of the same batch (Liang et al., NeurIPS 2021).

    Args:
        alpha: the weight of the divergence.
        nll: mean (the task loss becomes the mean of both forwards' NLL, the authors' Hugging Face code) or first
            (the loop's forward only).
        regression: squared difference instead of the symmetric KL; None infers it from the output width (1).
        forward: for a plain ``nn.Module``: ``forward(model, batch)`` returns its outputs (default: a Hugging Face
            model called on the batch without its labels).
    """

    def __init__(self, alpha: float = 1.0, nll: str = "mean", regression: bool | None = None, *, forward=None):
        if nll not in NLL:
            raise ValueError(f"rdrop: nll must be one of {NLL}, got {nll!r}")
        if alpha < 0:
            raise ValueError(f"rdrop: alpha must be >= 0, got {alpha}")
        self.alpha, self.nll, self.regression, self.forward = alpha, nll, regression, forward

    def _second(self, model, batch: dict) -> torch.Tensor:
        if self.forward is not None:
            return logits_of(self.forward(model, batch))
        return logits_of(model(**{k: v for k, v in batch.items() if k != "labels"}))

    def __call__(self, model, batch: dict, outputs) -> dict[str, torch.Tensor]:
        first = logits_of(outputs)
        second = self._second(model, batch)  # the model is in train mode: fresh dropout masks
        regression = first.shape[-1] == 1 if self.regression is None else self.regression
        terms = {"rdrop": self.alpha * rdrop_divergence(first, second, regression)}
        if self.nll == "mean":
            if "labels" not in batch:
                raise ValueError("rdrop: nll=mean needs the batch's labels; use nll=first")
            labels = batch["labels"]
            terms["rdrop_nll"] = 0.5 * (task_nll(second, labels, regression) - task_nll(first, labels, regression))
        return terms


RDropConfig = RDrop.Config
