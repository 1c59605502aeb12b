"""Splits of image sets: the held-out validation split that pretraining and fine-tuning share, class subsets,
class matching by name, and pixel statistics.

The validation images are held out of the *whole* image set (all classes) with ``split_seed`` before any class
subset or label budget is applied, so pretraining (which holds out the same split) never sees them.
"""

from __future__ import annotations

import numpy as np

from ..errors import GentuneError
from .images import ImageSet, load_images, split


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
    """``ds`` relabelled to index ``classes`` by name; a class folder not in ``classes`` is an error (an empty one
    is ignored)."""
    unknown = [c for i, c in enumerate(ds.classes) if c not in classes and bool((ds.labels == i).any())]
    if unknown:
        raise GentuneError(f"{ds.source}: class folder {unknown[0]!r} is not a class of {owner} "
                           f"({', '.join(classes)})")
    remap = np.array([classes.index(c) if c in classes else -1 for c in ds.classes], dtype=np.int64)
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


def text_key(text_a: str | None, text_b: str | None = None) -> tuple[str, str]:
    """An example's text as compared for overlap: each part lowercased, whitespace collapsed."""
    def norm(t):
        return " ".join((t or "").lower().split())

    return norm(text_a), norm(text_b)


def without_overlap(dataset, *others):
    """(``dataset`` without every example whose text, (text_a, text_b) as :func:`text_key` compares it, occurs in
    any of ``others``, how many were removed). For few-shot protocols whose small training and dev files were
    drawn from the set an evaluation file was split from (LM-BFF's k-shot files and ``full/<TASK>/dev``)."""
    seen = {text_key(a, b) for o in others for a, b in zip(o["text_a"], o["text_b"])}
    keep = [i for i, (a, b) in enumerate(zip(dataset["text_a"], dataset["text_b"])) if text_key(a, b) not in seen]
    return dataset.select(keep), len(dataset) - len(keep)


__all__ = ["align_classes", "held_out_split", "pixel_stats", "select_classes", "text_key", "without_overlap"]
