"""Contrastive pretraining of a point-cloud encoder (PointContrast): ``gentune pretrain --objective point-contrast
| hardest-contrastive --data FILE --model pointnet|dgcnn``, labels ignored.

The validation shapes are held out with ``split_seed`` (stratified by class, as fine-tuning holds them out), so a
pretrained encoder never sees the shapes it is evaluated on. The run saves OUT/encoder (``point-encoder``, what
``gentune finetune --task point-classification --init`` takes). The two views of each shape are drawn by the
objective from torch's CPU generator, which the loop checkpoints: a resumed run draws the same views.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..config import RunConfig, opt
from ..data.images import split
from ..data.points import load_points
from ..errors import GentuneError
from ..models.checkpoint import save_point_encoder
from ..models.points import ENCODERS, create_point_encoder
from ..registry import create, get
from ..train import Job
from .base import Splits, Task, register_task

OBJECTIVES = ("point-contrast", "hardest-contrastive")


@dataclass
class PointPretrainingConfig(RunConfig):
    """A contrastive pretraining run of a point encoder."""

    objective: str = opt("point-contrast", "point-contrast (PointInfoNCE) | hardest-contrastive (FCGF's)")
    objective_options: dict[str, dict[str, Any]] = opt(
        factory=dict, help="the objective's options: --set point-contrast.npos=256 point-contrast.tau=0.07")
    data: str = opt("", "point data: an .npz with x_<split> (N, P, 3), or a folder <class>/<file>.npy|.txt|.off")
    split: str | None = opt(None, "the .npz split to read (default: its only x_<split>)")
    points: int = opt(1024, "points per shape for a folder of shape files (an .npz's shapes are used as given)")
    model: str = opt("pointnet", "pointnet | dgcnn")
    model_options: dict[str, Any] = opt(factory=dict, help="the encoder's options: --set model_options.k=20")
    val_size: int = opt(400, "shapes held out (the same split as fine-tuning's), for the validation loss")
    split_seed: int = opt(0, "the held-out split (the same as fine-tuning's)")
    epochs: float = opt(20.0, "training epochs")
    batch_size: int = opt(32, "shapes per optimizer step")
    eval_batch_size: int = opt(64, "shapes per batch of the validation loss")
    lr: float = opt(1e-3, "peak learning rate")
    weight_decay: float = opt(1e-4, "AdamW weight decay")
    save_steps: int = opt(100, "resume checkpoint every N optimizer steps")

    def _checks(self) -> list[tuple[bool, str]]:
        return [
            (bool(self.data), "data is required (--data: an .npz of points or a folder of shapes)"),
            *super()._checks(),
            (self.model in ENCODERS, f"model must be one of {', '.join(ENCODERS)}, got {self.model!r}"),
            (self.val_size >= 0, "val_size must be >= 0"),
            (self.points >= 16, "points must be at least 16"),
        ]


class _Shapes(torch.utils.data.Dataset):
    def __init__(self, points):
        self.points = torch.from_numpy(points)

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.points[i]


def collate(shapes: list[torch.Tensor]) -> dict:
    return {"points": torch.stack(shapes)}


def validation_loss(objective, seed: int = 0):
    """``evaluate``: the mean objective loss over the validation shapes, their views drawn from a fixed seed (the
    same views at every evaluation), the training RNG left untouched."""

    def evaluate(model, dataloader, accelerator) -> dict[str, float]:
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + accelerator.process_index)
            for batch in dataloader:
                loss = objective(model, batch)["loss"].float()
                per_shape = accelerator.gather_for_metrics(loss.reshape(1).expand(len(batch["points"])))
                total += float(per_shape.sum())
                count += len(per_shape)
        return {"loss": total / max(count, 1)}

    return evaluate


def check(cfg: PointPretrainingConfig) -> None:
    if cfg.objective not in OBJECTIVES:
        get("objective", cfg.objective)
        raise GentuneError(f"objective {cfg.objective!r} is not a point pretraining objective "
                           f"({', '.join(OBJECTIVES)})")


def datasets(cfg: PointPretrainingConfig) -> Splits:
    """(training shapes, validation shapes or None), labels kept for the split only."""
    ds = load_points(cfg.data, cfg.split, cfg.points)
    if cfg.val_size <= 0:
        return Splits(ds, None)
    if ds.labels is None:
        raise GentuneError(f"{cfg.data}: no labels to stratify the held-out split by")
    train, val = split(ds, cfg.val_size, cfg.split_seed)
    return Splits(train, val)


def encoder_flops(encoder, points: int) -> int:
    """Forward FLOPs (2 x multiply-adds) of ``encoder`` on one shape of ``points`` points, counted by running it
    under torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    was = encoder.training
    encoder.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        encoder(torch.zeros(1, points, 3))
    encoder.train(was)
    return int(counter.get_total_flops())


def build(cfg: PointPretrainingConfig) -> Job:
    data = datasets(cfg)
    objective = create("objective", cfg.objective, **cfg.objective_options.get(cfg.objective, {}))
    encoder = create_point_encoder(cfg.model, **cfg.model_options)
    model = objective.build(encoder)
    n_points = data.train.points.shape[1]
    meta = {"objective": cfg.objective, "objective_options": cfg.objective_options.get(cfg.objective, {}),
            "data": cfg.data, "split": cfg.split, "val_size": cfg.val_size, "split_seed": cfg.split_seed,
            "points": n_points, "classes": data.train.classes}
    return Job(
        model=model,
        objective=objective,
        train_set=_Shapes(data.train.points),
        collate=collate,
        dev_set=_Shapes(data.heldout.points) if data.heldout is not None else None,
        evaluate=validation_loss(objective) if data.heldout is not None else None,
        main_metric="loss",
        greater_is_better=False,
        save=lambda m, directory, info: save_point_encoder(m.encoder, directory, info),
        save_best=False,
        final_name="encoder",
        meta=meta,
        summary={"task": "pretrain", "objective": cfg.objective, "model": cfg.model,
                 "encoder_parameters": sum(p.numel() for p in encoder.parameters()),
                 # two views of every shape go through the encoder each step
                 "forward_flops_per_shape": 2 * encoder_flops(encoder, objective.augment.kept(n_points))},
    )


TASK = register_task(Task(
    name="point-pretraining",
    config=PointPretrainingConfig,
    build=build,
    datasets=datasets,
    stage="pretrain",
    summary="contrastive pretraining of a point-cloud encoder (PointContrast) on point data (labels ignored)",
    objectives=OBJECTIVES,
    check=check,
))

__all__ = ["PointPretrainingConfig", "TASK", "build", "collate", "datasets", "encoder_flops", "validation_loss"]
