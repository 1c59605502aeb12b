"""Point-cloud classification (``--task point-classification``): a point encoder from a ``gentune pretrain`` run
(``--init``) or from scratch, with a head; fine-tuned or probed linearly, at a label budget; scored on any file of
the format with overall, per-class and mean class accuracy.

The validation shapes are held out of the whole set with ``split_seed`` before any label budget, exactly as
pretraining holds them out, so a pretrained encoder never saw them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import RunConfig, opt
from ..data.images import labels_per_class, split
from ..data.points import PointSet, label_fraction, load_points, rotation_matrix
from ..errors import GentuneError
from ..models.checkpoint import load_point_classifier, load_point_encoder, save_point_classifier
from ..models.points import ENCODERS, HEADS, PointClassifier, create_point_encoder
from ..registry import create
from ..train import Job
from .base import Splits, Task, register_task

NAME = "point-classification"


@dataclass
class PointClassificationConfig(RunConfig):
    """A point-cloud classification run: point data and an encoder with a head."""

    task: str = opt(NAME, NAME)
    data: str | None = opt(None, "point data: an .npz with x_<split> and y_<split>, or a folder <class>/<file>")
    split: str | None = opt(None, "the .npz split to read (default: its only x_<split>)")
    dev: str | None = opt(None, "a validation file or folder (else val_size shapes are held out of data)")
    dev_split: str | None = opt(None, "the dev .npz's split")
    points: int = opt(1024, "points per shape for a folder of shape files")
    init: str | None = opt(None, "a pretrained point encoder (a gentune pretrain run or its encoder/), or none")
    model: str = opt("pointnet", "without init: the encoder trained from scratch (pointnet | dgcnn)")
    model_options: dict[str, Any] = opt(factory=dict, help="the scratch encoder's options (model_options.k=20)")
    labels_per_class: int | None = opt(None, "label budget: this many seeded training shapes per class")
    label_fraction: float | None = opt(None, "label budget: this seeded share of every class's training shapes")
    val_size: int = opt(400, "shapes held out of data for validation (when no dev is given)")
    split_seed: int = opt(0, "the held-out split, the same as pretraining's")
    linear_probe: bool = opt(False, "freeze the encoder, train the head only")
    head: str = opt("linear", "linear | mlp")
    augment: bool = opt(True, "training shapes rotated about the up axis (z), scaled 0.8-1.2 per axis, jittered")
    epochs: float = opt(50.0, "training epochs")
    batch_size: int = opt(32, "shapes per optimizer step")
    lr: float = opt(1e-3, "peak learning rate")

    def _checks(self) -> list[tuple[bool, str]]:
        return [
            (self.task == NAME, f"task must be {NAME}"),
            *super()._checks(),
            (bool(self.data), "point-classification needs --data (an .npz of points or a folder of shapes)"),
            (self.labels_per_class is None or self.labels_per_class > 0, "labels_per_class must be positive"),
            (self.label_fraction is None or 0 < self.label_fraction <= 1, "label_fraction must be in (0, 1]"),
            (not (self.labels_per_class and self.label_fraction), "give labels_per_class or label_fraction, not both"),
            (self.val_size >= 0, "val_size must be >= 0"),
            (self.head in HEADS, f"head must be one of {', '.join(HEADS)}"),
            (self.model in ENCODERS, f"model must be one of {', '.join(ENCODERS)}, got {self.model!r}"),
        ]


class PointData(torch.utils.data.Dataset):
    """(points, label) pairs of a labelled :class:`~gentune.data.points.PointSet`."""

    def __init__(self, ds: PointSet):
        if ds.labels is None:
            raise GentuneError(f"{ds.source}: the shapes have no labels (y_<split>)")
        self.points, self.labels = torch.from_numpy(ds.points), torch.from_numpy(ds.labels)

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, i: int):
        return self.points[i], self.labels[i]


def collate(items) -> dict:
    return {"points": torch.stack([p for p, _ in items]), "labels": torch.stack([y for _, y in items])}


def augment_batch(batch: dict) -> dict:
    """Each training shape rotated about the up axis (z), scaled by 0.8-1.2 per axis and jittered (std 0.01,
    clipped at 0.05), drawn from torch's CPU generator (the loop checkpoints it)."""
    x = batch["points"]
    n = len(x)
    rot = torch.stack([rotation_matrix("up", 2, None) for _ in range(n)]).to(x.device, x.dtype)
    scale = (0.8 + 0.4 * torch.rand(n, 1, 3)).to(x.device, x.dtype)
    noise = (0.01 * torch.randn(x.shape)).clamp(-0.05, 0.05).to(x.device, x.dtype)
    return {**batch, "points": torch.bmm(x, rot.transpose(1, 2)) * scale + noise}


def evaluate_classifier(model, dataloader, accelerator, classes: list[str]) -> dict[str, float]:
    """Accuracy, mean class accuracy, each class's accuracy and the mean cross-entropy (gathered)."""
    model.eval()
    preds, golds, loss = [], [], 0.0
    with torch.no_grad():
        for batch in dataloader:
            logits = model(batch["points"]).float()
            logits, gold = accelerator.gather_for_metrics((logits, batch["labels"]))
            loss += torch.nn.functional.cross_entropy(logits, gold, reduction="sum").item()
            preds.append(logits.argmax(-1).cpu())
            golds.append(gold.cpu())
    p, y = torch.cat(preds), torch.cat(golds)
    out = {"accuracy": float((p == y).float().mean()), "loss": loss / max(len(y), 1)}
    per = {c: float((p[y == k] == k).float().mean()) for k, c in enumerate(classes) if bool((y == k).any())}
    out["mean_class_accuracy"] = sum(per.values()) / max(len(per), 1)
    out.update({f"accuracy_{c}": v for c, v in per.items()})
    return out


def _align(ds: PointSet, classes: list[str], owner: str) -> PointSet:
    """``ds`` relabelled by class name to index ``classes``."""
    unknown = [c for c in ds.classes if c not in classes]
    if unknown:
        raise GentuneError(f"{ds.source}: class {unknown[0]!r} is not a class of {owner} ({', '.join(classes)})")
    remap = np.array([classes.index(c) for c in ds.classes], dtype=np.int64)
    return PointSet(ds.points, remap[ds.labels], list(classes), ds.source)


def datasets(cfg: PointClassificationConfig) -> Splits:
    """(training shapes with the label budget, validation shapes)."""
    ds = load_points(cfg.data, cfg.split, cfg.points)
    if ds.labels is None:
        raise GentuneError(f"{cfg.data}: the shapes have no labels (y_<split>)")
    if cfg.dev:
        train, val = ds, _align(load_points(cfg.dev, cfg.dev_split, cfg.points), ds.classes, cfg.data)
    elif cfg.val_size > 0:
        train, val = split(ds, cfg.val_size, cfg.split_seed)
    else:
        train, val = ds, None
    empty = [c for k, c in enumerate(train.classes) if not (train.labels == k).any()]
    if empty:
        raise GentuneError(f"{cfg.data}: class {empty[0]!r} has no training shapes")
    if cfg.labels_per_class:
        train = labels_per_class(train, cfg.labels_per_class, cfg.seed)
    elif cfg.label_fraction:
        train = label_fraction(train, cfg.label_fraction, cfg.seed)
    return Splits(train, val)


def _encoder(cfg: PointClassificationConfig):
    if cfg.init and cfg.init.lower() != "none":
        path = Path(cfg.init)
        path = path / "encoder" if (path / "encoder" / "gentune.json").is_file() else path
        encoder, meta = load_point_encoder(path)
        same = meta.get("data") and Path(str(meta["data"])).resolve() == Path(str(cfg.data)).resolve()
        if same and not cfg.dev and (meta.get("val_size"), meta.get("split_seed")) != (cfg.val_size, cfg.split_seed):
            print(f"warning: {cfg.init} was pretrained holding out val_size={meta.get('val_size')} with split_seed="
                  f"{meta.get('split_seed')}; this run validates on val_size={cfg.val_size}, split_seed="
                  f"{cfg.split_seed}: the encoder may have seen validation shapes", file=sys.stderr)
        return encoder, str(cfg.init)
    return create_point_encoder(cfg.model, **cfg.model_options), f"scratch:{cfg.model}"


def build(cfg: PointClassificationConfig) -> Job:
    data = datasets(cfg)
    encoder, source = _encoder(cfg)
    classes = list(data.train.classes)
    model = PointClassifier(encoder, len(classes), head=cfg.head, linear_probe=cfg.linear_probe)
    meta = {"task": NAME, "classes": classes, "linear_probe": cfg.linear_probe, "init": source,
            "points": int(data.train.points.shape[1])}
    train_set = PointData(data.train)
    return Job(
        model=model,
        objective=create("objective", "point-classification"),
        train_set=train_set,
        train_eval_set=train_set,  # the augmentation is applied to training batches only
        collate=collate,
        augment=augment_batch if cfg.augment else None,
        dev_set=None if data.heldout is None else PointData(data.heldout),
        evaluate=lambda m, dl, acc: evaluate_classifier(m, dl, acc, classes),
        main_metric="accuracy",
        save=save_point_classifier,
        meta=meta,
        summary={"task": NAME, "model": source, "classes": classes, "train_shapes": len(data.train),
                 "labels_per_class": cfg.labels_per_class, "label_fraction": cfg.label_fraction,
                 "linear_probe": cfg.linear_probe},
    )


def check(cfg: PointClassificationConfig) -> None:
    if cfg.init and cfg.init.lower() != "none" and not Path(cfg.init).exists():
        raise GentuneError(f"encoder {cfg.init!r}: no such directory")


@dataclass
class _Loaded:
    model: torch.nn.Module
    meta: dict
    checkpoint: str
    name: str = NAME


def load(checkpoint: str, name: str = NAME) -> _Loaded:
    return _Loaded(*load_point_classifier(checkpoint), str(checkpoint))


def read(path: str, loaded: _Loaded) -> PointSet:
    """A labelled point file or folder, its classes matched to the checkpoint's by name."""
    ds = load_points(path, None, loaded.meta.get("points", 1024))
    if ds.labels is None:
        raise GentuneError(f"{path}: the shapes have no labels (y_<split>)")
    return _align(ds, loaded.meta["classes"], loaded.checkpoint)


def score(loaded: _Loaded, dataset: PointSet, batch_size: int = 64) -> dict:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    dl = torch.utils.data.DataLoader(PointData(dataset), batch_size=batch_size, shuffle=False, collate_fn=collate)
    model, dl = accelerator.prepare(loaded.model, dl)
    metrics = evaluate_classifier(model, dl, accelerator, loaded.meta["classes"])
    accelerator.free_memory()
    return metrics


def describe() -> tuple[list[str], list[str]]:
    return ([f"{NAME}  point clouds (.npz x_<split>/y_<split>, or <class>/<file>.npy|.txt|.off); metrics: accuracy, "
             "mean class accuracy"], ["a `gentune pretrain --objective point-contrast` encoder (--init), or from "
                                      "scratch: " + ", ".join(ENCODERS)])


TASK = register_task(Task(
    name=NAME,
    config=PointClassificationConfig,
    build=build,
    datasets=datasets,
    summary="point-cloud classification: a pretrained or fresh point encoder with a head, at a label budget",
    check=check,
    load=load,
    read=read,
    score=score,
    describe=describe,
))

__all__ = ["NAME", "PointClassificationConfig", "TASK", "augment_batch", "build", "datasets", "evaluate_classifier"]
