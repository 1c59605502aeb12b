"""A sequence classifier on the mean of a Hugging Face encoder's token states over the non-padding tokens.

Sentence-transformers checkpoints such as all-MiniLM-L6-v2 were trained as mean-pooled sentence encoders: their
CLS token and pooler never were, and ``AutoModelForSequenceClassification`` classifies from exactly those. With
``pooling=mean`` gentune puts a new linear head (after dropout) on the masked mean of the last hidden states.

Saved (``save_pretrained``) as ``encoder/`` (a standard ``AutoModel`` folder, the label names in its config), the
head in ``head.safetensors`` and ``pooling: mean`` in ``gentune.json``. There is no top-level ``config.json``, so
``transformers.pipeline()`` cannot mistake the folder for a CLS-pooled classifier; gentune loads it
(:func:`gentune.models.checkpoint.load_text_classifier`, ``gentune evaluate``).
"""

from __future__ import annotations

from pathlib import Path

import torch

POOLINGS = ("cls", "mean")
ENCODER = "encoder"
HEAD = "head.safetensors"


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The mean of ``hidden`` (batch, tokens, width) over the tokens whose mask is 1 (all when no mask)."""
    if attention_mask is None:
        return hidden.mean(1)
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class MeanPooledClassifier(torch.nn.Module):
    """``classifier(dropout(masked_mean(encoder(x).last_hidden_state)))``, called like a Hugging Face sequence
    classifier (keyword inputs, an output with ``.logits``); ``config`` is the encoder's, with the label names."""

    def __init__(self, encoder, num_labels: int, dropout: float | None = None):
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        width = self.config.hidden_size
        p = getattr(self.config, "hidden_dropout_prob", 0.1) if dropout is None else dropout
        self.dropout = torch.nn.Dropout(p)
        self.classifier = torch.nn.Linear(width, num_labels)
        self.classifier.weight.data.normal_(0.0, getattr(self.config, "initializer_range", 0.02))
        self.classifier.bias.data.zero_()

    def get_input_embeddings(self):
        return self.encoder.get_input_embeddings()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None, **_):
        from transformers.modeling_outputs import SequenceClassifierOutput

        kwargs = {"attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.encoder(input_ids=input_ids, inputs_embeds=inputs_embeds, **kwargs).last_hidden_state
        return SequenceClassifierOutput(logits=self.classifier(self.dropout(masked_mean(hidden, attention_mask))))

    def save_pretrained(self, directory) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        self.encoder.save_pretrained(directory / ENCODER)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.classifier.state_dict().items()},
                  str(directory / HEAD))


def load_mean_pooled(path: str | Path, config=None) -> MeanPooledClassifier:
    """A saved :class:`MeanPooledClassifier` (``path/encoder`` and ``path/head.safetensors``)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    path = Path(path)
    config = config or AutoConfig.from_pretrained(path / ENCODER)
    encoder = AutoModel.from_pretrained(path / ENCODER, config=config)
    head = load_file(str(path / HEAD))
    model = MeanPooledClassifier(encoder, head["weight"].shape[0])
    model.classifier.load_state_dict(head)
    return model


__all__ = ["MeanPooledClassifier", "POOLINGS", "load_mean_pooled", "masked_mean"]
