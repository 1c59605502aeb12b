"""Regularizers: what keeps a fine-tuned (or pretrained) model general.

Every regularizer follows one protocol (:mod:`gentune.regularizers.base`; DESIGN.md rule 2)::

    reg.setup(context)                   # run length, model, the task's data
    terms = reg(model, batch, outputs)   # dict of named scalar loss terms, added to the task loss
    reg.before_step(model) / reg.after_step(model) / reg.log() / reg.state_dict() / reg.close()

with no-op defaults in :class:`Regularizer`. Registered names: ``gentune list``.
"""

from . import bregman, l2sp, radreg, smart  # noqa: F401  (registers)
from .base import Context, Regularizer, build_regularizers, collect_terms, regularized_loss

__all__ = ["Context", "Regularizer", "build_regularizers", "collect_terms", "regularized_loss"]
