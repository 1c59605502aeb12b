"""What a run trains: a :class:`Job`, built by a task (:mod:`gentune.tasks`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass
class Job:
    """What a run trains, built by a task; everything else (schedule, optimizer, regularizers) comes from the
    run's :class:`gentune.config.RunConfig`.

    Args:
        model: the model to train (before ``accelerator.prepare``).
        objective: ``objective(model, batch) -> {"loss": scalar, "output": ...}``.
        train_set: an indexable dataset of training examples; ``collate`` makes a batch dict of tensors.
        dev_set, dev_collate: the evaluation data, or None for no evaluation.
        evaluate: ``evaluate(model, dev_dataloader, accelerator) -> metrics`` (gathered over processes).
        main_metric: the metric that picks the best model; ``greater_is_better`` its direction.
        save: ``save(unwrapped_model, directory, meta)`` writes a model directory; None: nothing is saved.
        save_best: save the best model on ``main_metric`` to OUT/best (fine-tuning), else the final one to
            OUT/``final_name`` (pretraining).
        param_groups: optimizer parameter groups (e.g. layer-wise lr decay); None: the default decay split.
        meta: written with saved models.
        summary: extra summary.json fields.
        on_end: ``on_end(unwrapped_model, out)`` on the main process after training (e.g. sample images).
        augment: ``augment(batch) -> batch`` applied to each training batch on the device, just before the
            objective. Random augmentations belong here, not in ``collate``: the data loader collates a batch
            ahead, so collate-time randomness would not come back in step with a resumed checkpoint.
        lengths: each training example's length (tokens), or a callable returning them (read only when
            ``group_by_length`` asks), for ``group_by_length``; None: the task has none.
        train_eval_set: the training examples as ``evaluate`` reads them (through ``dev_collate``), for
            ``eval_train``; None: the task cannot score its training set.
        context: what the task tells its regularizers (:class:`gentune.regularizers.base.Context` ``data``):
            the pixel normalisation and size of image tasks, and a reader of unlabeled images.
    """

    model: torch.nn.Module
    objective: Callable
    train_set: Any
    collate: Callable
    dev_set: Any = None
    dev_collate: Callable | None = None
    evaluate: Callable | None = None
    main_metric: str = "loss"
    greater_is_better: bool = True
    save: Callable | None = None
    save_best: bool = True
    final_name: str = "final"
    param_groups: list | None = None
    meta: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    on_end: Callable | None = None
    augment: Callable | None = None
    context: dict = field(default_factory=dict)
    train_eval_set: Any = None
    lengths: Any = None
