"""EntLM (Ma, Zhou, Gui, Tan, Zhang, Huang, NAACL 2022): NER as language modelling without templates.

The masked LM reads the sentence as it is (nothing masked); at each entity word's first subword it is trained to
predict its type's label word, and at every other token the token itself. The loss is the masked-LM cross-entropy
over those positions (labels -100 elsewhere: special tokens, padding, an entity word's later subwords). A word is
predicted as type t when the vocabulary argmax at its first subword is t's label word, and O otherwise (IO tags).
"""

from __future__ import annotations

from ..registry import register
from .mlm import masked_lm_loss

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@register("objective", "entlm")
class EntLM:
    """EntLM's label-word objective through the model's masked-LM head.

    Args:
        label_map: a label-word map JSON ({"I-PER": [words], ...}); default: the first label_map*.json beside the
            training file or one folder above it (the EntLM splits' layout).
        virtual: a new token per type whose embedding is the mean of its label words' (EntLM's virtual label
            words); false: the first label word of each type that is one token.
    """

    def __init__(self, label_map: str | None = None, virtual: bool = True):
        self.label_map, self.virtual = label_map, virtual

    def __call__(self, model, batch: dict) -> dict:
        output = model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS})
        loss, correct, count = masked_lm_loss(output.logits, batch["labels"])
        return {"loss": loss, "output": output}


EntLMConfig = EntLM.Config
