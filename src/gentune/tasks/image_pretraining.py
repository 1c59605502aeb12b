"""Unsupervised pretraining of an image encoder on an image folder or archive, labels ignored: masked autoencoder
(``mae``) and context encoder (``context-encoder``).

The validation images are held out with ``split_seed`` exactly as image classification holds them out, so a
pretrained encoder has never seen the images it is evaluated on. The run saves OUT/encoder (what fine-tuning's
``--init`` takes, with the pixel normalisation it was trained with) and OUT/reconstructions.png (validation
images: original / masked / reconstruction).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import RunConfig, opt
from ..data.images import (BatchAugment, EvalTransform, ImageCollator, ImageDataset, TrainTransform, image_stream,
                           keep_uint8, unlabeled)
from ..data.splits import held_out_split, pixel_stats, select_classes
from ..errors import GentuneError
from ..models.checkpoint import save_encoder
from ..registry import create, get
from ..train import Job
from .base import Splits, Task, register_task
from .image_classification import encoder_for, set_pooling

OBJECTIVES = ("mae", "context-encoder")
SAMPLES = 8  # validation images in reconstructions.png


@dataclass
class ImagePretrainingConfig(RunConfig):
    """An unsupervised pretraining run of an image encoder (``mae`` or ``context-encoder``)."""

    objective: str = opt("mae", 'mae | context-encoder')
    objective_options: dict[str, dict[str, Any]] = opt(
        factory=dict, help="an objective's options: {name: {option: value}}, or --set NAME.OPTION=VALUE")
    data: str = opt("", 'an image folder or archive; labels are ignored')
    model: str = opt("", "encoder name; empty: the objective's own (vit-tiny-p4 for mae, conv-small for "
                         "context-encoder)")
    val_size: int = opt(5000, "held out (the same split as fine-tuning's), for the validation loss")
    split_seed: int = opt(0, "the held-out split (the same as fine-tuning's)")
    exclude_split_seed: int | None = opt(None, 'as in fine-tuning: these held-out images are removed first')
    classes: list[str] | None = opt(None, 'pretrain on these class folders only (the held-out split is still '
                                          "drawn from all of them, as fine-tuning's)")
    exclude_classes: list[str] | None = opt(None, 'leave these class folders out (e.g. the downstream task\'s '
                                                  'classes: a pretraining distribution that differs from it)')
    pool: str | None = opt(None, "ViT encoders: cls | mean, the pooled representation (what RadReg penalises, and "
                                 "fine-tuning's default); None: the encoder's own (cls)")
    augment: bool = opt(True, 'random resized crop and flip on training images')
    crop_scale: float = opt(0.2, 'random resized crop: smallest area fraction')
    image_size: int | None = opt(None, "resize every image to this size (default: the images' own, one size)")
    epochs: float = opt(10.0, 'training epochs')
    batch_size: int = opt(256, 'global batch per optimizer step')
    eval_batch_size: int = opt(256, 'batch size of the validation loss')
    lr: float = opt(1.5e-3, 'peak learning rate')
    weight_decay: float = opt(0.05, 'AdamW weight decay')
    adam_beta2: float = opt(0.95, "AdamW beta2 (MAE's)")
    warmup_ratio: float = opt(0.05, 'share of the steps with a linear warm-up')
    max_grad_norm: float = opt(0.0, 'gradient clipping norm; <= 0 disables it')
    save_steps: int = opt(200, 'resume checkpoint every N optimizer steps')

    def _checks(self) -> list[tuple[bool, str]]:
        return [
            (bool(self.data), "data is required (--data: an image folder or archive)"),
            *super()._checks(),
            (self.val_size >= 0, "val_size must be >= 0"),
            (0 < self.crop_scale <= 1, "crop_scale must be in (0, 1]"),
            (self.pool in (None, "cls", "mean"), "pool must be cls or mean"),
        ]


def validation_loss(objective, seed: int = 0):
    """``evaluate(model, dataloader, accelerator)``: the mean objective loss over the validation images, with
    masks drawn from a fixed seed (the same masks at every evaluation) and the training RNG left untouched."""

    def evaluate(model, dataloader, accelerator) -> dict[str, float]:
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad(), torch.random.fork_rng(devices=[accelerator.device] if accelerator.device.type == "cuda"
                                                    else []):
            torch.manual_seed(seed + accelerator.process_index)
            for batch in dataloader:
                result = objective(model, batch)
                # the reconstruction part (the context encoder's adversarial terms are not a validation loss)
                loss = result.get("reconstruction", result["loss"]).float()
                # one value per image, so gather_for_metrics drops the duplicates padding the last batch
                per_image = accelerator.gather_for_metrics(loss.reshape(1).expand(len(batch["pixel_values"])))
                total += float(per_image.sum())
                count += len(per_image)
        return {"loss": total / max(count, 1)}

    return evaluate


def save_reconstructions(objective, model, images: torch.Tensor, mean, std, path: Path, seed: int = 0) -> Path:
    """A PNG grid: one column per image, rows original / masked input / reconstruction (de-normalised)."""
    from PIL import Image

    model.eval()
    g = torch.Generator().manual_seed(seed)  # masks are drawn on the CPU and moved to the images' device
    masked, recon = objective.reconstruct(model, images, generator=g)
    m = torch.tensor(mean, dtype=images.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=images.dtype).view(1, 3, 1, 1)
    rows = [((x.cpu() * s + m).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            for x in (images, masked, recon)]
    n, h, w, _ = rows[0].shape
    pad, scale = 2, 4
    grid = np.full((3 * (h + pad) + pad, n * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c in range(n):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            grid[y:y + h, x:x + w] = row[c]
    img = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    tmp = path.with_name(path.name + ".tmp.png")
    img.save(tmp)
    tmp.replace(path)
    return path


def check(cfg: ImagePretrainingConfig) -> None:
    if cfg.objective not in OBJECTIVES:
        get("objective", cfg.objective)  # names an unknown objective with the known ones
        raise GentuneError(f"objective {cfg.objective!r} is not a pretraining objective "
                           f"(pretraining: {', '.join(OBJECTIVES)})")


def datasets(cfg: ImagePretrainingConfig) -> Splits:
    """(unlabeled training images, unlabeled validation images or None)."""
    train, val = held_out_split(cfg.data, None, cfg.val_size, cfg.split_seed, cfg.image_size, cfg.exclude_split_seed)
    if cfg.classes or cfg.exclude_classes:
        names = list(cfg.classes or train.classes)
        unknown = [c for c in cfg.exclude_classes or [] if c not in train.classes]
        if unknown:
            raise GentuneError(f"exclude_classes: {cfg.data} has no class {unknown[0]!r} "
                               f"(classes: {', '.join(train.classes)})")
        names = [c for c in names if c not in (cfg.exclude_classes or [])]
        if not names:
            raise GentuneError("classes, exclude_classes: no class is left to pretrain on")
        train = select_classes(train, names)
        val = select_classes(val, names) if val is not None else None
    return Splits(unlabeled(train), unlabeled(val) if val is not None else None)


def build(cfg: ImagePretrainingConfig) -> Job:
    data = datasets(cfg)
    train, val = data.train, data.heldout
    mean, std = pixel_stats(train.images)
    size = train.images.shape[1]
    objective = create("objective", cfg.objective, **cfg.objective_options.get(cfg.objective, {}))
    name = cfg.model or objective.default_encoder
    encoder = encoder_for(name, size)
    set_pooling(encoder, cfg.pool)
    try:
        model = objective.build(encoder, image_size=size)
    except ValueError as e:  # options that do not fit the encoder (decoder width and heads, ...)
        raise GentuneError(f"{cfg.objective}: {e}") from None
    augment = TrainTransform(size=size, scale=(cfg.crop_scale, 1.0), mean=tuple(mean), std=tuple(std)) \
        if cfg.augment else EvalTransform(mean=tuple(mean), std=tuple(std))
    evaluation = EvalTransform(mean=tuple(mean), std=tuple(std))
    meta = {"objective": cfg.objective, "objective_options": cfg.objective_options.get(cfg.objective, {}),
            "data": cfg.data, "mean": mean, "std": std, "image_size": size, "val_size": cfg.val_size,
            "split_seed": cfg.split_seed, "exclude_split_seed": cfg.exclude_split_seed}

    def on_end(final, out: Path) -> None:
        if val is not None and len(val):
            images = evaluation(torch.from_numpy(val.images[:SAMPLES]).to(next(final.parameters()).device))
            save_reconstructions(objective, final, images, mean, std, out / "reconstructions.png")

    return Job(
        model=model,
        objective=objective,
        train_set=ImageDataset(train),
        collate=ImageCollator(keep_uint8),
        augment=BatchAugment(augment),
        dev_set=ImageDataset(val) if val is not None else None,
        dev_collate=ImageCollator(evaluation),
        evaluate=validation_loss(objective),
        main_metric="loss",
        greater_is_better=False,
        save=lambda m, directory, info: save_encoder(m.encoder, directory, info),
        save_best=False,
        final_name="encoder",
        meta=meta,
        summary={"task": "pretrain", "objective": cfg.objective, "model": name,
                 "parameters": sum(p.numel() for p in model.parameters()),
                 "encoder_parameters": sum(p.numel() for p in encoder.parameters()),
                 "forward_flops_per_image": objective.flops(encoder)},
        on_end=on_end,
        context={"mean": list(mean), "std": list(std), "image_size": size, "unlabeled": image_stream},
    )


TASK = register_task(Task(
    name="image-pretraining",
    config=ImagePretrainingConfig,
    build=build,
    datasets=datasets,
    stage="pretrain",
    summary="unsupervised pretraining of an image encoder on an image folder (labels ignored)",
    objectives=OBJECTIVES,
    check=check,
))

__all__ = ["TASK", "ImagePretrainingConfig", "build", "datasets", "save_reconstructions", "validation_loss"]
