"""Regularizers: what keeps a fine-tuned model general.

Every regularizer has one hook shape (DESIGN.md rule 2)::

    terms = regularizer(model, batch, outputs)   # dict of named scalar loss terms, added to the task loss
    regularizer.after_step(model)                # optional, after each optimizer step (state such as a teacher)

Stateful regularizers also implement ``state_dict()`` / ``load_state_dict()`` so checkpoints and resume carry
their state. Registered names: ``gentune list``.
"""

from typing import Any, Protocol, runtime_checkable

import torch

from . import bregman, l2sp, radreg, smart  # noqa: F401  (registers)


@runtime_checkable
class Regularizer(Protocol):
    def __call__(self, model: torch.nn.Module, batch: dict, outputs: Any) -> dict[str, torch.Tensor]: ...
