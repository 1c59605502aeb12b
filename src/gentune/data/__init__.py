"""Data loaders. Text classification: :mod:`gentune.data.glue` and the task table :mod:`gentune.data.text_tasks`."""

from .glue import load_splits, read_file, stratified_subsample
from .text_tasks import TASKS, TaskSpec, get_task

__all__ = ["TASKS", "TaskSpec", "get_task", "load_splits", "read_file", "stratified_subsample"]
