"""Unsupervised pretraining jobs for the one loop: masked autoencoder (``mae``) and context encoder
(``context-encoder``) on an image folder or archive, labels ignored.

The validation images are held out with ``split_seed`` exactly as ``gentune finetune --task
image-classification`` holds them out, so a pretrained encoder has never seen the images it is evaluated on.
The run saves OUT/encoder (what fine-tuning's ``--init`` takes, with the pixel normalisation it was trained
with) and OUT/reconstructions.png (validation images: original / masked / reconstruction).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import registry
from .config import PretrainConfig
from .data.images import BatchAugment, EvalTransform, ImageCollator, ImageDataset, TrainTransform, keep_uint8, unlabeled
from .errors import GentuneError
from .models.vision import save_encoder
from .train import Job, begin, run
from .vision_tasks import encoder_for, held_out_split, pixel_stats

DEFAULT_ENCODERS = {"mae": "vit-tiny-p4", "context-encoder": "conv-small"}
SAMPLES = 8  # validation images in reconstructions.png


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


def pretrain(cfg: PretrainConfig) -> dict:
    """Pretrain an image encoder with ``cfg.objective``; returns the run summary (also OUT/summary.json)."""
    if cfg.objective not in DEFAULT_ENCODERS:
        registry.get("objective", cfg.objective)  # names an unknown objective with the known ones
        raise GentuneError(f"objective {cfg.objective!r} is not a pretraining objective "
                           f"(pretraining: {', '.join(DEFAULT_ENCODERS)})")
    radreg_data = cfg.regularizer_options.get("radreg", {}).get("data")
    if "radreg" in cfg.regularizer and radreg_data and not Path(str(radreg_data)).exists():
        raise GentuneError(f"radreg.data {radreg_data}: no such file or folder")  # before OUT gets a config.yaml
    started = begin(cfg)
    if isinstance(started, dict):
        return started
    accelerator, status = started
    train, val = held_out_split(cfg.data, None, cfg.val_size, cfg.split_seed, cfg.image_size,
                                cfg.exclude_split_seed)
    train = unlabeled(train)
    val = unlabeled(val) if val is not None else None
    mean, std = pixel_stats(train.images)
    size = train.images.shape[1]
    objective = registry.create("objective", cfg.objective, **cfg.objective_options.get(cfg.objective, {}))
    name = cfg.model or DEFAULT_ENCODERS[cfg.objective]
    encoder = encoder_for(name, size)
    try:
        model = objective.build(encoder, image_size=size) if cfg.objective == "context-encoder" \
            else objective.build(encoder)
    except ValueError as e:  # options that do not fit the encoder (decoder width and heads, ...)
        raise GentuneError(f"{cfg.objective}: {e}") from None
    augment = TrainTransform(size=size, scale=(cfg.crop_scale, 1.0), mean=tuple(mean), std=tuple(std)) \
        if cfg.augment else EvalTransform(mean=tuple(mean), std=tuple(std))
    evaluation = EvalTransform(mean=tuple(mean), std=tuple(std))
    meta = {"objective": cfg.objective, "objective_options": cfg.objective_options.get(cfg.objective, {}),
            "data": cfg.data, "mean": mean, "std": std, "image_size": size, "val_size": cfg.val_size,
            "split_seed": cfg.split_seed, "exclude_split_seed": cfg.exclude_split_seed}
    flops = None
    if cfg.objective == "mae":
        from .objectives.mae import mae_flops

        flops = mae_flops(encoder, objective.decoder["decoder_dim"], objective.decoder["decoder_depth"],
                          objective.mask_ratio)

    def on_end(final, out: Path) -> None:
        if val is not None and len(val):
            images = evaluation(torch.from_numpy(val.images[:SAMPLES]).to(next(final.parameters()).device))
            save_reconstructions(objective, final, images, mean, std, out / "reconstructions.png")

    job = Job(
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
                 "forward_flops_per_image": flops},
        on_end=on_end,
        reg_defaults={"mean": list(mean), "std": list(std), "image_size": size},
    )
    return run(cfg, job, accelerator, status)


__all__ = ["pretrain", "save_reconstructions", "validation_loss"]
