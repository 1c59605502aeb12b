"""Fine-tuning jobs for the one loop: GLUE-family text tasks, and image classification on an image folder.

``finetune(cfg)`` builds a :class:`gentune.train.Job` for ``cfg.task`` and runs it; ``evaluate(...)`` scores a
saved model on any file (text) or image folder/archive (images) of the task's format.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import registry
from .config import IMAGE_TASK, FinetuneConfig
from .data import get_task, load_splits, read_file, stratified_subsample
from .errors import GentuneError
from .metrics import compute
from .models.hf import load_checkpoint, load_for_task, load_tokenizer, resolve_model_path, save_checkpoint
from .objectives.classification import Collator, classification_loss, predictions, tokenize
from .train import Job, begin, run


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


def _text_job(cfg: FinetuneConfig) -> Job:
    task = get_task(cfg.task)
    train_ds, dev_ds = load_splits(task, cfg.data_dir, cfg.train, cfg.dev)
    if cfg.train_size:
        train_ds = stratified_subsample(train_ds, cfg.train_size, cfg.seed, task.is_regression)
    tokenizer = load_tokenizer(cfg.model)
    model = load_for_task(cfg.model, task)
    collate = Collator(tokenizer, task.is_regression)

    def save(unwrapped, directory: Path, meta: dict) -> None:
        save_checkpoint(unwrapped, tokenizer, directory, meta)

    return Job(
        model=model,
        objective=registry.create("objective", "sequence-classification", regression=task.is_regression),
        train_set=tokenize(train_ds, tokenizer, cfg.max_length, task.text_pair),
        collate=collate,
        dev_set=tokenize(dev_ds, tokenizer, cfg.max_length, task.text_pair),
        evaluate=lambda m, dl, acc: evaluate_model(m, dl, task, acc),
        main_metric=task.main_metric,
        save=save,
        meta={"task": task.name, "labels": list(task.labels) if task.labels else None,
              "base_model": cfg.model, "max_length": cfg.max_length},
        summary={"task": task.name, "model": cfg.model},
    )


def finetune(cfg: FinetuneConfig) -> dict:
    """Fine-tune on ``cfg.task`` and return the run summary (also written to OUT/summary.json)."""
    image = cfg.task == IMAGE_TASK
    if not image:
        get_task(cfg.task)  # an unknown task fails before any work
        resolve_model_path(cfg.model)  # so does a model path that does not exist
    started = begin(cfg)
    if isinstance(started, dict):
        return started
    accelerator, status = started
    if image:
        from .vision_tasks import image_classification_job

        job = image_classification_job(cfg)
    else:
        job = _text_job(cfg)
    return run(cfg, job, accelerator, status)


def evaluate(checkpoint: str, task: str, data: str, batch_size: int = 64, max_length: int | None = None) -> dict:
    """Metrics of a fine-tuned checkpoint on any file of ``task``'s formats (a GLUE TSV test file, an image
    folder or archive)."""
    from accelerate import Accelerator

    if batch_size < 1:
        raise GentuneError(f"evaluate: batch_size must be positive, got {batch_size}")
    if task == IMAGE_TASK:
        from .vision_tasks import evaluate_images

        return evaluate_images(checkpoint, data, batch_size)
    spec = get_task(task)
    ds = read_file(spec, data)
    model, meta = load_checkpoint(checkpoint, spec)
    tokenizer = load_tokenizer(checkpoint)
    accelerator = Accelerator()
    tok = tokenize(ds, tokenizer, max_length or meta.get("max_length", 128), spec.text_pair)
    dl = torch.utils.data.DataLoader(tok, batch_size=batch_size, shuffle=False,
                                     collate_fn=Collator(tokenizer, spec.is_regression))
    model, dl = accelerator.prepare(model, dl)
    metrics = evaluate_model(model, dl, spec, accelerator)
    return {"task": spec.name, "file": str(data), "examples": len(ds), **metrics}


__all__ = ["GentuneError", "evaluate", "evaluate_model", "finetune"]
