"""Point clouds: readers, splits, label budgets, and the augmentations of contrastive pretraining with the
correspondences they keep.

Formats (:func:`load_points`):

- an ``.npz`` with ``x_<split>`` (N, P, 3) points, ``y_<split>`` (N,) labels and ``classes`` (the shared
  ModelNet10 file has ``x_train``/``y_train``; a test file of the same layout ``x_test``/``y_test``). Without
  ``split`` the file must hold one ``x_*`` array;
- a folder ``<root>/<class>/<file>`` of ``.npy`` or ``.txt`` arrays (M, >= 3: the first three columns are x, y,
  z) or ``.off`` meshes (sampled on their surface, uniformly by area); each shape is resampled to ``points``
  points with a seed of its own (without replacement when it has enough).

Every shape is float32 and finite; a wrong shape, a NaN, a label outside the classes or an empty class folder is a
one-line error naming the file. Shapes are used as given (the shared file is centred and scaled to the unit
sphere); :func:`normalize` does that for others.

Augmentations work on one shape's points (P, 3) and return a view with the index of each of its points in the
original shape, so two views of one shape know their correspondences (:func:`correspondences`): rotation about the
up axis (z, as ModelNet's) or in SO(3), anisotropic scaling, jitter, point dropout and a partial crop (the points on
one side of a random plane), the last two keeping a fixed number of points so that views stack into batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import GentuneError

SUFFIXES = (".npy", ".txt", ".off")


@dataclass
class PointSet:
    """Shapes in memory with their class labels.

    Attributes:
        points: (N, P, 3) float32.
        labels: (N,) int64 indices into ``classes``, or None for an unlabeled view.
        classes: the class names.
        source: the file or folder they came from.
    """

    points: np.ndarray
    labels: np.ndarray | None
    classes: list[str]
    source: str

    def __post_init__(self):
        if self.points.ndim != 3 or self.points.shape[-1] != 3:
            raise ValueError(f"points must be (N, P, 3), got {self.points.shape}")
        if self.labels is not None and self.labels.shape != (len(self.points),):
            raise ValueError(f"labels must have shape ({len(self.points)},), got {self.labels.shape}")

    def __len__(self) -> int:
        return len(self.points)

    def select(self, indices) -> "PointSet":
        """The shapes at ``indices`` (integer indices or a boolean mask), copied, in that order."""
        return PointSet(self.points[indices].copy(), None if self.labels is None else self.labels[indices].copy(),
                        list(self.classes), self.source)


def _check_points(x: np.ndarray, where: str) -> np.ndarray:
    if x.ndim != 3 or x.shape[-1] != 3 or x.shape[0] == 0 or x.shape[1] == 0:
        raise GentuneError(f"{where}: points must be a non-empty (shapes, points, 3) array, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise GentuneError(f"{where}: points must be numbers, got {x.dtype}")
    x = x.astype(np.float32)
    bad = ~np.isfinite(x).all(axis=(1, 2))
    if bad.any():
        raise GentuneError(f"{where}: shape {int(np.flatnonzero(bad)[0])} has a NaN or infinite coordinate "
                           f"({int(bad.sum())} shapes in all)")
    return x


def read_npz(path: str | Path, split: str | None = None) -> PointSet:
    """The shapes of one split of an ``.npz`` file (see the module)."""
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise GentuneError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise GentuneError(f"{path}: not a readable .npz ({str(e).splitlines()[0]})") from None
    with data:
        keys = [k[2:] for k in data.files if k.startswith("x_")]
        if split is None:
            if len(keys) != 1:
                found = "no x_<split> array" if not keys else "several splits " + ", ".join(keys)
                raise GentuneError(f"{path}: {found} (the points are x_<split> (N, P, 3) with y_<split>; name one)")
            split = keys[0]
        if f"x_{split}" not in data.files:
            raise GentuneError(f"{path}: no x_{split} (splits: {', '.join(keys) or 'none'})")
        x = _check_points(data[f"x_{split}"], f"{path}: x_{split}")
        y = data[f"y_{split}"] if f"y_{split}" in data.files else None
        classes = [str(c) for c in data["classes"]] if "classes" in data.files else None
    if y is not None:
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise GentuneError(f"{path}: y_{split} must be ({len(x)},) integers, got {y.dtype} {y.shape}")
        y = y.astype(np.int64)
        if classes is None:
            classes = [f"class_{i}" for i in range(int(y.max()) + 1)]
        if y.min() < 0 or y.max() >= len(classes):
            raise GentuneError(f"{path}: y_{split} holds labels outside 0..{len(classes) - 1} ({len(classes)} classes)")
    return PointSet(x, y, classes or [], str(path))


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points uniform on a triangle mesh's surface: a face by its area, then a uniform point in it."""
    tri = vertices[faces]  # (F, 3, 3)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    if not area.sum() > 0:
        raise GentuneError("the mesh has no surface (every face has zero area)")
    pick = rng.choice(len(tri), size=n, p=area / area.sum())
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    t = tri[pick]
    return (t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])).astype(np.float32)


def read_off(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (V, 3), triangles (F, 3)) of an OFF mesh; polygons are fanned into triangles."""
    words = path.read_text(encoding="utf-8", errors="replace").split()
    if not words or not words[0].startswith("OFF"):
        raise GentuneError(f"{path}: not an OFF file (it starts with {words[0][:20] if words else 'nothing'!r})")
    rest = [words[0][3:]] + words[1:] if words[0] != "OFF" else words[1:]  # ModelNet writes "OFF12 34 0" at times
    rest = [w for w in rest if w]
    try:
        nv, nf = int(rest[0]), int(rest[1])
        vertices = np.array(rest[3:3 + 3 * nv], dtype=np.float64).reshape(nv, 3)
        faces, at = [], 3 + 3 * nv
        for _ in range(nf):
            k = int(rest[at])
            poly = [int(i) for i in rest[at + 1:at + 1 + k]]
            faces += [(poly[0], poly[i], poly[i + 1]) for i in range(1, k - 1)]
            at += 1 + k
    except (IndexError, ValueError):
        raise GentuneError(f"{path}: a malformed OFF mesh (counts, vertices or faces)") from None
    faces = np.array(faces, dtype=np.int64).reshape(-1, 3)
    if len(faces) == 0 or faces.min() < 0 or faces.max() >= nv:
        raise GentuneError(f"{path}: faces that name no vertex, or none at all")
    return vertices, faces


def _resample(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return x[rng.choice(len(x), size=n, replace=len(x) < n)]


def read_shape(path: Path, n: int, rng: np.random.Generator) -> np.ndarray:
    """One shape file as ``n`` points (see the module)."""
    suffix = path.suffix.lower()
    if suffix == ".off":
        return sample_surface(*read_off(path), n, rng)
    try:
        x = np.load(path, allow_pickle=False) if suffix == ".npy" else np.loadtxt(path, delimiter=None, ndmin=2,
                                                                                  comments="#")
    except ValueError as e:
        try:
            x = np.loadtxt(path, delimiter=",", ndmin=2, comments="#")
        except ValueError:
            raise GentuneError(f"{path}: not an array of numbers ({str(e).splitlines()[0]})") from None
    if x.ndim != 2 or x.shape[1] < 3 or len(x) == 0:
        raise GentuneError(f"{path}: a shape is an (M, 3) array of points (more columns are ignored), got {x.shape}")
    x = x[:, :3].astype(np.float32)
    if not np.isfinite(x).all():
        raise GentuneError(f"{path}: a NaN or infinite coordinate")
    return _resample(x, n, rng)


def read_folder(root: str | Path, points: int = 1024, seed: int = 0) -> PointSet:
    """``<root>/<class>/<file>`` shapes (see the module), classes sorted by name, each shape resampled to
    ``points`` points with a generator seeded by ``seed`` and its index."""
    root = Path(root)
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not folders:
        raise GentuneError(f"{root}: no class folders (<root>/<class>/<file>.npy|.txt|.off)")
    shapes, labels = [], []
    for c, folder in enumerate(folders):
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in SUFFIXES)
        if not files:
            raise GentuneError(f"{folder}: an empty class (no {', '.join(SUFFIXES)} files)")
        for f in files:
            shapes.append(read_shape(f, points, np.random.default_rng([seed, len(shapes)])))
            labels.append(c)
    return PointSet(np.stack(shapes), np.array(labels, dtype=np.int64), [f.name for f in folders], str(root))


def load_points(path: str | Path, split: str | None = None, points: int = 1024, seed: int = 0) -> PointSet:
    """An ``.npz`` file's split or a folder of shape files."""
    p = Path(path)
    if p.is_dir():
        return read_folder(p, points, seed)
    if p.suffix.lower() == ".npz":
        return read_npz(p, split)
    if not p.exists():
        raise GentuneError(f"{p}: no such file or folder")
    raise GentuneError(f"{p}: not point data (an .npz with x_<split>, or a folder <class>/<file>.npy|.txt|.off)")


def normalize(x: np.ndarray) -> np.ndarray:
    """Each shape centred on its mean and scaled into the unit sphere: (N, P, 3) -> (N, P, 3)."""
    x = x - x.mean(axis=1, keepdims=True)
    radius = np.linalg.norm(x, axis=2).max(axis=1)
    return (x / np.maximum(radius, 1e-12)[:, None, None]).astype(np.float32)


def label_fraction(ds: PointSet, fraction: float, seed: int) -> PointSet:
    """A seeded share ``fraction`` of every class (at least one shape each; rounding per class), in the original
    order; for one seed the shapes of a smaller fraction are among those of a larger one."""
    if ds.labels is None:
        raise GentuneError("label_fraction: the shapes have no labels")
    if not 0 < fraction <= 1:
        raise GentuneError(f"label_fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(len(ds.classes)):
        idx = np.flatnonzero(ds.labels == c)
        if len(idx):
            chosen.append(rng.permutation(idx)[:max(1, int(round(fraction * len(idx))))])
    return ds.select(np.sort(np.concatenate(chosen)))


# ----------------------------------------------------------------------------------------------- augmentations


@dataclass(frozen=True)
class Augment:
    """The augmentations of one view (PointContrast's, and the point-cloud literature's).

    Args:
        rotation: "up" (about the up axis), "so3" (any rotation) or "none".
        up_axis: 0, 1 or 2 (z, ModelNet's up).
        scale: anisotropic scaling, each axis by a factor uniform in [scale[0], scale[1]].
        jitter: the std of Gaussian noise per coordinate, clipped at 5 times it (0: none).
        crop: the share of points a partial crop keeps (those on one side of a random plane); 1: no crop.
        dropout: the share of the remaining points dropped at random.
    """

    rotation: str = "up"
    up_axis: int = 2
    scale: tuple[float, float] = (0.8, 1.2)
    jitter: float = 0.01
    crop: float = 0.8
    dropout: float = 0.1

    def __post_init__(self):
        if self.rotation not in ("up", "so3", "none"):
            raise GentuneError(f"rotation must be up, so3 or none, got {self.rotation!r}")
        if self.up_axis not in (0, 1, 2):
            raise GentuneError(f"up_axis must be 0, 1 or 2, got {self.up_axis}")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise GentuneError(f"scale must be 0 < low <= high, got {self.scale}")
        if not 0 < self.crop <= 1 or not 0 <= self.dropout < 1 or self.jitter < 0:
            raise GentuneError("crop must be in (0, 1], dropout in [0, 1), jitter >= 0")

    def kept(self, n: int) -> int:
        """How many of a shape's ``n`` points a view keeps."""
        return max(1, int(round(int(round(n * self.crop)) * (1 - self.dropout))))


def rotation_matrix(kind: str, up_axis: int, generator: torch.Generator) -> torch.Tensor:
    """A random 3 x 3 rotation: about ``up_axis`` by a uniform angle, or uniform on SO(3) (a QR of a Gaussian
    matrix with the signs fixed)."""
    if kind == "none":
        return torch.eye(3)
    if kind == "up":
        a = float(torch.rand((), generator=generator)) * 2 * math.pi
        c, s = math.cos(a), math.sin(a)
        i, j = [k for k in range(3) if k != up_axis]
        r = torch.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        return r
    q, rr = torch.linalg.qr(torch.randn(3, 3, generator=generator))
    q = q * torch.sign(torch.diagonal(rr))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def make_view(points: torch.Tensor, aug: Augment, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One augmented view of a shape's (P, 3) points: (view (K, 3), index (K,) of each view point in ``points``),
    K = ``aug.kept(P)``. The crop keeps the points nearest a random plane's side (a fixed share), the dropout a
    random subset of those; the geometric transforms then move the kept points."""
    n = len(points)
    index = torch.arange(n)
    if aug.crop < 1:
        direction = torch.nn.functional.normalize(torch.randn(3, generator=generator), dim=0)
        keep = int(round(n * aug.crop))
        index = torch.argsort(points @ direction)[:keep]
    if aug.dropout > 0:
        index = index[torch.randperm(len(index), generator=generator)[:aug.kept(n)]]
    index = torch.sort(index).values
    x = points[index] @ rotation_matrix(aug.rotation, aug.up_axis, generator).T
    lo, hi = aug.scale
    x = x * (lo + (hi - lo) * torch.rand(3, generator=generator))
    if aug.jitter > 0:
        x = x + (aug.jitter * torch.randn(x.shape, generator=generator)).clamp(-5 * aug.jitter, 5 * aug.jitter)
    return x, index


def correspondences(index1: torch.Tensor, index2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The matched pairs of two views of one shape: positions (i, j) with ``index1[i] == index2[j]`` (the same
    original point), in the order of the original points."""
    n = int(max(index1.max(), index2.max())) + 1
    at2 = torch.full((n,), -1, dtype=torch.long)
    at2[index2] = torch.arange(len(index2))
    j = at2[index1]
    i = torch.nonzero(j >= 0).squeeze(1)
    return i, j[i]


__all__ = ["Augment", "PointSet", "correspondences", "label_fraction", "load_points", "make_view", "normalize",
           "read_folder", "read_npz", "read_off", "read_shape", "rotation_matrix", "sample_surface"]
