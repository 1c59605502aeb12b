"""FFF-NER (Wang, Zhao, Wang, Shang, Findings of EMNLP 2022): few-shot NER as masked-token prediction over spans.

Each training example is one span of a sentence in FFF-NER's input (:func:`gentune.data.ner.encode_span`): a gold
entity, or a sampled negative (:func:`gentune.data.ner.sample_spans`). The model
(:class:`gentune.models.ner.SpanNer`) predicts at the first mask whether the span is an entity and at the second
its type. The loss is

    CE(is-entity logits, is-entity) averaged over every span of the batch
    + CE(type logits, type) averaged over the batch's gold entities (0 when it has none),

in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import register

IGNORE = -100
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "entity_at", "type_at")


def fffner_loss(entity_logits: torch.Tensor, type_logits: torch.Tensor, is_entity: torch.Tensor,
                type_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, is-entity term, type term).

    Args:
        entity_logits: (batch, 2) logits of not-an-entity and an-entity.
        type_logits: (batch, types).
        is_entity: (batch,) 0 or 1.
        type_labels: (batch,) the gold type of an entity, -100 for a negative span.
    """
    entity = F.cross_entropy(entity_logits.float(), is_entity.long())
    gold = type_labels != IGNORE
    kind = (F.cross_entropy(type_logits[gold].float(), type_labels[gold]) if bool(gold.any())
            else type_logits.sum().float() * 0.0)
    return entity + kind, entity, kind


@register("objective", "fffner")
class FffNer:
    """FFF-NER: the is-entity and type predictions at two masks of each candidate span's input.

    Args:
        max_width: the widest span, in words, that is sampled as a negative and predicted (gold entities wider
            than it still train; the share of them is reported).
        negative_multiplier: negatives drawn per sentence: int((words + per_entity x entities) x this), with
            replacement, at most every span of the sentence.
        per_entity: the weight of each entity in that count.
        markers: new (four new tokens, initialised from [MASK], [ and ]) or vocab (the vocabulary's own [, ] and
            [MASK], as the TensorFlow reference).
    """

    def __init__(self, max_width: int = 8, negative_multiplier: float = 3.0, per_entity: int = 10,
                 markers: str = "new"):
        if max_width < 1:
            raise ValueError(f"fffner: max_width must be at least 1, got {max_width}")
        if negative_multiplier < 0 or per_entity < 0:
            raise ValueError("fffner: negative_multiplier and per_entity must be >= 0")
        if markers not in ("new", "vocab"):
            raise ValueError(f"fffner: markers must be new or vocab, got {markers!r}")
        self.max_width, self.negative_multiplier, self.per_entity = max_width, negative_multiplier, per_entity
        self.markers = markers

    def __call__(self, model, batch: dict) -> dict:
        output = model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS})
        loss, entity, kind = fffner_loss(output.entity_logits, output.type_logits, batch["is_entity"],
                                         batch["type_label"])
        return {"loss": loss, "output": output, "log": {"entity_loss": entity.detach(), "type_loss": kind.detach()}}


FffNerConfig = FffNer.Config
