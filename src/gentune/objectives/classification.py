"""Supervised sequence classification and regression (GLUE-style fine-tuning).

The loss is computed here in float32, not by the model, so it is the same under mixed precision and the
regularizers see the raw logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import register


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    """Cross-entropy (classification) or mean squared error (regression, one output).

    Args:
        logits: (batch, num_labels) model outputs; (batch, 1) for regression.
        labels: (batch,) class indices, or float scores for regression.
        regression: whether the task is regression.
    """
    logits = logits.float()
    if regression:
        return F.mse_loss(logits.squeeze(-1), labels.float())
    return F.cross_entropy(logits, labels.long())


def predictions(logits: torch.Tensor, regression: bool) -> torch.Tensor:
    """Class indices (argmax) or the regression score."""
    return logits.float().squeeze(-1) if regression else logits.argmax(-1)


@register("objective", "sequence-classification")
class SequenceClassification:
    """Supervised fine-tuning of a Hugging Face sequence classifier (classification or regression).

    Args:
        regression: mean squared error on one output instead of cross-entropy.
    """

    def __init__(self, regression: bool = False):
        self.regression = regression

    def __call__(self, model, batch: dict) -> dict:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        output = model(**inputs)
        loss = classification_loss(output.logits, batch["labels"], self.regression)
        return {"loss": loss, "output": output}


def tokenize(dataset, tokenizer, max_length: int, text_pair: bool):
    """Tokenize a (text_a, text_b, label) Dataset once; padding happens per batch in the collator."""

    def fn(batch):
        second = batch["text_b"] if text_pair else None
        enc = tokenizer(batch["text_a"], second, truncation=True, max_length=max_length)
        enc["labels"] = batch["label"]
        return enc

    return map_quietly(dataset, fn, tokenizer, max_length=max_length, text_pair=text_pair)


def map_quietly(dataset, fn, tokenizer, **params):
    """``dataset.map(fn, batched=True)`` in place of its columns, without datasets' progress bar (tokenizing a few
    thousand rows takes well under a second).

    The result's fingerprint (datasets' cache key) is computed here from the dataset's, the tokenizer's serialized
    state, settings and init arguments, the library versions, ``params`` (everything else ``fn`` reads) and
    ``fn``'s code: datasets would otherwise pickle the
    tokenizer inside ``fn`` to hash it, which took 2 of the 6 seconds of a tiny 3-step run."""
    import datasets

    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return dataset.map(fn, batched=True, remove_columns=dataset.column_names,
                           new_fingerprint=_fingerprint(dataset, fn, tokenizer, params))
    finally:
        if bars:
            datasets.enable_progress_bars()


def _fingerprint(dataset, fn, tokenizer, params: dict) -> str | None:
    import hashlib
    import json

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow tokenizer: datasets hashes it
        return None
    import datasets
    import tokenizers
    import transformers

    from ..version import __version__

    state = json.loads(backend.to_str())
    state.pop("truncation", None), state.pop("padding", None)  # set by each call from the attributes below
    settings = {k: getattr(tokenizer, k, None) for k in ("truncation_side", "padding_side", "model_input_names",
                                                         "split_special_tokens", "model_max_length",
                                                         "clean_up_tokenization_spaces", "add_prefix_space")}
    versions = [__version__, transformers.__version__, tokenizers.__version__, datasets.__version__]
    h = hashlib.sha256()
    for part in (dataset._fingerprint, type(tokenizer).__name__, json.dumps(state),
                 json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str),
                 json.dumps(settings, sort_keys=True, default=repr),
                 json.dumps(tokenizer.init_kwargs, sort_keys=True, default=repr), json.dumps(versions),
                 json.dumps(params, sort_keys=True, default=repr), fn.__module__, fn.__qualname__,
                 fn.__code__.co_code.hex(), repr(fn.__code__.co_consts), repr(fn.__code__.co_names)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


class Collator:
    """Dynamic padding to the longest sequence of each batch."""

    def __init__(self, tokenizer, regression: bool):
        self.tokenizer = tokenizer
        self.regression = regression

    def __call__(self, features: list[dict]) -> dict:
        labels = [f["labels"] for f in features]
        inputs = [{k: v for k, v in f.items() if k != "labels"} for f in features]
        batch = dict(self.tokenizer.pad(inputs, return_tensors="pt"))
        batch["labels"] = torch.tensor(labels, dtype=torch.float32 if self.regression else torch.long)
        return batch


SequenceClassificationConfig = SequenceClassification.Config
