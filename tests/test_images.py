import io
import os
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gentune.data import images as I
from gentune.data.images import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    EvalTransform,
    ImageCollator,
    ImageDataset,
    ImageSet,
    TrainTransform,
    labels_per_class,
    load_images,
    normalize,
    random_horizontal_flip,
    random_resized_crop,
    split,
    unlabeled,
)
from gentune.errors import GentuneError

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "cifar10_train_jpg.tar.gz"
CLASSES = {"cat": 3, "dog": 2, "emu": 4}  # class -> number of images


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GENTUNE_CACHE", str(tmp_path / "cache"))


def _pixels(c: int, k: int, size=(4, 6)) -> np.ndarray:
    """An image whose red channel says its class and green its index, so labels can be checked exactly."""
    a = np.zeros((*size, 3), dtype=np.uint8)
    a[..., 0], a[..., 1], a[..., 2] = 10 * (c + 1), k, np.arange(size[1], dtype=np.uint8) * 7
    return a


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _folder(root: Path, classes=CLASSES, extra=True) -> Path:
    for c, (name, n) in enumerate(sorted(classes.items())):
        (root / name).mkdir(parents=True)
        for k in range(n):
            (root / name / f"{k:03d}.png").write_bytes(_png(_pixels(c, k)))
    if extra:  # skipped: non-image, hidden file, hidden folder
        (root / "cat" / "notes.txt").write_text("not an image")
        (root / "cat" / ".DS_Store").write_bytes(b"\0junk")
        (root / ".thumbs").mkdir()
        (root / ".thumbs" / "x.png").write_bytes(b"junk")
    return root


def _tar(folder: Path, out: Path, top: str | None) -> Path:
    with tarfile.open(out, "w:gz" if out.name.endswith(("gz", "tgz")) else "w") as tf:
        tf.add(folder, arcname=top or ".")
    return out


def _check(ds: ImageSet, classes=CLASSES):
    names = sorted(classes)
    assert ds.classes == names
    assert ds.images.shape == (sum(classes.values()), 4, 6, 3) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64
    assert np.bincount(ds.labels).tolist() == [classes[n] for n in names]
    for img, label in zip(ds.images, ds.labels):
        assert img[0, 0, 0] == 10 * (label + 1)  # the image came from its label's folder
    np.testing.assert_array_equal(ds.images[0], _pixels(0, 0))


def test_folder(tmp_path):
    ds = load_images(_folder(tmp_path / "data"))
    _check(ds)
    assert ds.source == str(tmp_path / "data") and len(ds) == 9


@pytest.mark.parametrize("name,top", [("d.tar.gz", "train"), ("d.tar.gz", None), ("d.tgz", "train"), ("d.tar", None)])
def test_archive(tmp_path, name, top):
    ds = load_images(_tar(_folder(tmp_path / "data"), tmp_path / name, top))
    _check(ds)
    assert ds.source == str(tmp_path / name)


def test_folder_with_top_level_folder(tmp_path):
    _folder(tmp_path / "data" / "train")
    _check(load_images(tmp_path / "data"))


def test_class_subset_order_and_relabel(tmp_path):
    root = _folder(tmp_path / "data")
    ds = load_images(root, classes=["emu", "cat"])
    assert ds.classes == ["emu", "cat"]
    assert ds.labels.tolist() == [0] * 4 + [1] * 3
    assert (ds.images[ds.labels == 0][:, 0, 0, 0] == 30).all()  # emu is the third folder
    assert (ds.images[ds.labels == 1][:, 0, 0, 0] == 10).all()


def test_unknown_class(tmp_path):
    with pytest.raises(GentuneError, match=r"'yak'.*cat, dog, emu"):
        load_images(_folder(tmp_path / "data"), classes=["cat", "yak"])


def test_corrupt_image_names_the_file(tmp_path):
    root = _folder(tmp_path / "data")
    (root / "dog" / "001.png").write_bytes(_png(_pixels(1, 1))[:40])  # truncated
    with pytest.raises(GentuneError, match=r"dog/001\.png: cannot read image"):
        load_images(root)
    with pytest.raises(GentuneError, match=r"d\.tar\.gz: train/dog/001\.png: cannot read image"):
        load_images(_tar(root, tmp_path / "d.tar.gz", "train"))


def test_empty_class_folder(tmp_path):
    """An empty class folder is kept, with no images, when every class is read (pretraining ignores it, a
    fine-tuning that trains it says so, one that leaves it out with --classes is not blocked); asked for by name,
    it is an error."""
    root = _folder(tmp_path / "data")
    (root / "fox").mkdir()
    (root / "fox" / "readme.txt").write_text("no images here")
    for source in (root, _tar(root, tmp_path / "d.tar.gz", "train")):
        ds = load_images(source)
        assert ds.classes[-1] == "fox" and not (ds.labels == ds.classes.index("fox")).any()
        with pytest.raises(GentuneError, match=r"class folder 'fox' has no images"):
            load_images(source, classes=["cat", "fox"])
    assert load_images(root, classes=["cat"]).classes == ["cat"]  # an unselected empty class is fine


def test_no_class_folders_and_missing_path(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.png").write_bytes(_png(_pixels(0, 0)))
    with pytest.raises(GentuneError, match="no class folders.*1 images directly"):
        load_images(flat)
    (tmp_path / "empty").mkdir()
    with pytest.raises(GentuneError, match="no class folders"):
        load_images(tmp_path / "empty")
    with pytest.raises(GentuneError, match="no such file"):
        load_images(tmp_path / "nope")
    (tmp_path / "x.zip").write_bytes(b"PK")
    with pytest.raises(GentuneError, match="not a folder"):
        load_images(tmp_path / "x.zip")
    (tmp_path / "bad.tar.gz").write_bytes(b"not gzip at all")
    with pytest.raises(GentuneError, match=r"bad\.tar\.gz: cannot read archive"):
        load_images(tmp_path / "bad.tar.gz")


def test_size_mismatch_and_resize(tmp_path):
    root = _folder(tmp_path / "data")
    (root / "dog" / "000b.png").write_bytes(_png(_pixels(1, 9, size=(5, 5))))
    with pytest.raises(GentuneError, match=r"dog/000b\.png: image is 5x5 .*/cat/000\.png is 6x4.*image_size"):
        load_images(root)
    ds = load_images(root, image_size=8)
    assert ds.images.shape == (10, 8, 8, 3)
    # A one-colour image stays that colour under bicubic resizing.
    assert (ds.images[ds.labels == 2][:, :, :, 0] == 30).all()
    assert load_images(root, image_size=(3, 5)).images.shape == (10, 3, 5, 3)


def test_cache_hit_invalidation_and_corrupt_file(tmp_path, monkeypatch):
    root = _folder(tmp_path / "data")
    ds = load_images(root)
    files = list((tmp_path / "cache").glob("*.npz"))
    assert len(files) == 1
    real_decode = I._decode

    def no_decode(*a, **k):
        raise AssertionError("decoded despite the cache")

    monkeypatch.setattr(I, "_decode", no_decode)
    again = load_images(root)
    np.testing.assert_array_equal(again.images, ds.images)
    np.testing.assert_array_equal(again.labels, ds.labels)
    assert again.classes == ds.classes
    # A corrupt cache file is ignored and rewritten.
    files[0].write_bytes(b"garbage")
    monkeypatch.setattr(I, "_decode", real_decode)
    np.testing.assert_array_equal(load_images(root).images, ds.images)
    assert np.load(files[0], allow_pickle=False)["images"].shape == ds.images.shape
    # A new image is a new cache entry, not a stale hit.
    (root / "dog" / "009.png").write_bytes(_png(_pixels(1, 9)))
    assert len(load_images(root)) == len(ds) + 1
    # cache=False neither reads nor writes.
    n = len(list((tmp_path / "cache").iterdir()))
    load_images(root, cache=False, image_size=5)
    assert len(list((tmp_path / "cache").iterdir())) == n
    assert not list((tmp_path / "cache").glob("*.tmp"))


def _toy(counts=(40, 20, 10), seed=0) -> ImageSet:
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)]).astype(np.int64)
    images = np.zeros((len(labels), 2, 2, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(len(labels)) % 256  # identify examples
    images[:, 0, 0, 1] = np.arange(len(labels)) // 256
    return ImageSet(images, labels, [f"c{c}" for c in range(len(counts))], "toy")


def _ids(ds: ImageSet) -> np.ndarray:
    return ds.images[:, 0, 0, 0].astype(int) + 256 * ds.images[:, 0, 0, 1].astype(int)


def test_split():
    ds = _toy()
    train, val = split(ds, 14, seed=1)
    assert (len(train), len(val)) == (56, 14)
    assert np.bincount(val.labels).tolist() == [8, 4, 2]  # 20% of each class
    assert sorted(np.concatenate([_ids(train), _ids(val)]).tolist()) == list(range(70))
    t2, v2 = split(ds, 0.2, seed=1)
    np.testing.assert_array_equal(_ids(v2), _ids(val))
    assert not np.array_equal(_ids(split(ds, 14, seed=2)[1]), _ids(val))
    # Largest remainder: 10 of (40, 20, 10) is (5.71, 2.86, 1.43) -> (6, 3, 1).
    assert np.bincount(split(ds, 10, seed=0)[1].labels).tolist() == [6, 3, 1]
    assert len(split(unlabeled(ds), 7, seed=0)[1]) == 7
    for bad in (0, 70, 0.0, 1.0):
        with pytest.raises(GentuneError, match="val_size"):
            split(ds, bad, seed=0)


def test_labels_per_class():
    ds = _toy()
    k4 = labels_per_class(ds, 4, seed=3)
    assert np.bincount(k4.labels).tolist() == [4, 4, 4]
    np.testing.assert_array_equal(_ids(labels_per_class(ds, 4, seed=3)), _ids(k4))
    assert set(_ids(k4)) < set(_ids(labels_per_class(ds, 8, seed=3)))
    assert set(_ids(k4)) != set(_ids(labels_per_class(ds, 4, seed=4)))
    with pytest.raises(GentuneError, match=r"'c2' has 10 examples, fewer than the 11"):
        labels_per_class(ds, 11, seed=0)
    with pytest.raises(GentuneError, match="unlabeled"):
        labels_per_class(unlabeled(ds), 1, seed=0)


def test_unlabeled_dataset_and_collator():
    ds = _toy()
    u = unlabeled(ds)
    assert u.labels is None and u.images is ds.images and len(u) == len(ds)
    assert u.select([3, 1]).labels is None
    img, label = ImageDataset(u)[5]
    assert label == -1 and img.dtype == torch.uint8 and img.shape == (2, 2, 3)
    batch = ImageCollator(EvalTransform())([ImageDataset(u)[i] for i in range(4)])
    assert set(batch) == {"pixel_values"}


def test_collator_keys_through_a_dataloader():
    ds = _toy()
    coll = ImageCollator(TrainTransform(size=4), generator=torch.Generator().manual_seed(0))
    dl = torch.utils.data.DataLoader(ImageDataset(ds), batch_size=16, shuffle=True, collate_fn=coll)
    batch = next(iter(dl))
    assert set(batch) == {"pixel_values", "labels"}
    assert batch["pixel_values"].shape == (16, 3, 4, 4) and batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].dtype == torch.int64 and batch["labels"].shape == (16,)
    # The generator's state makes an exact resume possible.
    state = coll.state_dict()
    samples = [ImageDataset(ds)[i] for i in range(8)]
    first = coll(samples)["pixel_values"]
    coll.load_state_dict(state)
    torch.testing.assert_close(coll(samples)["pixel_values"], first, rtol=0, atol=0)


def test_dataloader_workers_do_not_repeat_each_other():
    # Eight copies of one image: the two workers' batches differ only if their augmentations do.
    one = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    ds = ImageSet(np.repeat(one[None], 8, axis=0), np.zeros(8, dtype=np.int64), ["a"], "toy")
    coll = ImageCollator(TrainTransform(size=8), generator=torch.Generator().manual_seed(0))
    dl = torch.utils.data.DataLoader(ImageDataset(ds), batch_size=4, num_workers=2, collate_fn=coll)
    first, second = [b["pixel_values"] for b in dl]
    assert not torch.allclose(first, second)


def _batch(b=8, h=16, w=16, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (b, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_transform_shapes_dtypes_ranges():
    x = _batch()
    g = torch.Generator().manual_seed(0)
    out = random_resized_crop(x, 8, generator=g)
    assert out.shape == (8, 3, 8, 8) and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 1
    assert random_resized_crop(x, (6, 10), generator=g).shape == (8, 3, 6, 10)
    assert random_horizontal_flip(x, 0.5, generator=g).shape == (8, 3, 16, 16)
    n = normalize(x, CIFAR10_MEAN, CIFAR10_STD)
    torch.testing.assert_close(n[:, 1], (x[..., 1].float() / 255 - CIFAR10_MEAN[1]) / CIFAR10_STD[1])
    t = TrainTransform(size=12)(x, generator=g)
    assert t.shape == (8, 3, 12, 12) and t.dtype == torch.float32
    lo, hi = (0 - max(CIFAR10_MEAN)) / min(CIFAR10_STD), (1 - min(CIFAR10_MEAN)) / min(CIFAR10_STD)
    assert lo - 1e-5 <= t.min() and t.max() <= hi + 1e-5
    e = EvalTransform()(x)
    torch.testing.assert_close(e, n)
    assert EvalTransform(size=8)(x).shape == (8, 3, 8, 8)
    assert EvalTransform(mean=None, std=None)(x).max() <= 1
    # Same seed, same augmentation; another seed, another.
    a = TrainTransform(size=12)(x, generator=torch.Generator().manual_seed(5))
    b = TrainTransform(size=12)(x, generator=torch.Generator().manual_seed(5))
    c = TrainTransform(size=12)(x, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


def test_flip():
    x = _batch()
    f = I.to_float(x)
    torch.testing.assert_close(random_horizontal_flip(x, 1.0), f.flip(-1), rtol=0, atol=0)
    torch.testing.assert_close(random_horizontal_flip(x, 0.0), f, rtol=0, atol=0)
    half = random_horizontal_flip(_batch(b=200), 0.5, generator=torch.Generator().manual_seed(0))
    flipped = (half == I.to_float(_batch(b=200)).flip(-1)).flatten(1).all(1).float().mean()
    assert 0.35 < flipped < 0.65


def test_train_transform_is_crop_flip_normalize():
    # TrainTransform folds the flip into the sampling grid; it must equal the three functions in a row.
    x = _batch(b=32, h=20, w=24)
    g = torch.Generator().manual_seed(7)
    crops = random_resized_crop(x, 12, (0.3, 0.9), generator=g)
    composed = normalize(random_horizontal_flip(crops, 0.5, generator=g), CIFAR10_MEAN, CIFAR10_STD)
    fused = TrainTransform(size=12, scale=(0.3, 0.9), flip=0.5)(x, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(fused, composed, rtol=0, atol=1e-5)
    unflipped = normalize(crops, CIFAR10_MEAN, CIFAR10_STD)
    assert 0 < (fused - unflipped).abs().flatten(1).amax(1).gt(1e-3).sum() < 32  # some, not all, flipped
    no_flip = TrainTransform(size=12, scale=(0.3, 0.9), flip=False)(x, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(no_flip, unflipped, rtol=0, atol=1e-5)


def test_crop_identity():
    x = _batch(h=16, w=16)
    out = random_resized_crop(x, 16, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, I.to_float(x), rtol=0, atol=1e-5)


def test_crop_boxes_follow_scale_and_ratio():
    # Red = x and green = y coordinate of the pixel centre (as a fraction of the image): bilinear sampling of
    # a linear ramp returns the sampled coordinate, so each output reveals its crop box.
    b, h, w, out = 64, 48, 64, 16
    xs = (torch.arange(w) + 0.5) / w
    ys = (torch.arange(h) + 0.5) / h
    img = torch.zeros(b, 3, h, w)
    img[:, 0], img[:, 1] = xs.expand(h, w), ys[:, None].expand(h, w)
    crop = random_resized_crop(img, out, scale=(0.2, 0.6), ratio=(0.5, 2.0), generator=torch.Generator().manual_seed(0))
    mid = out // 2
    cw = (crop[:, 0, mid, mid] - crop[:, 0, mid, mid - 1]) * out  # crop width / image width
    ch = (crop[:, 1, mid, mid] - crop[:, 1, mid - 1, mid]) * out
    area, aspect = cw * ch, (cw * w) / (ch * h)
    assert (area > 0.2 - 1e-4).all() and (area < 0.6 + 1e-4).all()
    assert (aspect > 0.5 - 1e-3).all() and (aspect < 2.0 + 1e-3).all()
    assert area.std() > 0.05 and crop[:, 0, mid, mid].std() > 0.05  # sizes and positions vary
    # A 2:1 box of the whole area never fits a 4:3 image: the fallback is a centred 64 x 32 crop.
    centre = random_resized_crop(img, out, scale=(1, 1), ratio=(2.0, 2.0), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(centre[:, 0, mid, mid] - centre[:, 0, mid, mid - 1], torch.full((b,), 1 / out))
    torch.testing.assert_close(centre[:, 1, mid, mid] - centre[:, 1, mid - 1, mid], torch.full((b,), 32 / h / out))


def test_cifar10(tmp_path):
    """Real data: the CIFAR-10 training archive of ../shared (CI provides it)."""
    from conftest import shared_data

    shared_data(CIFAR, "the CIFAR-10 archive")
    t = time.perf_counter()
    ds = load_images(CIFAR)
    first = time.perf_counter() - t
    assert len(ds) == 50_000 and len(ds.classes) == 10 and ds.images.shape[1:] == (32, 32, 3)
    assert np.bincount(ds.labels).tolist() == [5000] * 10
    assert ds.classes[0] == "airplane" and ds.classes[-1] == "truck"
    t = time.perf_counter()
    again = load_images(CIFAR)
    cached = time.perf_counter() - t
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    assert cached < first / 3, (first, cached)
    np.testing.assert_array_equal(again.images[::997], ds.images[::997])
    # The published CIFAR-10 statistics describe this (JPEG) copy to within JPEG smoothing (std 0.245 vs 0.247).
    hist = np.stack([np.bincount(ds.images[..., c].ravel(), minlength=256) for c in range(3)])
    v = np.arange(256) / 255.0
    mean = hist @ v / hist.sum(1)
    std = np.sqrt(hist @ v**2 / hist.sum(1) - mean**2)
    np.testing.assert_allclose(mean, CIFAR10_MEAN, atol=1e-3)
    np.testing.assert_allclose(std, CIFAR10_STD, atol=3e-3)


def test_archive_members_outside_its_tree_are_not_classes(tmp_path):
    """A member with an absolute path or a .. part is skipped (it would otherwise become a class named after its
    first folder, or reach outside the archive)."""
    import io

    root = _folder(tmp_path / "data")
    out = tmp_path / "d.tar"
    with tarfile.open(out, "w") as tf:
        tf.add(root, arcname=".")
        png = (root / "cat" / sorted(p.name for p in (root / "cat").iterdir())[0]).read_bytes()
        for name in ("/etc/evil/x.png", "../outside/y.png", "cat/../../z.png"):
            info = tarfile.TarInfo(name)
            info.size = len(png)
            tf.addfile(info, io.BytesIO(png))
    ds = load_images(out)
    assert ds.classes == sorted(CLASSES) and len(ds) == sum(CLASSES.values())
