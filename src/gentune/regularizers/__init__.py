"""Regularizers: what keeps a fine-tuned (or pretrained) model general.

Every regularizer follows one protocol (:mod:`gentune.regularizers.base`; DESIGN.md rule 2)::

    reg.setup(context)                   # run length, model, the task's data
    terms = reg(model, batch, outputs)   # dict of named scalar loss terms, added to the task loss
    reg.before_step(model) / reg.after_step(model) / reg.log() / reg.state_dict() / reg.close()

with no-op defaults in :class:`Regularizer`. Registered names: ``gentune list``.
"""

import importlib
import pkgutil

from .base import Context, Regularizer, build_regularizers, collect_terms, regularized_loss

# every module of this package registers itself on import: a new file is found without a line here
for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Context", "Regularizer", "build_regularizers", "collect_terms", "regularized_loss"]
