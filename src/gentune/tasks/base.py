"""What a task is: one record per task family, registered under the kind ``task``.

A task file (``text_classification.py``, ``image_classification.py``, ``image_pretraining.py``) holds its config
dataclass (a :class:`gentune.config.RunConfig` with the task's own fields), ``datasets(cfg)`` (the data assembly,
which training and ``gentune diagnose``'s generalization gap both call, so they cannot drift) and ``build(cfg) ->
Job`` (what :func:`gentune.train.run` trains), and registers them with :func:`register_task`. ``gentune finetune
--task NAME`` finds the fine-tuning task that claims NAME, ``gentune pretrain --objective NAME`` the pretraining task
that trains that objective; the CLI itself knows no task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .. import registry
from ..errors import GentuneError


@dataclass
class Splits:
    """What ``datasets(cfg)`` returns: the training examples, the held-out ones (None when there are none), for
    image tasks the pool the pixel statistics come from (every training image, before class subsets), and what
    else the task learned from its data (``info``: the text task's label set and metrics)."""

    train: Any
    heldout: Any = None
    pool: Any = None
    info: Any = None


@dataclass(frozen=True)
class Task:
    """One task family.

    Attributes:
        name: the registry name (``text-classification``).
        config: its config dataclass, a :class:`gentune.config.RunConfig` subclass.
        build: ``build(cfg) -> Job``, called after OUT is checked and the RNGs are seeded.
        datasets: ``datasets(cfg) -> Splits``.
        stage: ``finetune`` or ``pretrain`` (the command that runs it).
        summary: one line for ``gentune list``.
        claims: ``claims(name) -> bool``: the ``--task`` names that mean this task (default: its own name).
        objectives: a pretraining task's objectives (``gentune pretrain --objective``).
        check: ``check(cfg)``: cheap checks run before OUT is touched (names, paths), or None.
        load: ``load(checkpoint, task_name) -> model``, a fine-tuned checkpoint ready for ``score``, or None.
        read: ``read(path, model) -> dataset``: a labelled file or folder of the task's format, or None.
        score: ``score(model, dataset, batch_size) -> metrics`` on every example, or None.
        describe: ``describe() -> (task lines, model lines)`` for ``gentune list``, or None.
    """

    name: str
    config: type
    build: Callable[[Any], Any]
    datasets: Callable[[Any], Splits]
    stage: str = "finetune"
    summary: str = ""
    claims: Callable[[str], bool] | None = None
    objectives: tuple[str, ...] = ()
    check: Callable[[Any], None] | None = None
    load: Callable[[str, str], Any] | None = None
    read: Callable[[str, Any], Any] | None = None
    score: Callable[[Any, Any, int], dict] | None = None
    describe: Callable[[], tuple[list[str], list[str]]] | None = None

    def is_for(self, name: str) -> bool:
        return self.claims(name) if self.claims is not None else name == self.name


def register_task(task: Task) -> Task:
    """Register ``task`` under its name (its config dataclass is the entry's config)."""
    registry.register("task", task.name, task.config)(task)
    return task


def tasks(stage: str | None = None) -> list[Task]:
    """Every registered task (of one stage)."""
    return [e.factory for e in registry.entries("task") if stage is None or e.factory.stage == stage]


def for_name(name: str) -> Task:
    """The fine-tuning task that claims ``--task name``."""
    if not isinstance(name, str) or not name:
        raise GentuneError("config: task is required (--task)")
    for task in tasks("finetune"):
        if task.is_for(name):
            return task
    known = [line.split()[0] for t in tasks("finetune") for line in (t.describe()[0] if t.describe else [t.name])]
    raise GentuneError(f"unknown task {name!r} (known: {', '.join(known)})")


def for_objective(objective: str) -> Task:
    """The pretraining task that trains ``objective``."""
    for task in tasks("pretrain"):
        if objective in task.objectives:
            return task
    registry.get("objective", objective)  # an unknown name: the error lists the known ones
    trained = [o for t in tasks("pretrain") for o in t.objectives]
    raise GentuneError(f"objective {objective!r} is not a pretraining objective (pretraining: {', '.join(trained)})")


__all__ = ["Splits", "Task", "for_name", "for_objective", "register_task", "tasks"]
