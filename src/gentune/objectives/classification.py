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

    return map_quietly(dataset, fn)


def map_quietly(dataset, fn):
    """``dataset.map(fn, batched=True)`` in place of its columns, without datasets' progress bar (tokenizing a few
    thousand rows takes well under a second)."""
    import datasets

    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return dataset.map(fn, batched=True, remove_columns=dataset.column_names)
    finally:
        if bars:
            datasets.enable_progress_bars()


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
