"""A masked LM as a classifier through a prompt (LM-BFF, Gao, Fisch, Chen, ACL 2021): the logits of the label words
at the prompt's [MASK].

For an encoded prompt x with its [MASK] at position m and label words v_1..v_C,

    logit_c(x) = [MLMHead(h_m(x))]_{v_c},

the masked LM's vocabulary logits at m restricted to the label words, so that softmax over c is p(label c | x) as
LM-BFF defines it, and a head initialised by pretraining instead of at random. Regression (STS-B) has two poles
(v_low, v_high) standing for scores (low, high): the prediction is low + (high - low) p(v_high | x), where p is the
softmax over the two poles, and the loss is LM-BFF's KL divergence to the gold score's place between the poles
(:func:`gentune.objectives.prompt.prompt_loss`).

Called like a Hugging Face sequence classifier (keyword inputs; an output whose ``logits`` are (batch, C), or
(batch, 1) scores for regression), so every regularizer, the evaluation and ``gentune diagnose`` work unchanged;
the label-word logits are also ``output.label_logits``. Only the [MASK] position goes through the MLM head (one row
per example instead of every token's vocabulary), where the architecture's head is known to be applied to the
encoder's last hidden states as they are; otherwise the whole masked LM runs and the [MASK] row is taken.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

from ..errors import GentuneError

# masked-LM classes whose forward is head(base(x).last_hidden_state), with the head's attribute name
_HEADS = {"BertForMaskedLM": "cls", "RobertaForMaskedLM": "lm_head", "XLMRobertaForMaskedLM": "lm_head",
          "CamembertForMaskedLM": "lm_head", "AlbertForMaskedLM": "predictions", "ErnieForMaskedLM": "cls",
          "MPNetForMaskedLM": "lm_head"}


@dataclass
class PromptOutput(ModelOutput):
    """``logits``: the label-word logits (classification) or the score (regression, (batch, 1));
    ``label_logits``: the label-word logits, (batch, C) or (batch, 2) poles."""

    logits: torch.Tensor | None = None
    label_logits: torch.Tensor | None = None


class PromptClassifier(torch.nn.Module):
    """A masked LM read at its [MASK] through label words.

    Args:
        mlm: an ``AutoModelForMaskedLM``.
        label_ids: the vocabulary id of each label word, in label order (regression: low pole, high pole).
        mask_token_id: the tokenizer's [MASK] id; each input holds it exactly once.
        bounds: regression only: the scores of the two poles.
    """

    def __init__(self, mlm, label_ids: list[int], mask_token_id: int, bounds: tuple[float, float] | None = None):
        super().__init__()
        if bounds is not None and len(label_ids) != 2:
            raise GentuneError(f"prompt: a regression prompt has two poles, got {len(label_ids)} label words")
        vocab = mlm.get_output_embeddings().weight.shape[0] if mlm.get_output_embeddings() is not None else None
        if vocab is not None and any(not 0 <= i < vocab for i in label_ids):
            raise GentuneError(f"prompt: label word ids {label_ids} outside the vocabulary ({vocab})")
        self.mlm = mlm
        self.config = mlm.config
        self.label_ids = list(int(i) for i in label_ids)
        self.mask_token_id = int(mask_token_id)
        self.bounds = tuple(float(b) for b in bounds) if bounds is not None else None
        self.register_buffer("_labels", torch.tensor(self.label_ids, dtype=torch.long), persistent=False)

    @property
    def is_regression(self) -> bool:
        return self.bounds is not None

    def get_input_embeddings(self):
        return self.mlm.get_input_embeddings()

    def mask_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The position of each row's [MASK]; a row without one, or with several, is an error."""
        hits = input_ids == self.mask_token_id
        counts = hits.sum(1)
        if bool((counts != 1).any()):
            row = int((counts != 1).nonzero()[0, 0])
            raise GentuneError(f"prompt: input row {row} holds {int(counts[row])} [MASK] tokens, not one: encode it "
                               "with its prompt (gentune.data.prompts.encode)")
        return hits.int().argmax(1)

    def mask_hidden(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None,
                    mask_pos=None) -> torch.Tensor:
        """The encoder's last hidden state at each row's [MASK], (batch, hidden): the prompt's representation."""
        if mask_pos is None:
            if input_ids is None:
                raise GentuneError("prompt: give input_ids (or mask_pos with inputs_embeds): the [MASK] position is "
                                   "read from them")
            mask_pos = self.mask_positions(input_ids)
        kwargs = {"attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.mlm.base_model(input_ids=input_ids, inputs_embeds=inputs_embeds, **kwargs).last_hidden_state
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), mask_pos]

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None, mask_pos=None,
                **_) -> PromptOutput:
        head_name = _HEADS.get(type(self.mlm).__name__)
        head = getattr(self.mlm, head_name) if head_name else None
        if head is not None:
            at = self.mask_hidden(input_ids, attention_mask, token_type_ids, inputs_embeds, mask_pos)
            vocab = head(at)  # (batch, vocab): the head on the [MASK] rows only
        else:
            if mask_pos is None:
                mask_pos = self.mask_positions(input_ids)
            kwargs = {"attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            logits = self.mlm(input_ids=input_ids, inputs_embeds=inputs_embeds, **kwargs).logits
            vocab = logits[torch.arange(logits.shape[0], device=logits.device), mask_pos]
        label_logits = vocab[:, self._labels]
        if self.bounds is None:
            return PromptOutput(label_logits, label_logits)
        low, high = self.bounds
        p_high = torch.softmax(label_logits.float(), -1)[:, 1:]
        return PromptOutput((low + (high - low) * p_high).to(label_logits.dtype), label_logits)

    def save_pretrained(self, directory, **kwargs) -> None:
        """The masked LM's own ``save_pretrained`` folder (``AutoModelForMaskedLM`` and ``pipeline("fill-mask")``
        load it); the prompt is in the checkpoint's gentune.json."""
        self.mlm.save_pretrained(directory, **kwargs)


__all__ = ["PromptClassifier", "PromptOutput"]
