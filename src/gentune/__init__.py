"""gentune: generalization-aware pretraining and fine-tuning.

Public API (nothing heavy is imported until used)::

    import gentune
    summary = gentune.finetune(task="rte", out="runs/rte", train_size=1000)
    summary = gentune.finetune(train=my_dataset, dev=my_dev_dataset, text_column="review", out="runs/mine")
    metrics = gentune.evaluate(checkpoint="runs/rte/best", task="rte", data="test.tsv")
    summary = gentune.pretrain(objective="mae", data="images/", out="runs/mae")

    from gentune.train import Job, fit      # the loop itself, in process, callable many times
"""

from __future__ import annotations

from .errors import GentuneError
from .registry import create, list_methods, register

from .version import __version__


def _in_memory(value) -> bool:
    """A ``datasets.Dataset``/``DatasetDict`` given to the Python API (saved to disk so a run can resume)."""
    return type(value).__module__.startswith("datasets.")


def _config(kind: str, config, kwargs: dict, source: str):
    from .config import apply_mapping
    from .tasks import for_name, for_objective

    if any(_in_memory(kwargs.get(k)) for k in ("train", "dev", "test", "dataset")):
        from .data.tables import to_disk

        kwargs = {k: to_disk(v) if _in_memory(v) else v for k, v in kwargs.items()}
    if config is None:
        if kind == "finetune":
            from .tasks.text_classification import implied_task

            name = implied_task(*(kwargs.get(k) for k in ("task", "data_dir", "train", "dataset")))
            config = for_name(str(name)).config()
        else:
            config = for_objective(str(kwargs.get("objective", "mae"))).config()
    return apply_mapping(config, kwargs, source)


def finetune(config=None, **kwargs) -> dict:
    """Fine-tune a model; keyword arguments are the task's config fields (``task="rte"``: see
    :class:`gentune.tasks.text_classification.TextClassificationConfig`; ``task="image-classification"``:
    :class:`gentune.tasks.image_classification.ImageClassificationConfig`).

    ``regularizer_options`` takes ``{name: {option: value}}``. Your own data: ``train=``/``dev=``/``test=`` take
    files or :class:`datasets.Dataset` objects, ``dataset=`` a name, a folder or a :class:`datasets.DatasetDict`
    (in-memory data is saved once under ``$GENTUNE_CACHE``, default ~/.cache/gentune, so a rerun resumes), with
    ``text_column``, ``label_column``, ... as on the command line. Returns the summary dict (also written to
    ``OUT/summary.json``).
    """
    from .tasks import finetune as _finetune

    return _finetune(_config("finetune", config, kwargs, "finetune()"))


def pretrain(config=None, **kwargs) -> dict:
    """Pretrain an image encoder (``objective="mae"`` or ``"context-encoder"``); keyword arguments are
    :class:`gentune.tasks.image_pretraining.ImagePretrainingConfig` fields, ``objective_options`` takes ``{name:
    {option: value}}``. Returns the summary dict; the encoder is saved to ``OUT/encoder``."""
    from .tasks import pretrain as _pretrain

    return _pretrain(_config("pretrain", config, kwargs, "pretrain()"))


def evaluate(checkpoint: str, task: str, data: str, batch_size: int = 64) -> dict:
    """Metrics of a fine-tuned checkpoint on any file (or image folder) of the task's formats."""
    from .tasks import evaluate as _evaluate

    return _evaluate(checkpoint, task, data, batch_size=batch_size)


__all__ = ["GentuneError", "create", "evaluate", "finetune", "list_methods", "pretrain", "register", "__version__"]
