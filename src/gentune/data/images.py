"""Image-folder data for unsupervised pretraining (MAE, context encoder) and image classification.

Layout: ``<root>/<class>/<image>``, as a folder or as a ``.tar``/``.tar.gz``/``.tgz`` archive, possibly under one
top-level folder (``train/<class>/<image>``). Class names are the sorted folder names; files below a class
folder's subfolders belong to that class; non-image files and hidden files or folders are skipped.

:func:`load_images` decodes every image with Pillow into one uint8 array and caches it as an ``.npz`` in
``$GENTUNE_CACHE`` (default ``~/.cache/gentune/images``), keyed by the absolute path, the file sizes and
modification times, ``image_size`` and ``classes``; a changed source gets a new cache file.

Augmentations work on whole batches (a per-image Python loop would cost more than a small model's step):
the :class:`ImageCollator` stacks uint8 images and hands the batch to :class:`TrainTransform` or
:class:`EvalTransform`, which return normalized float ``(B, 3, H, W)`` pixels.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import math
import os
import posixpath
import re
import sys
import tarfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import GentuneError
from .streams import PoolStream

CACHE_ENV = "GENTUNE_CACHE"
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm"}
)
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
# Per-channel statistics of the CIFAR-10 training set (pixels scaled to [0, 1]).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
_CACHE_VERSION = 1  # bump when the cache layout or the decoding changes


@dataclass
class ImageSet:
    """Images in memory with their class labels.

    Attributes:
        images: (N, H, W, 3) uint8 RGB pixels.
        labels: (N,) int64 class indices into ``classes``, or None for an unlabeled view.
        classes: class names; ``labels`` index into this list.
        source: the folder or archive the images came from.
    """

    images: np.ndarray
    labels: np.ndarray | None
    classes: list[str]
    source: str

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {self.images.dtype} {self.images.shape}")
        if self.labels is not None and self.labels.shape != (len(self.images),):
            raise ValueError(f"labels must have shape ({len(self.images)},), got {self.labels.shape}")

    def __len__(self) -> int:
        return len(self.images)

    def select(self, indices) -> ImageSet:
        """The examples at ``indices`` (integer indices or a boolean mask), copied, in that order."""
        idx = np.asarray(indices)
        if idx.dtype != bool:
            idx = idx.astype(np.int64)
        labels = None if self.labels is None else self.labels[idx]
        return ImageSet(self.images[idx], labels, list(self.classes), self.source)


# ---------------------------------------------------------------------------------------------- listing


def _hidden(parts) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _is_image(rel: str) -> bool:
    parts = rel.split("/")
    return not _hidden(parts) and os.path.splitext(parts[-1])[1].lower() in IMAGE_EXTENSIONS


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _scan_folder(root: Path):
    """Image files (posix paths relative to ``root``), folders, and (path, size, mtime) of every image."""
    files, dirs, stamp = [], set(), []
    seen = {os.path.realpath(root)}
    stack = [("", str(root))]
    while stack:
        rel, folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as e:
            raise GentuneError(f"{folder}: cannot list folder ({e.strerror or e})") from None
        for e in entries:
            if _hidden([e.name]):
                continue
            r = rel + e.name
            if e.is_dir():  # follows symlinks, as class folders are often links; `seen` breaks cycles
                real = os.path.realpath(e.path)
                if real not in seen:
                    seen.add(real)
                    dirs.add(r)
                    stack.append((r + "/", e.path))
            elif e.is_file() and _is_image(r):
                st = e.stat()
                files.append(r)
                stamp.append((r, st.st_size, st.st_mtime_ns))
    stamp.sort()
    return files, dirs, stamp


def _scan_tar(path: Path):
    """Image members (name -> bytes) and folders of an archive, read in one sequential pass.

    Random access (``extractfile`` by name) would re-decompress a gzip stream from the start for each
    backward seek; one streaming pass holds only the compressed image bytes, about the archive's size.
    """
    blobs, dirs = {}, set()
    try:
        with tarfile.open(path, mode="r|*") as tf:
            for m in tf:
                # a member outside the archive's tree (absolute, or reaching up with ..) is no class of it
                if m.name.startswith("/") or ".." in m.name.split("/"):
                    continue
                name = posixpath.normpath(m.name)
                parts = name.split("/")
                if name in ("", "."):
                    continue
                if m.isdir():
                    if not _hidden(parts):
                        dirs.add(name)
                elif m.isfile() and _is_image(name):
                    blobs[name] = tf.extractfile(m).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as e:
        raise GentuneError(f"{path}: cannot read archive ({e})") from None
    return list(blobs), dirs, blobs


def _group(files: list[str], dirs: set[str], where) -> dict[str, list[str]]:
    """Class folder name -> its sorted image paths, after dropping one top-level folder shared by all."""
    all_dirs = set(dirs)
    for f in files:
        parts = f.split("/")
        all_dirs.update("/".join(parts[:k]) for k in range(1, len(parts)))
    tops = {d.split("/")[0] for d in all_dirs} | {f.split("/")[0] for f in files}
    prefix = ""
    # One top-level folder holding folders (not images) is a wrapper like `train/`, not the only class.
    if len(tops) == 1 and any("/" in d for d in all_dirs) and all(f.count("/") >= 2 for f in files):
        prefix = next(iter(tops)) + "/"
    groups = {}
    for d in sorted(all_dirs):
        if d.startswith(prefix) and d != prefix[:-1] and "/" not in d[len(prefix):]:
            groups[d[len(prefix):]] = []
    if not groups:
        found = f"; found {len(files)} images directly in it" if files else ""
        raise GentuneError(f"{where}: no class folders (expected <root>/<class>/<image>){found}")
    for f in sorted(files):
        rel = f[len(prefix):]
        if "/" not in rel:
            raise GentuneError(f"{where}: image {f} is not inside a class folder (expected <root>/<class>/<image>)")
        groups[rel.split("/")[0]].append(f)
    return groups


def _choose_classes(groups: dict[str, list[str]], classes, where) -> list[str]:
    known = sorted(groups)
    if classes is None:
        names = known
    else:
        names = [str(c) for c in classes]
        if not names:
            raise GentuneError(f"{where}: classes is an empty list")
        for c in names:
            if c not in groups:
                raise GentuneError(f"{where}: no class folder {c!r} (classes: {', '.join(known)})")
        if len(set(names)) != len(names):
            dup = next(c for c in names if names.count(c) > 1)
            raise GentuneError(f"{where}: class {dup!r} is listed twice in classes")
    for c in names if classes is not None else []:  # asked for by name: it must hold images
        if not groups[c]:
            raise GentuneError(f"{where}: class folder {c!r} has no images")
    return names


# --------------------------------------------------------------------------------------------- decoding


def _size_pair(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    pair = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(pair) != 2 or not all(isinstance(s, int) and s > 0 for s in pair):
        raise GentuneError(f"image_size must be a positive int or (height, width), got {image_size!r}")
    return pair


def _decode(src, where: str, size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(src) as im:
            im = im.convert("RGB")  # also forces the full decode, so a truncated file fails here
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.Resampling.BICUBIC)
            return np.asarray(im)
    # Pillow's decoders raise many types on damaged files (OSError, SyntaxError, struct.error, ...); each is
    # the same user error: this file is not a readable image.
    except Exception as e:
        raise GentuneError(f"{where}: cannot read image ({type(e).__name__}: {e})") from None


def _decode_all(paths: list[str], labels: list[int], open_fn, where_fn, size, desc: str):
    from tqdm import tqdm

    n = len(paths)
    images = None
    first = None
    bar = tqdm(total=n, desc=desc, unit="img", disable=not sys.stderr.isatty(), leave=False)
    with bar:
        for k, p in enumerate(paths):
            arr = _decode(open_fn(p), where_fn(p), size)
            if images is None:
                images = np.empty((n, *arr.shape), dtype=np.uint8)
                first = p
            elif arr.shape != images.shape[1:]:
                h, w = arr.shape[:2]
                raise GentuneError(
                    f"{where_fn(p)}: image is {w}x{h} (width x height) but {where_fn(first)} is "
                    f"{images.shape[2]}x{images.shape[1]}; pass image_size to resize every image to one size"
                )
            images[k] = arr
            bar.update()
    return images, np.asarray(labels, dtype=np.int64)


# ------------------------------------------------------------------------------------------------ cache


def cache_dir() -> Path:
    """Where decoded images are cached: ``$GENTUNE_CACHE``, else ``~/.cache/gentune/images``."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/gentune/images").expanduser()


def _cache_file(path: Path, fingerprint, size, classes) -> Path:
    key = repr((_CACHE_VERSION, str(path), fingerprint, size, None if classes is None else list(map(str, classes))))
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", path.name)[:60]
    return cache_dir() / f"{stem}-{digest}.npz"


def _read_cache(file: Path):
    if not file.is_file():
        return None
    try:
        with np.load(file, allow_pickle=False) as z:
            images, labels, classes = z["images"], z["labels"], [str(c) for c in z["classes"]]
    # A cache file cut short or overwritten by something else fails in many ways (BadZipFile, ValueError,
    # EOFError, KeyError, ...); all mean "decode again", never an error.
    except Exception:
        return None
    ok = (images.ndim == 4 and images.dtype == np.uint8 and images.shape[-1] == 3 and labels.dtype == np.int64
          and labels.shape == (len(images),) and len(images) and 0 <= labels.min() and labels.max() < len(classes))
    return (images, labels, classes) if ok else None


def _write_cache(file: Path, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> None:
    tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp")  # pid: processes of one launch may race here
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, images=images, labels=labels, classes=np.array(classes, dtype=str))
        os.replace(tmp, file)
    except OSError as e:  # a read-only or full disk costs the next run a decode, not this run its data
        tmp.unlink(missing_ok=True)
        warnings.warn(f"could not write the image cache {file}: {e}", stacklevel=3)


# ------------------------------------------------------------------------------------------------ loading


def load_images(path: str | os.PathLike, classes: list[str] | None = None,
                image_size: int | tuple[int, int] | None = None, cache: bool = True) -> ImageSet:
    """Decode a ``<root>/<class>/<image>`` folder or archive into an :class:`ImageSet`.

    Args:
        path: a folder, or a ``.tar``/``.tar.gz``/``.tgz`` archive; either may hold one top-level folder
            (``train/<class>/<image>``).
        classes: class folders to load, in label order (label i is ``classes[i]``); default: all, sorted.
        image_size: resize every image to this size (an int for square, or (height, width)) with bicubic
            interpolation. Without it, all images must have one size.
        cache: read and write decoded arrays in ``$GENTUNE_CACHE`` (see :func:`cache_dir`).

    Returns:
        An ImageSet ordered by class, then by file path.

    Raises:
        GentuneError: a missing path, no class folders, an empty or unknown class, an unreadable image (named
            with its archive), or images of different sizes without ``image_size``.
    """
    path = Path(path).expanduser().absolute()
    if not path.exists():
        raise GentuneError(f"{path}: no such file or folder")
    size = _size_pair(image_size)
    if path.is_dir():
        files, dirs, stamp = _scan_folder(path)
        blobs = None
        fingerprint = hashlib.sha256(repr(stamp).encode()).hexdigest()
    elif path.is_file() and _is_archive(path):
        st = path.stat()
        files = dirs = blobs = None  # read only on a cache miss
        fingerprint = (st.st_size, st.st_mtime_ns)
    else:
        raise GentuneError(f"{path}: not a folder or a {'/'.join(ARCHIVE_SUFFIXES[:3])} archive")

    file = _cache_file(path, fingerprint, size, classes)
    if cache and (hit := _read_cache(file)) is not None:
        return ImageSet(hit[0], hit[1], hit[2], str(path))

    if blobs is None and files is None:
        files, dirs, blobs = _scan_tar(path)
    groups = _group(files, dirs, path)
    names = _choose_classes(groups, classes, path)
    paths = [p for c in names for p in groups[c]]
    labels = [i for i, c in enumerate(names) for _ in groups[c]]
    if blobs is None:
        images, labels = _decode_all(paths, labels, lambda p: path / p, lambda p: str(path / p), size,
                                     f"decoding {path.name}")
    else:
        images, labels = _decode_all(paths, labels, lambda p: io.BytesIO(blobs[p]), lambda p: f"{path}: {p}",
                                     size, f"decoding {path.name}")
    if cache:
        _write_cache(file, images, labels, names)
    return ImageSet(images, labels, names, str(path))


# ------------------------------------------------------------------------------------------------ subsets


def _need_labels(ds: ImageSet, what: str) -> np.ndarray:
    if ds.labels is None:
        raise GentuneError(f"{what} needs labels, but {ds.source} is an unlabeled view")
    return ds.labels


def split(ds: ImageSet, val_size: int | float, seed: int) -> tuple[ImageSet, ImageSet]:
    """A seeded train/validation split, stratified by label.

    Each class gives the validation set its share of ``val_size`` (largest-remainder rounding); an unlabeled
    set is split uniformly. Both parts keep the original order of ``ds``.

    Args:
        ds: the examples to split.
        val_size: the number of validation examples, or a fraction in (0, 1) of ``len(ds)``.
        seed: the same seed gives the same split.
    """
    n = len(ds)
    if isinstance(val_size, float):
        if not 0.0 < val_size < 1.0:
            raise GentuneError(f"val_size as a fraction must be in (0, 1), got {val_size}")
        n_val = int(round(val_size * n))
    else:
        n_val = int(val_size)
    if not 0 < n_val < n:
        raise GentuneError(f"val_size {val_size!r} leaves {n_val} of {n} examples for validation; need 1 to {n - 1}")
    rng = np.random.default_rng(seed)
    strata = np.zeros(n, dtype=np.int64) if ds.labels is None else ds.labels
    groups = [rng.permutation(np.flatnonzero(strata == s)) for s in np.unique(strata)]
    exact = np.array([n_val * len(g) / n for g in groups])
    take = np.floor(exact).astype(np.int64)
    # The leftover slots go to the largest remainders (ties: lower label); each such class has room for one more.
    order = sorted(range(len(groups)), key=lambda i: (-(exact[i] - take[i]), i))
    take[order[: n_val - int(take.sum())]] += 1
    val = np.sort(np.concatenate([g[:t] for g, t in zip(groups, take)]))
    train = np.setdiff1d(np.arange(n), val)
    return ds.select(train), ds.select(val)


def labels_per_class(ds: ImageSet, n: int, seed: int) -> ImageSet:
    """``n`` seeded examples of every class (k-shot data), in the original order of ``ds``.

    For one seed, the examples drawn with a smaller ``n`` are among those drawn with a larger one.

    Raises:
        GentuneError: ``n`` not positive, an unlabeled ``ds``, or a class with fewer than ``n`` examples.
    """
    labels = _need_labels(ds, "labels_per_class")
    if n <= 0:
        raise GentuneError(f"labels_per_class: n must be positive, got {n}")
    rng = np.random.default_rng(seed)
    chosen = []
    for c, name in enumerate(ds.classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) < n:
            raise GentuneError(f"{ds.source}: class {name!r} has {len(idx)} examples, fewer than the {n} asked for")
        chosen.append(rng.permutation(idx)[:n])
    return ds.select(np.sort(np.concatenate(chosen)))


def unlabeled(ds: ImageSet) -> ImageSet:
    """The same images without labels (for pretraining); the pixel array is shared, not copied."""
    return ImageSet(ds.images, None, list(ds.classes), ds.source)


# ------------------------------------------------------------------------------------------------ transforms


def to_float(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [0, 1]; a floating (B, 3, H, W) tensor passes through."""
    if x.dtype == torch.uint8:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected uint8 images (B, H, W, 3), got {tuple(x.shape)}")
        return x.permute(0, 3, 1, 2).float().div_(255.0)
    if not x.is_floating_point() or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected uint8 (B, H, W, 3) or float (B, 3, H, W) images, got {x.dtype} {tuple(x.shape)}")
    return x


def _pair(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _sample_boxes(b: int, h: int, w: int, scale, ratio, generator):
    """torchvision's ``RandomResizedCrop.get_params`` for a batch: (x0, y0, width, height), each (B,) float64."""
    tries = 10
    opts = dict(dtype=torch.float64)
    area = h * w * torch.empty(b, tries, **opts).uniform_(scale[0], scale[1], generator=generator)
    aspect = torch.empty(b, tries, **opts).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator).exp()
    cw, ch = (area * aspect).sqrt(), (area / aspect).sqrt()
    ok = (cw <= w) & (ch <= h)
    first = ok.to(torch.int8).argmax(1, keepdim=True)  # the first try that fits
    cw, ch, found = cw.gather(1, first)[:, 0], ch.gather(1, first)[:, 0], ok.any(1)
    # Fallback (torchvision's): the whole image, or its centre clamped to the aspect range.
    fw, fh = float(w), float(h)
    if w / h < min(ratio):
        fh = w / min(ratio)
    elif w / h > max(ratio):
        fw = h * max(ratio)
    cw, ch = torch.where(found, cw, fw), torch.where(found, ch, fh)
    u = torch.rand(b, 2, generator=generator, **opts)
    x0 = torch.where(found, u[:, 0] * (w - cw), (w - cw) / 2)
    y0 = torch.where(found, u[:, 1] * (h - ch), (h - ch) / 2)
    return x0, y0, cw, ch


def _crop_resize(x: torch.Tensor, boxes, size, flip: torch.Tensor | None = None) -> torch.Tensor:
    """Bilinear resampling of one axis-aligned box per image; ``flip`` (B,) bool mirrors the output."""
    b, _, h, w = x.shape
    out_h, out_w = _pair(size)
    x0, y0, cw, ch = boxes
    # Output pixel centres in [-1, 1] (align_corners=False), mapped into each box; building the grid from
    # two (B, size) vectors costs a fraction of affine_grid's batched matmul.
    u = (2 * torch.arange(out_w, dtype=torch.float64) + 1) / out_w - 1
    v = (2 * torch.arange(out_h, dtype=torch.float64) + 1) / out_h - 1
    sx = cw / w if flip is None else torch.where(flip, -cw / w, cw / w)
    gx = ((2 * x0 + cw) / w - 1)[:, None] + sx[:, None] * u
    gy = ((2 * y0 + ch) / h - 1)[:, None] + (ch / h)[:, None] * v
    gx, gy = gx.to(x.device, x.dtype), gy.to(x.device, x.dtype)
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    # "border": a crop at the image edge samples up to half a pixel outside it; repeat the edge, never black.
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crop(x: torch.Tensor, size: int | tuple[int, int], scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3),
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """One random crop per image, resized with bilinear interpolation (``RandomResizedCrop``, batched).

    As in torchvision, each crop covers a uniform fraction ``scale`` of the image area with a log-uniform
    aspect ratio (width / height) in ``ratio``; ten tries per image, then a centre crop. Crop boxes are
    continuous (not rounded to pixels), so scale=(1, 1), ratio=(1, 1) on square images is the identity.

    Args:
        x: (B, H, W, 3) uint8, or (B, 3, H, W) float in [0, 1].
        size: output size, an int or (height, width).
        scale: range of the crop's area as a fraction of the image's.
        ratio: range of the crop's aspect ratio.
        generator: source of randomness (CPU); None uses the global RNG.

    Returns:
        (B, 3, size_h, size_w) float in [0, 1].
    """
    x = to_float(x)
    return _crop_resize(x, _sample_boxes(x.shape[0], x.shape[2], x.shape[3], scale, ratio, generator), size)


def random_horizontal_flip(x: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``.

    Args:
        x: (B, H, W, 3) uint8, or (B, 3, H, W) float in [0, 1].

    Returns:
        (B, 3, H, W) float.
    """
    x = to_float(x)
    flip = torch.rand(x.shape[0], generator=generator) < p
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)


def normalize(x: torch.Tensor, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> torch.Tensor:
    """(x - mean) / std per channel, on pixels in [0, 1].

    Args:
        x: (B, H, W, 3) uint8, or (B, 3, H, W) float in [0, 1].
        mean, std: three per-channel values.

    Returns:
        (B, 3, H, W) float.
    """
    x = to_float(x)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m).div_(s)


@dataclass
class TrainTransform:
    """Random resized crop, horizontal flip, normalization: uint8 (B, H, W, 3) -> float (B, 3, size, size).

    Args:
        size: output size, an int or (height, width).
        scale, ratio: crop area and aspect ranges (see :func:`random_resized_crop`).
        flip: probability of a horizontal flip (``True`` means 0.5, 0 or ``False`` none).
        mean, std: per-channel normalization; None for none (pixels stay in [0, 1]).
    """

    size: int | tuple[int, int] = 32
    scale: tuple[float, float] = (0.2, 1.0)
    flip: float = 0.5
    mean: tuple[float, float, float] | None = CIFAR10_MEAN
    std: tuple[float, float, float] | None = CIFAR10_STD
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = to_float(x)
        boxes = _sample_boxes(x.shape[0], x.shape[2], x.shape[3], self.scale, self.ratio, generator)
        p = 0.5 if self.flip is True else float(self.flip)
        # The same draws as random_horizontal_flip(random_resized_crop(x)), but the flip rides on the sampling grid.
        flip = torch.rand(x.shape[0], generator=generator) < p if p > 0 else None
        x = _crop_resize(x, boxes, self.size, flip)
        return x if self.mean is None else normalize(x, self.mean, self.std)


@dataclass
class EvalTransform:
    """Deterministic: uint8 (B, H, W, 3) -> normalized float (B, 3, H, W).

    Args:
        mean, std: per-channel normalization; None for none (pixels stay in [0, 1]).
        size: resize to this size (bilinear, antialiased) when the model was trained on another size.
    """

    mean: tuple[float, float, float] | None = CIFAR10_MEAN
    std: tuple[float, float, float] | None = CIFAR10_STD
    size: int | tuple[int, int] | None = None

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = to_float(x)
        if self.size is not None and tuple(x.shape[-2:]) != _pair(self.size):
            x = F.interpolate(x, size=_pair(self.size), mode="bilinear", align_corners=False, antialias=True)
        return x if self.mean is None else normalize(x, self.mean, self.std)


# ------------------------------------------------------------------------------------------------ batching


class ImageDataset(torch.utils.data.Dataset):
    """A torch Dataset over an :class:`ImageSet`: yields (uint8 (H, W, 3) tensor, label or -1).

    The tensor shares memory with the ImageSet; all conversion happens per batch in :class:`ImageCollator`.
    """

    def __init__(self, ds: ImageSet):
        self.ds = ds
        self.images = torch.from_numpy(ds.images)
        self.labels = None if ds.labels is None else ds.labels.tolist()

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        return self.images[i], (-1 if self.labels is None else self.labels[i])


def keep_uint8(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The identity transform: a collator that leaves the augmentation to the training step."""
    return x


class BatchAugment:
    """``batch -> batch`` with ``transform`` applied to the uint8 ``pixel_values`` (on their device), drawing
    from the global RNG: in a training loop this keeps augmentations in step with a resumed checkpoint."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, batch: dict) -> dict:
        return {**batch, "pixel_values": self.transform(batch["pixel_values"])}


class ImageCollator:
    """Stack uint8 images and transform the whole batch: ``{"pixel_values": (B, 3, H, W), "labels": (B,)}``.

    ``labels`` is left out when every example is unlabeled (-1). The transform is called as
    ``transform(x, generator=generator)`` on the uint8 (B, H, W, 3) batch.

    Args:
        transform: e.g. :class:`TrainTransform` or :class:`EvalTransform`.
        generator: the augmentations' randomness; None uses the global RNG. In DataLoader worker processes
            a given generator is reseeded from the worker's seed, so workers do not repeat each other.
    """

    def __init__(self, transform, generator: torch.Generator | None = None):
        self.transform = transform
        self.generator = generator
        self._worker = None

    def __call__(self, samples) -> dict:
        if self.generator is not None:
            info = torch.utils.data.get_worker_info()
            if info is not None and self._worker != (os.getpid(), info.id):
                self._worker = (os.getpid(), info.id)
                self.generator = torch.Generator().manual_seed(info.seed)
        images = torch.stack([s[0] for s in samples])
        labels = torch.tensor([s[1] for s in samples], dtype=torch.int64)
        batch = {"pixel_values": self.transform(images, generator=self.generator)}
        if bool((labels >= 0).any()):
            batch["labels"] = labels
        return batch

    def state_dict(self) -> dict:
        """The generator's state, for an exact resume (empty when the global RNG is used)."""
        return {} if self.generator is None else {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("generator") is not None:
            self.generator = self.generator or torch.Generator()
            self.generator.set_state(state["generator"])


class ImageStream(PoolStream):
    """An endless stream of normalised batches from a pool of images: ``next(stream) -> (x, idx)``, x (n, 3, H, W)
    float pixels normalised with ``mean``/``std``, idx (n,) their positions in the pool. The pool is cycled in
    permutations drawn from ``generator`` (a fresh one after every pass: :class:`gentune.data.streams.PoolStream`);
    ``state_dict`` holds the position, the generator's state is its owner's to save.

    Args:
        images: uint8 (N, H, W, 3) array or tensor.
        batch_size: n.
        generator: draws the permutations.
        mean, std: per-channel normalisation of pixels in [0, 1]; None for none.
    """

    def __init__(self, images, batch_size: int, generator: torch.Generator, mean=None, std=None):
        super().__init__(torch.as_tensor(images), batch_size, generator)
        self.mean, self.std = mean, std

    @property
    def images(self) -> torch.Tensor:
        """The pool: uint8 (N, H, W, 3)."""
        return self.pool

    def _batch(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.pool[idx].permute(0, 3, 1, 2).float() / 255.0
        if self.mean is not None:
            x = (x - torch.tensor(self.mean).view(1, 3, 1, 1)) / torch.tensor(self.std).view(1, 3, 1, 1)
        return x


def image_stream(path: str, batch_size: int, generator: torch.Generator, image_size: int | None = None, mean=None,
                 std=None) -> ImageStream:
    """An :class:`ImageStream` over the images of a folder or archive (labels ignored), resized to
    ``image_size``."""
    return ImageStream(load_images(path, image_size=image_size).images, batch_size, generator, mean, std)
