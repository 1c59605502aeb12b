"""Point-cloud data (gentune.data.points): the readers on the real ModelNet10 file and on hand-made folders, bad
inputs as one-line errors, label budgets, and correspondences that survive every augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import shared_data
from gentune.data.points import (Augment, PointSet, correspondences, label_fraction, load_points, make_view,
                                 normalize, read_npz, rotation_matrix, sample_surface)
from gentune.errors import GentuneError


@pytest.fixture(scope="module")
def modelnet() -> Path:
    root = shared_data(Path(__file__).resolve().parents[2] / "shared" / "data" / "modelnet10", "ModelNet10 data")
    return root / "modelnet10_points1024_train.npz"


def test_the_real_file_reads_with_its_classes(modelnet):
    ds = load_points(modelnet)
    assert ds.points.shape == (3984, 1024, 3) and ds.points.dtype == np.float32
    assert ds.classes[:3] == ["bathtub", "bed", "chair"] and len(ds.classes) == 10
    assert np.bincount(ds.labels).tolist()[:3] == [101, 515, 889]
    assert np.linalg.norm(ds.points, axis=2).max() <= 1.0 + 1e-3
    with pytest.raises(GentuneError, match="no x_test"):
        read_npz(modelnet, "test")


def test_a_test_file_of_the_same_layout_and_bad_arrays(tmp_path):
    rng = np.random.default_rng(0)
    good = tmp_path / "test.npz"
    np.savez(good, x_test=rng.normal(size=(4, 16, 3)).astype(np.float16), y_test=np.array([0, 1, 1, 0]),
             classes=np.array(["a", "b"]))
    ds = load_points(good)
    assert ds.points.shape == (4, 16, 3) and ds.classes == ["a", "b"] and ds.labels.tolist() == [0, 1, 1, 0]
    cases = {
        "shape": (dict(x_train=np.zeros((4, 16, 2))), "(shapes, points, 3)"),
        "nan": (dict(x_train=np.where(np.arange(48).reshape(1, 16, 3) == 7, np.nan, 0.0).repeat(2, 0)),
                "shape 0 has a NaN"),
        "labels": (dict(x_train=np.zeros((2, 4, 3)), y_train=np.array([0, 3]), classes=np.array(["a", "b"])),
                   "outside 0..1"),
        "two": (dict(x_train=np.zeros((2, 4, 3)), x_test=np.zeros((2, 4, 3))), "several splits"),
    }
    for name, (arrays, needle) in cases.items():
        f = tmp_path / f"{name}.npz"
        np.savez(f, **arrays)
        with pytest.raises(GentuneError, match=needle) as e:
            load_points(f)
        assert str(f) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(GentuneError, match="not point data"):
        (tmp_path / "x.csv").write_text("1,2,3\n")
        load_points(tmp_path / "x.csv")


def _cube_off() -> str:
    v = [(x, y, z) for x in (0, 1) for y in (0, 1) for z in (0, 1)]
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    return "OFF\n8 6 0\n" + "".join(f"{a} {b} {c}\n" for a, b, c in v) + "".join(f"4 {' '.join(map(str, q))}\n"
                                                                             for q in quads)


def test_a_folder_of_npy_txt_and_off_shapes(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "box").mkdir()
    (tmp_path / "blob").mkdir()
    (tmp_path / "box" / "a.off").write_text(_cube_off())
    np.save(tmp_path / "blob" / "b.npy", rng.normal(size=(50, 3)))
    np.savetxt(tmp_path / "blob" / "c.txt", rng.normal(size=(10, 6)))  # normals too: the first 3 columns count
    ds = load_points(tmp_path, points=32)
    assert ds.classes == ["blob", "box"] and ds.labels.tolist() == [0, 0, 1] and ds.points.shape == (3, 32, 3)
    cube = ds.points[2]
    on_face = np.isclose(cube, 0, atol=1e-6) | np.isclose(cube, 1, atol=1e-6)
    assert on_face.any(axis=1).all() and (cube >= -1e-6).all() and (cube <= 1 + 1e-6).all()
    assert np.array_equal(load_points(tmp_path, points=32).points, ds.points)  # seeded per shape
    (tmp_path / "empty").mkdir()
    with pytest.raises(GentuneError, match="an empty class"):
        load_points(tmp_path)
    (tmp_path / "empty" / "bad.txt").write_text("1 2\n3 4\n")
    with pytest.raises(GentuneError, match=r"bad.txt: a shape is an \(M, 3\) array"):
        load_points(tmp_path)


def test_surface_samples_are_uniform_by_area():
    # two triangles, one with 3 times the other's area: about 3 in 4 samples fall in the large one
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [10, 0, 0], [13, 0, 0], [10, 1, 0]], dtype=float)
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    x = sample_surface(vertices, faces, 20_000, np.random.default_rng(0))
    share = (x[:, 0] >= 10).mean()
    assert abs(share - 0.75) < 0.01
    small = x[x[:, 0] < 10]
    assert (small[:, 0] + small[:, 1] <= 1 + 1e-6).all() and (small >= -1e-6).all()


def test_label_fraction_per_class_nested_and_at_least_one():
    ds = PointSet(np.zeros((30, 4, 3), np.float32), np.array([0] * 20 + [1] * 9 + [2]), ["a", "b", "c"], "t")
    small, large = label_fraction(ds, 0.1, 3), label_fraction(ds, 0.5, 3)
    assert np.bincount(small.labels).tolist() == [2, 1, 1] and np.bincount(large.labels).tolist() == [10, 4, 1]
    # each shape's first coordinate is its index: the smaller budget's shapes are among the larger one's
    ids = PointSet(np.arange(30, dtype=np.float32)[:, None, None].repeat(4, 1).repeat(3, 2), ds.labels, ds.classes,
                   "t")
    a = set(label_fraction(ids, 0.1, 3).points[:, 0, 0].tolist())
    b = set(label_fraction(ids, 0.5, 3).points[:, 0, 0].tolist())
    assert a <= b
    with pytest.raises(GentuneError, match="in \\(0, 1\\]"):
        label_fraction(ds, 0.0, 0)


def test_normalize_centres_and_fits_the_unit_sphere():
    x = np.random.default_rng(0).normal(3.0, 5.0, size=(2, 100, 3))
    y = normalize(x)
    assert np.allclose(y.mean(axis=1), 0, atol=1e-5) and np.allclose(np.linalg.norm(y, axis=2).max(axis=1), 1)


@pytest.mark.parametrize("aug", [Augment(rotation="none", scale=(1, 1), jitter=0, crop=1, dropout=0),
                                 Augment(rotation="up", scale=(1, 1), jitter=0, crop=1, dropout=0),
                                 Augment(rotation="so3", scale=(1, 1), jitter=0, crop=1, dropout=0),
                                 Augment(rotation="none", scale=(1, 1), jitter=0, crop=0.6, dropout=0),
                                 Augment(rotation="none", scale=(1, 1), jitter=0, crop=1, dropout=0.3),
                                 Augment()])
def test_correspondences_map_to_the_same_surface_point(aug):
    """Each view point's index names the original point it came from; undoing the rigid part of a view (no scale,
    no jitter) gives that point back, and two views' matched pairs are the same original point."""
    g = torch.Generator().manual_seed(0)
    points = torch.randn(200, 3, generator=g)
    v1, i1 = make_view(points, aug, torch.Generator().manual_seed(1))
    v2, i2 = make_view(points, aug, torch.Generator().manual_seed(2))
    assert len(v1) == len(i1) == aug.kept(200) and len(set(i1.tolist())) == len(i1)
    a, b = correspondences(i1, i2)
    assert torch.equal(i1[a], i2[b]) and len(a) == len(set(i1.tolist()) & set(i2.tolist()))
    if aug.scale == (1, 1) and aug.jitter == 0:
        # the view is a rotation of the kept points: pairwise distances are those of the original points
        def dist(p, q):
            return (p[:, None] - q[None]).norm(dim=-1)  # exact, not cdist's matrix-product shortcut

        assert torch.allclose(dist(v1, v1), dist(points[i1], points[i1]), atol=1e-5)
        # matched points sit alike in both views: their distances to the other matched points agree
        assert torch.allclose(dist(v1[a], v1[a]), dist(v2[b], v2[b]), atol=1e-5)
    else:
        assert (v1 - points[i1] @ torch.eye(3)).abs().max() > 0  # it did move them


def test_rotations_are_proper_and_up_keeps_the_up_axis():
    g = torch.Generator().manual_seed(0)
    for kind in ("up", "so3"):
        r = rotation_matrix(kind, 2, g)
        assert torch.allclose(r @ r.T, torch.eye(3), atol=1e-5) and torch.det(r) == pytest.approx(1.0, abs=1e-5)
    r = rotation_matrix("up", 2, g)
    assert torch.allclose(r[2], torch.tensor([0.0, 0.0, 1.0])) and torch.allclose(r[:, 2], torch.tensor([0.0, 0, 1]))
    with pytest.raises(GentuneError, match="rotation must be"):
        Augment(rotation="spin")
