"""The task layer: one file per task family, each registered under the kind ``task`` (:mod:`.base`).

- ``text-classification`` (:mod:`.text_classification`): GLUE-family text classification and regression, with a
  head or through a prompt (``objective: prompt``);
- ``image-classification`` (:mod:`.image_classification`): an image folder, a pretrained or fresh encoder;
- ``image-pretraining`` (:mod:`.image_pretraining`): ``mae`` and ``context-encoder`` on an image folder;
- ``text-pretraining`` (:mod:`.text_pretraining`): ``mlm`` on unlabeled text;
- ``ner`` (:mod:`.ner`): few-shot named entities (token classification, FFF-NER, EntLM);
- ``point-pretraining`` (:mod:`.point_pretraining`): ``point-contrast`` and ``hardest-contrastive`` on point clouds;
- ``point-classification`` (:mod:`.point_classification`): a pretrained or fresh point encoder with a head.

:func:`finetune`, :func:`pretrain` and :func:`evaluate` are what the CLI and the Python API call.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import Splits, Task, for_name, for_objective, register_task, tasks

# every task file registers itself on import: a new task is found without a line here
for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")


def finetune(cfg) -> dict:
    """Fine-tune as ``cfg`` (a fine-tuning task's config) says; returns the run summary (also OUT/summary.json)."""
    from ..train import run

    task = for_name(cfg.task)
    if task.check is not None:
        task.check(cfg)
    return run(cfg, task.build)


def pretrain(cfg) -> dict:
    """Pretrain as ``cfg`` (a pretraining task's config) says; returns the run summary."""
    from ..train import run

    task = for_objective(cfg.objective)
    if task.check is not None:
        task.check(cfg)
    return run(cfg, task.build)


def evaluate(checkpoint: str, task: str, data: str, batch_size: int = 64, objective: str | None = None,
             objective_options: dict | None = None, precision: str | None = None) -> dict:
    """Metrics of a fine-tuned checkpoint on any labelled file or folder of ``task``'s format; text tasks with
    ``objective="prompt"``: of any masked LM through a prompt, untrained (zero-shot). ``precision`` (ner: auto,
    fp32 or bf16) is the inference precision of the tasks that choose one; their throughput is ``speed``."""
    from ..errors import GentuneError

    if batch_size < 1:
        raise GentuneError(f"evaluate: batch_size must be positive, got {batch_size}")
    entry = for_name(task)
    if precision is not None and entry.name != "ner":
        raise GentuneError(f"--precision: task {task!r} ({entry.name}) scores in the precision it trained in")
    if entry.load is None or entry.read is None or entry.score is None:
        raise GentuneError(f"task {task!r} ({entry.name}) cannot evaluate a checkpoint")
    if objective is not None or objective_options:
        if entry.name != "text-classification":
            raise GentuneError(f"--objective: task {task!r} ({entry.name}) has no objective to choose at evaluation")
        model = entry.load(checkpoint, task, objective, objective_options)
    else:
        model = entry.load(checkpoint, task)
    dataset = entry.read(data, model)
    metrics = entry.score(model, dataset, batch_size, **({"precision": precision} if precision else {}))
    speed = {"speed": model.speed} if getattr(model, "speed", None) else {}
    return {"task": model.name, "file": str(data), "examples": len(dataset), **metrics, **speed}


__all__ = ["Splits", "Task", "evaluate", "finetune", "for_name", "for_objective", "pretrain", "register_task",
           "tasks"]
