"""The one regularizer protocol, and what the training loop and the Hugging Face ``Trainer`` share to use it.

A regularizer is an object with this life cycle (every method but ``__call__`` has a no-op default in
:class:`Regularizer`, the only base class)::

    reg.setup(context)                   # once, before training: run length, model, data the method needs
    terms = reg(model, batch, outputs)   # every micro-batch: named scalar loss terms added to the task loss
    reg.before_step(model)               # after backward, before the optimizer step (e.g. tie gradients)
    reg.after_step(model)                # after each optimizer step that moved the weights (e.g. a teacher)
    reg.log()                            # values to log beside the terms (e.g. an unweighted estimate)
    reg.state_dict() / reg.load_state_dict(state)   # what a resumed run needs
    reg.close()                          # release hooks the method put on the model

:func:`build_regularizers` makes them from registry names and options (or takes objects the caller built),
:func:`collect_terms` calls them on a batch with one rule for clashing term names, and :func:`regularized_loss`
adds the terms to the task loss. The loop (:mod:`gentune.train`) and :mod:`gentune.integrations.hf_trainer` both
use these, so a regularizer behaves the same in either.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Callable, Iterable

import torch

from .. import registry
from ..errors import GentuneError


@dataclasses.dataclass
class Context:
    """What a regularizer may need to know before the first step, given to :meth:`Regularizer.setup`.

    Attributes:
        total_steps: optimizer steps of the run (0 when unknown).
        model: the model being trained (before any distributed wrapper), or None.
        data: facts about the task's data and ways to read more of it, by name. The image tasks give ``mean``,
            ``std`` (pixel normalisation), ``image_size`` and ``unlabeled`` (``unlabeled(path, batch_size,
            generator, image_size, mean, std) -> stream`` of normalised unlabeled images:
            :func:`gentune.data.images.image_stream`). Masked-LM pretraining gives ``unlabeled`` (the same call, a
            :class:`gentune.data.streams.TextStream` of padded token ids; the image options unused) and
            ``features`` (``features(model, batch) -> (n, d)``, the text representation:
            :func:`gentune.tasks.text_pretraining.text_features`).
    """

    total_steps: int = 0
    model: torch.nn.Module | None = None
    data: dict[str, Any] = dataclasses.field(default_factory=dict)


class Regularizer:
    """The base of every built-in regularizer: no-op defaults for all but ``__call__``.

    ``name`` is the registry name (set by :func:`build_regularizers`); it prefixes a term whose name another
    regularizer already used.
    """

    name: str = ""

    def setup(self, context: Context) -> None:
        """Once before training (and again for each new run); the default does nothing."""

    def __call__(self, model: torch.nn.Module, batch: dict, outputs: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def before_step(self, model: torch.nn.Module) -> None:
        """After backward, before the optimizer step (gradients are there to change)."""

    def after_step(self, model: torch.nn.Module) -> None:
        """After an optimizer step that moved the weights (not one the fp16 grad scaler skipped)."""

    def log(self) -> dict[str, float]:
        """Values for the training log beside the loss terms."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; the default accepts only the empty state."""

    def close(self) -> None:
        """Release what the regularizer holds on the model (hooks)."""


_OPTIONAL = ("setup", "before_step", "after_step", "log", "state_dict", "load_state_dict", "close")


class _Adapter(Regularizer):
    """A caller's regularizer that is not a :class:`Regularizer`: any ``fn(model, batch, outputs) -> terms``,
    with whichever of the optional methods it has."""

    def __init__(self, obj: Callable, name: str):
        self.obj, self.name = obj, name
        for method in _OPTIONAL:
            if callable(getattr(obj, method, None)):
                setattr(self, method, getattr(obj, method))

    def __call__(self, model, batch, outputs):
        return self.obj(model, batch, outputs)

    def __getattr__(self, item):  # the wrapped object's own attributes (a teacher, counters) stay reachable
        if item == "obj":
            raise AttributeError(item)
        return getattr(self.obj, item)


def _default_name(obj: Any) -> str:
    """A regularizer object's name: its own ``name``, else its registry name, else its class name."""
    if getattr(obj, "name", None):
        return obj.name
    for entry in registry.entries("regularizer"):
        if type(obj) is entry.factory:
            return entry.name
    return type(obj).__name__


def as_regularizer(obj: Any, name: str | None = None) -> Regularizer:
    """``obj`` itself if it is a :class:`Regularizer` (named if it has no name), else wrapped so that it has every
    method of the protocol."""
    if not callable(obj):
        raise GentuneError(f"regularizers: expected a name, a {{name: options}} dict or a regularizer object, "
                           f"got {obj!r}")
    if isinstance(obj, Regularizer):
        if not obj.name:
            obj.name = name or _default_name(obj)
        return obj
    return _Adapter(obj, name or _default_name(obj))


def parse_specs(regularizers, unique: bool = False) -> list[tuple[str, dict | None, Any]]:
    """``(name, options, object)`` for each requested regularizer: a name, a ``{name: options}`` dict (or a list
    of names, dicts and objects), or objects built by the caller (``options`` None, ``object`` set). ``unique``:
    a name given twice is an error (a run config keys options by name)."""
    if regularizers is None:
        return []
    if isinstance(regularizers, str) or not isinstance(regularizers, (Mapping, Iterable)):
        regularizers = [regularizers]
    items = list(regularizers.items()) if isinstance(regularizers, Mapping) else []
    if not isinstance(regularizers, Mapping):
        for item in regularizers:
            if isinstance(item, str):
                items.append((item, None))
            elif isinstance(item, Mapping):
                items.extend(item.items())
            else:
                items.append((None, item))
    specs = []
    for name, value in items:
        if name is None:
            specs.append((as_regularizer(value).name, None, value))
            continue
        if not isinstance(name, str):
            raise GentuneError(f"regularizers: names must be strings, got {name!r}")
        if value is not None and not isinstance(value, Mapping):
            raise GentuneError(f"regularizers: options of {name!r} must be a dict, got {type(value).__name__}")
        specs.append((name, dict(value or {}), None))
    names = [n for n, _, _ in specs]
    if unique and len(set(names)) < len(names):
        raise GentuneError(f"regularizer: a name is given twice in {names} (options are per name)")
    return specs


def build_regularizers(regularizers, context: Context | None = None, unique: bool = False) -> list[Regularizer]:
    """Regularizer objects from names and options (see :func:`parse_specs`), each set up with ``context``.

    An unknown name or option, or a bad option value, is a :class:`GentuneError`; anything else a factory raises
    is a bug and keeps its traceback.
    """
    built = []
    for name, options, obj in parse_specs(regularizers, unique):
        reg = as_regularizer(obj if obj is not None else registry.create("regularizer", name, **options), name)
        built.append(reg)
    if context is not None:
        for reg in built:
            reg.setup(context)
    return built


def collect_terms(regularizers: list[Regularizer], model, batch: dict, outputs,
                  reserved: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """Every regularizer's named terms on one batch. A name already taken (by an earlier regularizer, or in
    ``reserved``, e.g. the loop's ``task``) is kept under ``<regularizer name>/<term>`` (and, for a second
    regularizer of the same name, ``<name>#<position>/<term>``), so every term counts and is logged on its own
    (smart and bregman each name theirs ``bregman``)."""
    taken = set(reserved)
    terms: dict[str, torch.Tensor] = {}
    for i, reg in enumerate(regularizers):
        for key, value in reg(model, batch, outputs).items():
            name = key
            if name in taken:
                name = f"{reg.name}/{key}"
            if name in taken:  # two regularizers of one name (objects given to a trainer): their positions
                name = f"{reg.name}#{i + 1}/{key}"
            taken.add(name)
            terms[name] = value
    return terms


def regularized_loss(task_loss: torch.Tensor, terms: Mapping[str, torch.Tensor], scale: float = 1.0) -> torch.Tensor:
    """``task_loss + scale * sum(terms)``: the loss the optimizer follows (``scale`` lets a trainer that normalises
    its loss over accumulated micro-batches weigh the terms alike)."""
    if scale == 1.0:
        return sum([task_loss, *terms.values()])  # left to right: the task loss first
    return task_loss + (sum(terms.values()) * scale).to(task_loss.dtype)


__all__ = ["Context", "Regularizer", "as_regularizer", "build_regularizers", "collect_terms", "parse_specs",
           "regularized_loss"]
