"""Masked language modelling (Devlin et al., NAACL 2019), for continued and task-adaptive pretraining of text
encoders (Gururangan et al., ACL 2020).

Each step chooses ``mask_prob`` of the non-special tokens (whole words together with ``whole_word``); of those,
``mask_replace`` become [MASK], ``random_replace`` a random token, the rest stay; the loss is the cross-entropy of
the model's predictions at the chosen positions only. The choice is made by ``transformers``'
:class:`~transformers.DataCollatorForLanguageModeling` at the objective (on the CPU generator the loop saves and
restores), not in the data loader, so a resumed run masks exactly as an uninterrupted one.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from ..registry import register

IGNORE = -100


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean cross-entropy over the masked positions, correct predictions there, masked positions), in float32;
    ``labels`` is IGNORE everywhere else. A batch with no masked position has loss 0."""
    chosen = labels != IGNORE
    count = chosen.sum()
    if not bool(count):
        zero = logits.sum() * 0.0
        return zero.float(), count, count
    picked = logits[chosen].float()
    gold = labels[chosen]
    loss = F.cross_entropy(picked, gold)
    return loss, (picked.argmax(-1) == gold).sum(), count


@register("objective", "mlm")
class MaskedLM:
    """Masked language modelling (Devlin et al., NAACL 2019) with an ``AutoModelForMaskedLM``.

    Args:
        mask_prob: the share of (non-special) tokens chosen for prediction.
        mask_replace: of the chosen, the share replaced by [MASK].
        random_replace: of the chosen, the share replaced by a random token (the rest are kept).
        whole_word: choose whole words (all their word pieces together) instead of single tokens; ``transformers``
            then replaces every chosen piece by [MASK] (``mask_replace`` and ``random_replace`` do not apply).
        tokenizer: the model's tokenizer (code, given by the task).
    """

    def __init__(self, mask_prob: float = 0.15, mask_replace: float = 0.8, random_replace: float = 0.1,
                 whole_word: bool = False, *, tokenizer=None):
        if not 0 < mask_prob < 1:
            raise ValueError(f"mlm: mask_prob must be in (0, 1), got {mask_prob}")
        if mask_replace < 0 or random_replace < 0 or mask_replace + random_replace > 1:
            raise ValueError(f"mlm: mask_replace and random_replace must be >= 0 and sum to at most 1, got "
                             f"{mask_replace} and {random_replace}")
        self.mask_prob, self.mask_replace, self.random_replace = mask_prob, mask_replace, random_replace
        self.whole_word = whole_word
        self._collator = None
        if tokenizer is not None:
            self.bind(tokenizer)

    def bind(self, tokenizer) -> "MaskedLM":
        """Use ``tokenizer``'s [MASK], vocabulary and special tokens."""
        from transformers import DataCollatorForLanguageModeling

        if tokenizer.mask_token is None:
            raise ValueError(f"mlm: the tokenizer {type(tokenizer).__name__} has no mask token")
        with warnings.catch_warnings():  # whole words: transformers masks every chosen piece (said in the docstring)
            warnings.filterwarnings("ignore", "Random token replacement is not supported")
            self._collator = DataCollatorForLanguageModeling(
                tokenizer, mlm=True, whole_word_mask=self.whole_word, mlm_probability=self.mask_prob,
                mask_replace_prob=self.mask_replace, random_replace_prob=self.random_replace)
        return self

    def mask(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked input ids, labels: the original ids at the chosen positions, IGNORE elsewhere), on the batch's
        device; drawn from the CPU generator."""
        if self._collator is None:
            raise RuntimeError("mlm: bind(tokenizer) first")
        ids = batch["input_ids"]
        special = batch["special_tokens_mask"].cpu()
        offsets = batch["offset_mapping"].cpu() if self.whole_word else None
        inputs, labels = self._collator.torch_mask_tokens(ids.detach().cpu().clone(), special, offsets)
        return inputs.to(ids.device), labels.to(ids.device)

    def __call__(self, model, batch: dict) -> dict:
        inputs, labels = self.mask(batch)
        keep = {k: v for k, v in batch.items() if k in ("attention_mask", "token_type_ids")}
        output = model(input_ids=inputs, **keep)
        loss, correct, count = masked_lm_loss(output.logits, labels)
        accuracy = correct.float() / count.clamp(min=1)
        return {"loss": loss, "output": output, "log": {"masked_accuracy": accuracy.detach()},
                "correct": correct, "count": count}


class MaskedLMCollator:
    """Pads input ids, attention mask, special-token mask (1 on padding: never chosen) and, for whole-word masking,
    the offsets (0, 0) of each token."""

    def __init__(self, tokenizer, whole_word: bool = False):
        self.tokenizer, self.whole_word = tokenizer, whole_word

    def __call__(self, features: list[dict]) -> dict:
        length = max(len(f["input_ids"]) for f in features)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out = {"input_ids": [], "attention_mask": [], "special_tokens_mask": []}
        if "token_type_ids" in features[0]:
            out["token_type_ids"] = []
        if self.whole_word:
            out["offset_mapping"] = []
        for f in features:
            n, extra = len(f["input_ids"]), length - len(f["input_ids"])
            out["input_ids"].append(list(f["input_ids"]) + [pad] * extra)
            out["attention_mask"].append([1] * n + [0] * extra)
            out["special_tokens_mask"].append(list(f["special_tokens_mask"]) + [1] * extra)
            if "token_type_ids" in out:
                out["token_type_ids"].append(list(f["token_type_ids"]) + [0] * extra)
            if self.whole_word:
                out["offset_mapping"].append([tuple(o) for o in f["offset_mapping"]] + [(0, 0)] * extra)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}


MaskedLMConfig = MaskedLM.Config
