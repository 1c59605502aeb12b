"""Prompt-based fine-tuning (LM-BFF, Gao, Fisch, Chen, ACL 2021): classification as masked-word prediction.

The model is a :class:`gentune.models.prompting.PromptClassifier` (a masked LM read at the prompt's [MASK] through
the label words); the task encodes every example in the prompt (:mod:`gentune.data.prompts`). The loss is the
cross-entropy over the label words, and for regression LM-BFF's: with poles (low, high) and the gold score y at
t = (y - low) / (high - low) between them, KL([1 - t, t] || softmax(l_low, l_high)), the batch's mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import register
from .classification import map_quietly


def prompt_loss(label_logits: torch.Tensor, labels: torch.Tensor, bounds: tuple[float, float] | None) -> torch.Tensor:
    """Cross-entropy over the label words, or (``bounds`` given) the KL divergence from the gold score's two-pole
    distribution to the predicted one, averaged over the batch; in float32.

    Args:
        label_logits: (batch, C) label-word logits; (batch, 2) poles for regression.
        labels: (batch,) class indices, or float scores for regression.
        bounds: the scores of the low and the high pole (regression), or None.
    """
    logits = label_logits.float()
    if bounds is None:
        return F.cross_entropy(logits, labels.long())
    low, high = bounds
    t = ((labels.float() - low) / (high - low)).clamp(0.0, 1.0)
    target = torch.stack([1.0 - t, t], -1)
    log_p = F.log_softmax(logits, -1)
    return (torch.special.xlogy(target, target) - target * log_p).sum(-1).mean()


@register("objective", "prompt")
class PromptFinetuning:
    """Prompt-based fine-tuning (LM-BFF): the masked LM's logits of the label words at the template's [MASK].

    Args:
        template: the cloze, with {text_a}, {text_b}, {mask} and the filters :nopunct and :lower (default: the
            task's LM-BFF manual template, gentune/prompts/TASK.yaml).
        label_words: one single-token word per label, in label order; regression: the low and the high pole
            (default: the task's LM-BFF label words).
        bounds: regression: the scores of the two poles (default: the task's, STS-B 0 and 5).
    """

    def __init__(self, template: str | None = None, label_words: list[str] | None = None,
                 bounds: list[float] | None = None):
        self.template, self.label_words, self.bounds = template, label_words, bounds

    def __call__(self, model, batch: dict) -> dict:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        output = model(**inputs)
        inner = getattr(model, "module", model)  # under DDP
        bounds = getattr(inner, "bounds", None)
        return {"loss": prompt_loss(output.label_logits, batch["labels"], bounds), "output": output}




def tokenize_prompt(dataset, tokenizer, prompt, max_length: int):
    """Encode a (text_a, text_b, label) Dataset in ``prompt`` (a :class:`gentune.data.prompts.Prompt`) once;
    padding happens per batch in the collator (:class:`gentune.objectives.classification.Collator`)."""
    from ..data.prompts import encode

    def fn(batch):
        second = batch["text_b"] if prompt.pair else None
        enc = encode(prompt, tokenizer, batch["text_a"], second, max_length)
        enc["labels"] = batch["label"]
        return enc

    return map_quietly(dataset, fn, tokenizer, prompt=prompt, max_length=max_length)


PromptFinetuningConfig = PromptFinetuning.Config
