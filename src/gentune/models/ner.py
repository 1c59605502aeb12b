"""The models of few-shot NER: FFF-NER's span model, and the set-up of the token-classification and EntLM ones.

FFF-NER (Wang, Zhao, Wang, Shang, Findings of EMNLP 2022) reads a candidate span in its sentence,

    [CLS] left [ [MASK]_is-entity ] [ span ] [ [MASK]_type ] right [SEP]

and predicts from the encoder's last hidden state at the first mask whether the span is an entity (2 ways) and at
the second which type it is (|types| ways), each through a fresh head Linear-GELU-LayerNorm-Dropout-Linear.
:class:`SpanNer` is that model around any Hugging Face encoder (``AutoModel``). Its four marker tokens are new
tokens of the tokenizer (``markers="new"``, the default): the embedding table is resized and each new row starts
as the pretrained row it stands for ([MASK] for both masks, ``[`` and ``]`` for the brackets), so the input looks
like pretraining from the first step; ``markers="vocab"`` uses the vocabulary's own ``[``, ``]`` and [MASK].

EntLM (Ma et al., NAACL 2022) keeps the masked LM as it is and trains each entity token to predict its type's label
word; :func:`add_label_tokens` makes those words (one new token per type whose embedding is the mean of the
type's label words, or the first label word itself).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

from ..data.ner import SpanTokens
from ..errors import GentuneError

MARKERS = ("new", "vocab")
NEW_MARKERS = {"entity": "[ENTITY-MASK]", "type": "[TYPE-MASK]", "left": "[SPAN-OPEN]", "right": "[SPAN-CLOSE]"}
HEADS = "heads.safetensors"


def mlp_head(hidden: int, out: int, dropout: float) -> torch.nn.Sequential:
    """FFF-NER's head: Linear(h, h) - GELU - LayerNorm - Dropout - Linear(h, out)."""
    return torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.GELU(), torch.nn.LayerNorm(hidden),
                               torch.nn.Dropout(dropout), torch.nn.Linear(hidden, out))


@dataclass
class SpanOutput(ModelOutput):
    """``entity_logits`` (batch, 2): not an entity, an entity; ``type_logits`` (batch, types); ``logits`` is
    ``entity_logits`` (what a regularizer reading ``output.logits`` sees)."""

    logits: torch.Tensor | None = None
    entity_logits: torch.Tensor | None = None
    type_logits: torch.Tensor | None = None


class SpanNer(torch.nn.Module):
    """FFF-NER's span model: an encoder and the is-entity and type heads at the two mask positions.

    Args:
        encoder: a Hugging Face ``AutoModel`` (its ``last_hidden_state`` is read).
        num_types: the number of entity types.
        dropout: the heads' dropout (default: the encoder's hidden dropout).
    """

    def __init__(self, encoder, num_types: int, dropout: float | None = None):
        super().__init__()
        hidden = encoder.config.hidden_size
        p = getattr(encoder.config, "hidden_dropout_prob", 0.1) if dropout is None else dropout
        self.encoder = encoder
        self.entity_head = mlp_head(hidden, 2, p)
        self.type_head = mlp_head(hidden, num_types, p)

    def get_input_embeddings(self):
        return self.encoder.get_input_embeddings()

    def forward(self, input_ids=None, attention_mask=None, entity_at=None, type_at=None, inputs_embeds=None,
                token_type_ids=None) -> SpanOutput:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                              token_type_ids=token_type_ids).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        entity = self.entity_head(hidden[rows, entity_at])
        kind = self.type_head(hidden[rows, type_at])
        return SpanOutput(logits=entity, entity_logits=entity, type_logits=kind)


def load_encoder(path: str):
    """The ``AutoModel`` of a model folder or name, without BERT's pooler (FFF-NER reads token states only; an
    unused pooler would also stall a multi-process run's gradient reduction)."""
    import json
    from pathlib import Path

    from transformers import AutoModel

    from .hf import quiet_transformers

    config = Path(path) / "config.json"
    bert = config.is_file() and json.loads(config.read_text()).get("model_type") == "bert"
    with quiet_transformers():
        return AutoModel.from_pretrained(path, add_pooling_layer=False) if bert else AutoModel.from_pretrained(path)


def span_tokens(tokenizer, markers: dict[str, int]) -> SpanTokens:
    """The :class:`~gentune.data.ner.SpanTokens` of ``tokenizer`` and the marker ids."""
    return SpanTokens(cls=tokenizer.cls_token_id, sep=tokenizer.sep_token_id, mask=markers["entity"],
                      left=markers["left"], right=markers["right"], type_mask=markers["type"])


def _vocab_id(tokenizer, text: str, what: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise GentuneError(f"fffner markers=vocab: the tokenizer writes {what} {text!r} as {len(ids)} tokens, not one; "
                           "use markers=new")
    return ids[0]


def add_markers(encoder, tokenizer, markers: str = "new") -> dict[str, int]:
    """The marker ids FFF-NER's input uses (``entity``, ``type`` masks, ``left``, ``right`` brackets): new tokens
    added to ``tokenizer`` and ``encoder``'s embeddings, each initialised from the pretrained row it stands for
    (``new``), or the vocabulary's own (``vocab``). A tokenizer that already holds the new ones (a saved model)
    keeps them."""
    if markers not in MARKERS:
        raise GentuneError(f"fffner.markers must be one of {', '.join(MARKERS)}, got {markers!r}")
    if tokenizer.mask_token_id is None:
        raise GentuneError(f"fffner: the tokenizer {type(tokenizer).__name__} has no [MASK] token")
    source = {"entity": tokenizer.mask_token_id, "type": tokenizer.mask_token_id,
              "left": _vocab_id(tokenizer, "[", "the bracket"), "right": _vocab_id(tokenizer, "]", "the bracket")}
    if markers == "vocab":
        return source
    vocab = tokenizer.get_vocab()
    if all(t in vocab for t in NEW_MARKERS.values()):
        return {k: vocab[t] for k, t in NEW_MARKERS.items()}
    tokenizer.add_tokens(list(NEW_MARKERS.values()), special_tokens=True)
    ids = {k: tokenizer.convert_tokens_to_ids(t) for k, t in NEW_MARKERS.items()}
    encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    table = encoder.get_input_embeddings().weight
    with torch.no_grad():
        for k, i in ids.items():
            table[i] = table[source[k]]
    return ids


def read_label_words(path) -> dict[str, list[str]]:
    """EntLM's label-word map, ``{"I-PER": ["Michael", ...], ...}`` (or keyed by the bare type), as
    ``{type: words}``."""
    from pathlib import Path

    from ..fs import read_json

    data = read_json(Path(path), what="label-word map")
    if not isinstance(data, dict) or not all(isinstance(v, list) and v and all(isinstance(w, str) for w in v)
                                             for v in data.values()):
        raise GentuneError(f"{path}: a label-word map is {{\"I-TYPE\": [words, ...], ...}}")
    return {k.split("-", 1)[1] if k[:2] in ("I-", "B-") else k: list(v) for k, v in data.items()}


def add_label_tokens(mlm, tokenizer, types: list[str], words: dict[str, list[str]], virtual: bool = True,
                     where: str = "label-word map") -> list[int]:
    """The vocabulary id of each type's label word, in ``types`` order. ``virtual``: a new token per type
    (``[ENTLM-TYPE]``), its input embedding and output bias the mean of the type's single-token label words' (an
    output layer tied to the embeddings follows); else the first single-token label word itself. A tokenizer that
    already holds the new tokens (a saved model) keeps them."""
    missing = [t for t in types if t not in words]
    if missing:
        raise GentuneError(f"{where}: no label words for type {missing[0]} (types: {', '.join(types)})")
    single = {}
    for t in types:
        ids = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in words[t]]
        single[t] = [i[0] for i in ids if len(i) == 1]
        if not single[t]:
            raise GentuneError(f"{where}: none of {t}'s label words ({', '.join(words[t])}) is one token of this "
                               "tokenizer")
    if not virtual:
        return [single[t][0] for t in types]
    names = [f"[ENTLM-{t}]" for t in types]
    vocab = tokenizer.get_vocab()
    if all(n in vocab for n in names):
        return [vocab[n] for n in names]
    tokenizer.add_tokens(names, special_tokens=True)
    mlm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    ids = [tokenizer.convert_tokens_to_ids(n) for n in names]
    table = mlm.get_input_embeddings().weight
    out = mlm.get_output_embeddings()
    with torch.no_grad():
        for t, i in zip(types, ids):
            table[i] = table[single[t]].mean(0)
            if out is not None and out.weight.data_ptr() != table.data_ptr():
                out.weight[i] = out.weight[single[t]].mean(0)
            bias = getattr(out, "bias", None) if out is not None else None
            if bias is not None:
                bias[i] = bias[single[t]].mean()
    return ids


__all__ = ["HEADS", "MARKERS", "SpanNer", "SpanOutput", "add_label_tokens", "add_markers", "load_encoder", "mlp_head",
           "read_label_words", "span_tokens"]
