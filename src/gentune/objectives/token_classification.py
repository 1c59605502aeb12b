"""Token classification (the "BERT-tagger" of few-shot NER): a tag per word, predicted at its first subword.

The model is a Hugging Face ``AutoModelForTokenClassification``; the labels are the tag index at each word's first
subword and -100 (ignored) everywhere else, so the loss is the mean cross-entropy over words, in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import register

IGNORE = -100
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the positions whose label is not -100; 0 (with a gradient path) when there is none.

    Args:
        logits: (batch, length, tags).
        labels: (batch, length) tag indices, -100 where nothing is predicted.
    """
    chosen = labels != IGNORE
    if not bool(chosen.any()):
        return logits.sum().float() * 0.0
    return F.cross_entropy(logits[chosen].float(), labels[chosen])


@register("objective", "token-classification")
class TokenClassification:
    """Word-level tagging through a token-classification head (BIO or IO tags at first subwords).

    Args:
        scheme: bio (B- and I- tags per type) or io (I- only: EntLM's setting, two adjacent entities of one type
            merge).
    """

    def __init__(self, scheme: str = "bio"):
        if scheme not in ("bio", "io"):
            raise ValueError(f"token-classification: scheme must be bio or io, got {scheme!r}")
        self.scheme = scheme

    def __call__(self, model, batch: dict) -> dict:
        output = model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS})
        return {"loss": token_loss(output.logits, batch["labels"]), "output": output}


TokenClassificationConfig = TokenClassification.Config
