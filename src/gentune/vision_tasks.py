"""Image jobs for the one loop: classification fine-tuning (from scratch or a pretrained encoder) and its
evaluation on any image folder or archive of the same layout.

The validation images are held out of the *whole* image set (all classes) with ``split_seed`` before any class
subset or label budget is applied, so pretraining (which holds out the same split) never sees them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from . import registry
from ._fs import atomic_dir, recover_dir
from .config import FinetuneConfig
from .data.images import (BatchAugment, EvalTransform, ImageCollator, ImageDataset, ImageSet, TrainTransform,
                          keep_uint8, labels_per_class, load_images, split)
from .errors import GentuneError
from .models.hf import DEFAULT_MODEL
from .models.vision import ARCHITECTURES, create_encoder, load_encoder

DEFAULT_ENCODER = "vit-tiny-p4"
WEIGHTS, META = "model.safetensors", "gentune.json"


def select_classes(ds: ImageSet, names: list[str]) -> ImageSet:
    """The examples of classes ``names`` (in that order: labels become 0..k-1); an unknown name is an error."""
    unknown = [n for n in names if n not in ds.classes]
    if unknown:
        raise GentuneError(f"{ds.source}: no class {unknown[0]!r} (classes: {', '.join(ds.classes)})")
    if len(set(names)) < len(names):
        raise GentuneError(f"classes: a class is named twice in {names}")
    old = np.array([ds.classes.index(n) for n in names])
    keep = np.isin(ds.labels, old)
    sub = ds.select(keep)
    remap = np.full(len(ds.classes), -1, dtype=np.int64)
    remap[old] = np.arange(len(names))
    return ImageSet(sub.images, remap[sub.labels], list(names), ds.source)


def align_classes(ds: ImageSet, classes: list[str], owner: str) -> ImageSet:
    """``ds`` relabelled to index ``classes`` by name; a class folder not in ``classes`` is an error."""
    unknown = [c for c in ds.classes if c not in classes]
    if unknown:
        raise GentuneError(f"{ds.source}: class folder {unknown[0]!r} is not a class of {owner} "
                           f"({', '.join(classes)})")
    remap = np.array([classes.index(c) for c in ds.classes], dtype=np.int64)
    return ImageSet(ds.images, remap[ds.labels], list(classes), ds.source)


def held_out_split(data: str, dev: str | None, val_size: int, split_seed: int,
                   image_size: int | None = None, exclude_seed: int | None = None) -> tuple[ImageSet, ImageSet | None]:
    """(train, validation): the images of ``dev`` when given (classes matched by name), else ``val_size`` images
    of ``data`` held out with ``split_seed`` (stratified); no validation when ``val_size`` is 0.

    ``exclude_seed``: the ``val_size`` images that seed holds out are dropped first (neither train nor
    validation), so a tuning split (``exclude_seed=0, split_seed=1``) never touches the reported validation set.
    """
    ds = load_images(data, image_size=image_size)
    if exclude_seed is not None and not dev and val_size > 0:
        ds, _ = split(ds, val_size, exclude_seed)
    if dev:
        return ds, align_classes(load_images(dev, image_size=ds.images.shape[1]), ds.classes, data)
    if val_size <= 0:
        return ds, None
    return split(ds, val_size, split_seed)


def pixel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 (N, H, W, 3) images, in [0, 1] units."""
    # per-channel histograms: exact, without a float copy of every pixel (1.2 GB for CIFAR-10 in float64)
    flat = images.reshape(-1, 3)
    values = np.arange(256) / 255.0
    mean, std = [], []
    for c in range(3):
        counts = np.bincount(flat[:, c], minlength=256)
        m = float((counts * values).sum() / counts.sum())
        mean.append(m)
        std.append(float(np.sqrt((counts * (values - m) ** 2).sum() / counts.sum())))
    return mean, std


def save_classifier(model, directory: Path, meta: dict) -> None:
    """``model.safetensors`` plus ``gentune.json`` (architecture, config, classes, head, normalisation)."""
    from safetensors.torch import save_file

    info = {**meta, "architecture": model.encoder.architecture, "encoder_config": model.encoder.config}
    with atomic_dir(Path(directory)) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / WEIGHTS),
                  metadata={"format": "pt"})
        (tmp / META).write_text(json.dumps(info, indent=2) + "\n")


def load_classifier(path: str):
    """(classifier in eval mode, gentune.json) from a :func:`save_classifier` directory."""
    from safetensors.torch import load_file

    from .objectives.image_classification import ImageClassifier

    found = recover_dir(Path(path))
    if found is None:
        raise GentuneError(f"checkpoint {path!r}: no such directory")
    try:
        meta = json.loads((found / META).read_text())
        encoder = ARCHITECTURES[meta["architecture"]](**meta["encoder_config"])
        model = ImageClassifier(encoder, len(meta["classes"]), head=meta["head"])
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise GentuneError(f"{found / META}: not an image classifier checkpoint ({e})") from None
    try:
        model.load_state_dict(load_file(str(found / WEIGHTS)))
    except Exception as e:
        raise GentuneError(f"{found / WEIGHTS}: cannot load ({str(e).splitlines()[0]})") from None
    return model.eval(), meta


def evaluate_classifier(model, dataloader, accelerator) -> dict[str, float]:
    """Accuracy and mean cross-entropy over every example of ``dataloader`` (gathered across processes)."""
    model.eval()
    correct, total, loss = 0, 0, 0.0
    with torch.no_grad():
        for batch in dataloader:
            logits = model(batch["pixel_values"]).float()
            logits, gold = accelerator.gather_for_metrics((logits, batch["labels"]))
            loss += torch.nn.functional.cross_entropy(logits, gold, reduction="sum").item()
            correct += int((logits.argmax(-1) == gold).sum())
            total += len(gold)
    return {"accuracy": correct / max(total, 1), "loss": loss / max(total, 1)}


def encoder_for(name: str, image_size: int):
    """A fresh named encoder for square images of ``image_size`` (ViTs are built for one size)."""
    from .models.vision import VIT_SIZES

    if name in VIT_SIZES:
        return create_encoder(name, image_size=image_size)
    encoder = create_encoder(name)
    if image_size % encoder.reduction:
        raise GentuneError(f"encoder {name!r} needs images whose size is a multiple of {encoder.reduction}, "
                           f"got {image_size} (set image_size)")
    return encoder


def check_encoder_fits(encoder, meta: dict, path: str, image_size: int, cfg) -> None:
    """The encoder was built for these images, and (same data) never saw the validation images."""
    import sys

    built = (meta.get("config") or {}).get("image_size")
    if built is not None and built != image_size:
        raise GentuneError(f"{path}: the encoder was pretrained on {built}x{built} images, the data are "
                           f"{image_size}x{image_size} (set image_size={built})")
    same = meta.get("data") and Path(str(meta["data"])).resolve() == Path(str(cfg.data)).resolve()
    held = (meta.get("split_seed"), meta.get("exclude_split_seed"))  # what pretraining never saw
    unseen = meta.get("val_size") == cfg.val_size and (
        held == (cfg.split_seed, cfg.exclude_split_seed)  # the same validation images
        or (cfg.exclude_split_seed is None and held[1] == cfg.split_seed))  # validating on what it excluded
    if same and not cfg.dev and not unseen:
        print(f"warning: {path} was pretrained holding out val_size={meta.get('val_size')} with split_seed="
              f"{held[0]} (exclude_split_seed={held[1]}); this run validates on val_size={cfg.val_size}, "
              f"split_seed={cfg.split_seed} (exclude_split_seed={cfg.exclude_split_seed}): the encoder may have "
              "seen validation images", file=sys.stderr)


def image_classification_job(cfg: FinetuneConfig):
    """The :class:`gentune.train.Job` of ``gentune finetune --task image-classification``."""
    from .objectives.image_classification import ImageClassifier, param_groups
    from .train import Job

    train, val = held_out_split(cfg.data, cfg.dev, cfg.val_size, cfg.split_seed, cfg.image_size,
                                cfg.exclude_split_seed)
    size = train.images.shape[1]
    pool = train  # every training image of data (all classes, no label budget): where pixel statistics come from
    if cfg.classes:
        train = select_classes(train, cfg.classes)
        val = select_classes(val, cfg.classes) if val is not None else None
    if cfg.labels_per_class:
        train = labels_per_class(train, cfg.labels_per_class, cfg.seed)
    if cfg.init and cfg.init.lower() != "none":
        encoder, enc_meta = load_encoder(cfg.init)
        check_encoder_fits(encoder, enc_meta, cfg.init, size, cfg)
        mean, std = enc_meta.get("mean"), enc_meta.get("std")
        source = cfg.init
    else:
        name = DEFAULT_ENCODER if cfg.model == DEFAULT_MODEL else cfg.model
        encoder = encoder_for(name, size)
        # the statistics pretraining uses (the training part of data, all classes), so a from-scratch arm and a
        # pretrained one normalise alike; a few hundred labelled images of two classes would shift them
        mean, std = pixel_stats(pool.images)
        source = f"scratch:{name}"
    if mean is None:
        mean, std = pixel_stats(pool.images)
    if cfg.pool:
        if encoder.architecture != "vit":
            raise GentuneError(f"pool={cfg.pool}: pooling applies to ViT encoders only (conv encoders average)")
        encoder.pool = encoder.config["pool"] = cfg.pool  # config: what the saved classifier is rebuilt with
    model = ImageClassifier(encoder, len(train.classes), head=cfg.head, linear_probe=cfg.linear_probe)
    augment = TrainTransform(size=size, scale=(0.5, 1.0), mean=tuple(mean), std=tuple(std)) if cfg.augment \
        else EvalTransform(mean=tuple(mean), std=tuple(std))
    evaluation = EvalTransform(mean=tuple(mean), std=tuple(std))
    meta = {"task": "image-classification", "classes": list(train.classes), "head": cfg.head,
            "linear_probe": cfg.linear_probe, "init": source, "mean": list(mean), "std": list(std),
            "image_size": size}
    return Job(
        model=model,
        objective=registry.create("objective", "image-classification"),
        train_set=ImageDataset(train),
        collate=ImageCollator(keep_uint8),
        augment=BatchAugment(augment),
        dev_set=None if val is None else ImageDataset(val),
        dev_collate=ImageCollator(evaluation),
        evaluate=evaluate_classifier,
        main_metric="accuracy",
        save=save_classifier,
        param_groups=param_groups(model, cfg.lr, cfg.weight_decay, cfg.layer_decay),
        reg_defaults={"mean": list(mean), "std": list(std), "image_size": size},
        meta=meta,
        summary={"task": "image-classification", "model": source, "classes": list(train.classes),
                 "labels_per_class": cfg.labels_per_class, "linear_probe": cfg.linear_probe},
    )


def evaluate_images(checkpoint: str, data: str, batch_size: int = 256) -> dict:
    """Accuracy of an image classifier checkpoint on an image folder or archive; its class folders are matched
    to the checkpoint's classes by name (a folder the checkpoint does not know is an error that names it). Images
    of another size than the training images, mixed sizes included, are resized to it (bicubic)."""
    from accelerate import Accelerator

    model, meta = load_classifier(checkpoint)
    ds = align_classes(load_images(data, image_size=meta.get("image_size")), meta["classes"], checkpoint)
    accelerator = Accelerator()
    dl = torch.utils.data.DataLoader(ImageDataset(ds), batch_size=batch_size, shuffle=False,
                                     collate_fn=ImageCollator(EvalTransform(tuple(meta["mean"]), tuple(meta["std"]))))
    model, dl = accelerator.prepare(model, dl)
    return {"task": "image-classification", "file": str(data), "examples": len(ds),
            **evaluate_classifier(model, dl, accelerator)}


__all__ = ["align_classes", "evaluate_images", "held_out_split", "image_classification_job", "load_classifier",
           "pixel_stats", "save_classifier", "select_classes"]
