"""Masked-LM pretraining of a text encoder on unlabeled text (``gentune pretrain --objective mlm``): continued or
task-adaptive pretraining (Gururangan et al., ACL 2020) before fine-tuning.

The text is plain-text files (one example per line), CSV/TSV/JSON/JSONL files with a text column, or a task's own
files with their labels dropped (``from_task``); a seeded slice is held out for the masked-token loss and accuracy,
with masks drawn from a fixed seed at every evaluation. A model without a masked-LM head (all-MiniLM-L6-v2) gets
one tied to its word embeddings (said in the summary and the saved gentune.json). The run saves OUT/model, a
folder ``AutoModelForMaskedLM.from_pretrained`` loads (and ``gentune finetune --model OUT/model`` fine-tunes).

A regularizer that reads its own unlabeled examples gets text here: ``--regularizer radreg --set
radreg.data=FILE`` (the seed paper's RadReg on text) reads FILE as ``--data`` is read (same columns, same
``from_task``), tokenized like the training text, and represents a batch by the masked mean of the encoder's last
hidden states (:func:`text_features`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import RunConfig, opt
from ..data import get_task
from ..data.streams import TextStream
from ..data.tables import read_texts
from ..errors import GentuneError
from ..models.checkpoint import save_masked_lm
from ..models.hf import DEFAULT_MODEL, load_masked_lm, load_tokenizer, resolve_model_path
from ..models.pooling import masked_mean
from ..objectives.classification import map_quietly
from ..objectives.mlm import MaskedLMCollator
from ..registry import create
from ..tensors import unwrap
from ..train import Job
from .base import Splits, Task, register_task

OBJECTIVES = ("mlm",)
TEXT_SUFFIXES = (".txt", ".csv", ".tsv", ".json", ".jsonl")


@dataclass
class TextPretrainingConfig(RunConfig):
    """A masked-LM pretraining run of a text encoder on unlabeled text."""

    objective: str = opt("mlm", "mlm")
    objective_options: dict[str, dict[str, Any]] = opt(
        factory=dict, help="the objective's options: --set mlm.mask_prob=0.15 mlm.whole_word=true")
    data: str = opt("", "unlabeled text: a .txt file (one example a line), a CSV/TSV/JSON/JSONL file with a text "
                        "column, a task's file (with from_task), or a folder of such files")
    text_column: str = opt("text", "the column of the text in CSV/TSV/JSON/JSONL files")
    text_pair_column: str | None = opt(None, "a second text column, used as a pair when present")
    from_task: str | None = opt(None, "read data as this task's files (sst2, rte, ...), labels dropped")
    model: str = opt(DEFAULT_MODEL, "a Hugging Face model name or path (without a masked-LM head: one is tied to the "
                                    "word embeddings)")
    max_length: int = opt(128, "maximum tokens per example")
    train: str = opt("all", "all: the encoder and the masked-LM head; head: the head only (its transform and bias; an "
                            "output layer tied to the word embeddings stays as it is), the encoder frozen")
    val_size: int = opt(500, "examples held out for the masked-token loss and accuracy (at most a tenth of the text)")
    split_seed: int = opt(0, "the held-out slice")
    epochs: float = opt(3.0, "training epochs")
    batch_size: int = opt(32, "global batch per optimizer step")
    lr: float = opt(5e-5, "peak learning rate")
    warmup_ratio: float = opt(0.06, "share of the steps with a linear warm-up")

    def _checks(self) -> list[tuple[bool, str]]:
        return [
            (bool(self.data), "data is required (--data: a text file, or a folder of them)"),
            *super()._checks(),
            (self.val_size >= 0, "val_size must be >= 0"),
            (self.max_length >= 8, "max_length must be at least 8"),
            (self.train in ("all", "head"), f"train must be all or head, got {self.train!r}"),
        ]


def text_files(data: str) -> list[str]:
    """The files of ``data``: itself, or a folder's text files (sorted)."""
    p = Path(data)
    if p.is_dir():
        files = sorted(str(f) for f in p.iterdir() if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise GentuneError(f"{p}: a folder without text files ({', '.join(TEXT_SUFFIXES)})")
        return files
    if not p.exists():
        raise GentuneError(f"{p}: no such file or folder")
    return [str(p)]


def check(cfg: TextPretrainingConfig) -> None:
    if cfg.objective not in OBJECTIVES:
        raise GentuneError(f"objective {cfg.objective!r} is not a text pretraining objective ({', '.join(OBJECTIVES)})")
    text_files(cfg.data)
    if cfg.from_task:
        get_task(cfg.from_task)
    resolve_model_path(cfg.model)
    create("objective", "mlm", **cfg.objective_options.get("mlm", {}))  # option values fail before any work


def read_unlabeled(cfg: TextPretrainingConfig, data: str):
    """The text of ``data`` (a file or folder), read as the run's ``--data`` is."""
    return read_texts(text_files(data), cfg.text_column, cfg.text_pair_column,
                      get_task(cfg.from_task) if cfg.from_task else None)


def datasets(cfg: TextPretrainingConfig) -> Splits:
    """(training text, held-out text or None): a seeded slice of ``val_size`` examples (at most a tenth) held out."""
    texts = read_unlabeled(cfg, cfg.data)
    n_val = min(cfg.val_size, len(texts) // 10)
    order = np.random.default_rng(cfg.split_seed).permutation(len(texts))
    val = texts.select(sorted(order[:n_val].tolist())) if n_val else None
    return Splits(texts.select(sorted(order[n_val:].tolist())), val)


def tokenize_text(dataset, tokenizer, max_length: int, whole_word: bool):
    """Token ids, special-token mask (and offsets for whole-word masking) of each example, unpadded."""
    pair = any(t is not None for t in dataset["text_b"])

    def fn(batch):
        second = [b or "" for b in batch["text_b"]] if pair else None
        return tokenizer(batch["text_a"], second, truncation=True, max_length=max_length,
                         return_special_tokens_mask=True, return_offsets_mapping=whole_word)

    return map_quietly(dataset, fn, tokenizer, max_length=max_length, whole_word=whole_word, pair=pair)


def text_features(model, batch: dict) -> torch.Tensor:
    """(n, d): the masked mean of the encoder's last hidden states over each example's tokens (the masked-LM
    model's ``base_model``; padding left out), the representation RadReg penalises on text."""
    base = unwrap(model).base_model
    keep = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    return masked_mean(base(**keep).last_hidden_state, batch.get("attention_mask"))


def text_stream(cfg: TextPretrainingConfig, tokenizer):
    """``open(path, batch_size, generator, *image_options) -> TextStream``: the task's reader of unlabeled text for
    a regularizer (``unlabeled`` in its context; the image options do not apply)."""

    def open_stream(path: str, batch_size: int, generator: torch.Generator, *_image_options) -> TextStream:
        encoded = tokenize_text(read_unlabeled(cfg, path), tokenizer, cfg.max_length, False)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return TextStream(encoded, batch_size, generator, pad)

    return open_stream


def masked_lm_eval(objective, seed: int = 0):
    """``evaluate(model, dataloader, accelerator)``: the masked-token loss and accuracy over the held-out text,
    with masks from a fixed seed (the same at every evaluation), leaving the training RNG as it was."""

    def evaluate(model, dataloader, accelerator) -> dict[str, float]:
        model.eval()
        loss_sum, correct, count = 0.0, 0.0, 0.0
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + accelerator.process_index)
            for batch in dataloader:
                inputs, labels = objective.mask(batch)
                keep = {k: v for k, v in batch.items() if k in ("attention_mask", "token_type_ids")}
                logits = model(input_ids=inputs, **keep).logits.float()
                chosen = labels != -100
                ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
                per = torch.stack([(ce * chosen).sum(1), ((logits.argmax(-1) == labels) & chosen).sum(1).float(),
                                   chosen.sum(1).float()], 1)
                per = accelerator.gather_for_metrics(per)
                loss_sum, correct, count = (loss_sum + float(per[:, 0].sum()), correct + float(per[:, 1].sum()),
                                            count + float(per[:, 2].sum()))
        return {"loss": loss_sum / max(count, 1.0), "accuracy": correct / max(count, 1.0)}

    return evaluate


def build(cfg: TextPretrainingConfig) -> Job:
    data = datasets(cfg)
    tokenizer = load_tokenizer(cfg.model)
    options = cfg.objective_options.get("mlm", {})
    objective = create("objective", "mlm", **options).bind(tokenizer)
    model, head = load_masked_lm(cfg.model)
    if head != "pretrained":
        print(f"note: {cfg.model} has no masked-LM head: its output layer is "
              f"{'tied to the word embeddings' if head == 'tied' else 'new'}, the transform before it new")
    if cfg.train == "head":
        from ..models.hf import freeze_encoder

        freeze_encoder(model)  # base_model: the encoder, word embeddings (and a tied output layer) included
    whole = objective.whole_word
    train = tokenize_text(data.train, tokenizer, cfg.max_length, whole)
    val = tokenize_text(data.heldout, tokenizer, cfg.max_length, whole) if data.heldout is not None else None
    collate = MaskedLMCollator(tokenizer, whole)
    lengths = [len(x) for x in train["input_ids"]]
    tokens = float(np.mean(lengths)) if lengths else 0.0
    meta = {"objective": "mlm", "objective_options": options, "base_model": cfg.model, "head": head,
            "data": cfg.data, "from_task": cfg.from_task, "train": cfg.train, "max_length": cfg.max_length, "val_size": len(val or [])}
    return Job(
        model=model,
        objective=objective,
        train_set=train,
        lengths=lengths,
        collate=collate,
        dev_set=val,
        dev_collate=collate,
        evaluate=masked_lm_eval(objective),
        main_metric="loss",
        greater_is_better=False,
        save=lambda m, directory, info: save_masked_lm(m, tokenizer, directory, info),
        save_best=False,
        final_name="model",
        meta=meta,
        summary={"task": "pretrain", "objective": "mlm", "model": cfg.model, "head": head,
                 "tokens_per_example": tokens, "parameters": sum(p.numel() for p in model.parameters())},
        context={"tokenizer": tokenizer, "max_length": cfg.max_length, "unlabeled": text_stream(cfg, tokenizer),
                 "features": text_features},
    )


TASK = register_task(Task(
    name="text-pretraining",
    config=TextPretrainingConfig,
    build=build,
    datasets=datasets,
    stage="pretrain",
    summary="masked-LM pretraining of a text encoder on unlabeled text (continued or task-adaptive)",
    objectives=OBJECTIVES,
    check=check,
))

__all__ = ["TASK", "TextPretrainingConfig", "build", "datasets", "masked_lm_eval", "read_unlabeled", "text_features",
           "text_files", "text_stream", "tokenize_text"]
