"""gentune: generalization-aware pretraining and fine-tuning.

Public API (nothing heavy is imported until used)::

    import gentune
    summary = gentune.finetune(task="rte", out="runs/rte", train_size=1000)
    metrics = gentune.evaluate(checkpoint="runs/rte/best", task="rte", data="test.tsv")
"""

from __future__ import annotations

from .errors import GentuneError
from .registry import create, list_methods, register

__version__ = "0.1.0"


def finetune(config=None, **kwargs) -> dict:
    """Fine-tune a model; keyword arguments are :class:`gentune.config.FinetuneConfig` fields.

    ``regularizer_options`` takes ``{name: {option: value}}``. Returns the summary dict (also written to
    ``OUT/summary.json``).
    """
    from .config import FinetuneConfig, apply_mapping
    from .finetuning import finetune as _finetune

    cfg = config if config is not None else FinetuneConfig()
    cfg = apply_mapping(cfg, kwargs, "finetune()")
    return _finetune(cfg)


def pretrain(config=None, **kwargs) -> dict:
    """Pretrain an image encoder (``objective="mae"`` or ``"context-encoder"``); keyword arguments are
    :class:`gentune.config.PretrainConfig` fields, ``objective_options`` takes ``{name: {option: value}}``.
    Returns the summary dict; the encoder is saved to ``OUT/encoder``."""
    from .config import PretrainConfig, apply_mapping
    from .pretraining import pretrain as _pretrain

    cfg = config if config is not None else PretrainConfig()
    cfg = apply_mapping(cfg, kwargs, "pretrain()")
    return _pretrain(cfg)


def evaluate(checkpoint: str, task: str, data: str, batch_size: int = 64) -> dict:
    """Metrics of a fine-tuned checkpoint on any file of the task's formats."""
    from .finetuning import evaluate as _evaluate

    return _evaluate(checkpoint, task, data, batch_size=batch_size)


def __getattr__(name: str):
    if name in ("FinetuneConfig", "PretrainConfig"):
        from . import config

        return getattr(config, name)
    raise AttributeError(f"module 'gentune' has no attribute {name!r}")


__all__ = ["FinetuneConfig", "GentuneError", "PretrainConfig", "create", "evaluate", "finetune", "list_methods",
           "pretrain", "register", "__version__"]
