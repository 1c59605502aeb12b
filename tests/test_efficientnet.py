"""EfficientNet-Lite0 with the packaged ImageNet weights: the weights fit the architecture exactly, the size and
cost match the published model, freezing and the cached frozen part change nothing in what the network computes,
and the converted weights are sane (a linear probe on their features beats the same network at random
initialisation by a wide margin on real CIFAR-10)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gentune.models.efficientnet import NORMALIZATION, EfficientNetLite, imagenet_state_dict

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "cifar10_train_jpg.tar.gz"


def test_weights_fit_and_the_size_is_the_published_one():
    state = imagenet_state_dict()
    enc = EfficientNetLite(resolution=64).load_imagenet()
    own = enc.state_dict()
    assert set(own) == {k for k in state if not k.startswith("_fc.")}
    assert all(torch.equal(own[k], state[k]) for k in own)
    params = sum(p.numel() for p in enc.parameters()) + state["_fc.weight"].numel() + state["_fc.bias"].numel()
    assert params == pytest.approx(4.7e6, rel=0.02)  # 4.7M in the TensorFlow release's table
    assert EfficientNetLite().flops() / 2 == pytest.approx(407e6, rel=0.06)  # 407M multiply-adds at 224
    assert enc.feature_dim == 1280 and enc.num_layers == 18


def test_freezing_and_cached_inputs_compute_the_same_features():
    enc = EfficientNetLite(resolution=64).load_imagenet().freeze(9)
    enc.freeze_bn_stats = True
    enc.train()
    assert not any(p.requires_grad for n, p in enc.named_parameters() if enc.layer_id(n) < 9)
    assert all(p.requires_grad for n, p in enc.named_parameters() if enc.layer_id(n) >= 9)
    assert not enc._blocks[7].training and not enc._blocks[8]._bn0.training and enc._blocks[8].training
    x = torch.randn(3, 3, 32, 32)
    enc.eval()
    with torch.no_grad():
        direct = enc.forward_features(x)
        maps = enc.forward_frozen(x)
        enc.cached_inputs = True
        cached = enc.forward_features(maps)
    assert maps.shape == (3, 80, 4, 4)
    torch.testing.assert_close(cached, direct)
    with pytest.raises(Exception, match="freeze_layers must be in"):
        enc.freeze(18)


def _features(enc, images: np.ndarray) -> np.ndarray:
    from gentune.data.images import normalize

    mean, std = NORMALIZATION["tf-lite"]
    with torch.no_grad():
        return torch.cat([enc.forward_features(normalize(torch.from_numpy(images[i:i + 100]), mean, std))
                          for i in range(0, len(images), 100)]).numpy()


@pytest.mark.slow
def test_imagenet_features_beat_random_ones_on_cifar10():
    """The conversion check the package's authors ask for: 20 training images per class, 300 validation images,
    64 x 64; a logistic-regression probe on the ImageNet features against the same network freshly initialised."""
    from conftest import shared_data
    from sklearn.linear_model import LogisticRegression

    from gentune.data.images import labels_per_class, load_images, split

    shared_data(CIFAR, "the CIFAR-10 archive")
    train, val = split(load_images(CIFAR), 300, seed=1)
    train = labels_per_class(train, 20, seed=0)
    acc = {}
    for init in ("imagenet", "random"):
        torch.manual_seed(0)
        enc = EfficientNetLite(resolution=64)
        if init == "imagenet":
            enc.load_imagenet()
        a, b = _features(enc.eval(), train.images), _features(enc, val.images)
        mu, sd = a.mean(0), a.std(0) + 1e-6
        probe = LogisticRegression(max_iter=1000).fit((a - mu) / sd, train.labels)
        acc[init] = probe.score((b - mu) / sd, val.labels)
    assert acc["imagenet"] > 0.40 and acc["imagenet"] > acc["random"] + 0.2, acc


def test_a_saved_classifier_loads_back_and_scores_images(tmp_path):
    """Trained on cached frozen maps, saved, loaded: the loaded classifier takes images and gives what the trained
    one gives on the same images."""
    from gentune.models.checkpoint import load_image_classifier, save_image_classifier
    from gentune.models.vision import ImageClassifier

    torch.manual_seed(0)
    enc = EfficientNetLite(resolution=32).freeze(5)
    model = ImageClassifier(enc, 3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
        enc.cached_inputs = True  # as the task trains it
        assert torch.allclose(model(enc.forward_frozen(x)), want, atol=1e-5)
    save_image_classifier(model, tmp_path / "clf", {"classes": ["a", "b", "c"], "head": "linear"})
    loaded, meta = load_image_classifier(tmp_path / "clf")
    assert meta["architecture"] == "efficientnet-lite" and meta["config"]["resolution"] == 32
    assert not loaded.encoder.cached_inputs
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), want)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("bad-images") / "img"
    for c in "ab":
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((16, 16, 3), 60 * i, dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def _npz(where: Path, **arrays) -> Path:
    np.savez(where / "p.npz", **arrays)
    return where / "p.npz"


@pytest.mark.parametrize("model, sets, needle", [
    ("vit-micro-p4", ["init=imagenet"], "no packaged ImageNet weights for model 'vit-micro-p4'"),
    ("vit-micro-p4", ["freeze_layers=3"], "freeze_layers and freeze_bn_stats apply to efficientnet encoders"),
    ("efficientnet-lite0", ["freeze_layers=30"], "freeze_layers must be in [0, 17]"),
    ("efficientnet-lite0", ["cache_frozen=true"], "cache_frozen needs freeze_layers > 0"),
    ("conv-tiny", ["resolution=64"], "resolution applies to efficientnet encoders"),
])
def test_bad_encoder_options_are_one_line_and_write_nothing(folder, tmp_path, capsys, model, sets, needle):
    from gentune.cli import main

    code = main(["finetune", "--task", "image-classification", "--data", str(folder), "--out", str(tmp_path / "o"),
                 "--model", model, "--set", "val_size=2", *sets])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("arrays, needle", [
    (dict(x_train=np.zeros((4, 8, 3)), y_train=np.zeros(3)), "p.npz: y_train must be (4,) integers, got float64 (3,)"),
    (dict(points=np.zeros((4, 8, 3))), "p.npz: no x_<split> array"),
    (dict(x_train=np.full((4, 8, 3), np.nan), y_train=np.zeros(4)),
     "x_train: shape 0 has a NaN or infinite coordinate"),
])
def test_bad_point_files_are_one_line_and_write_nothing(tmp_path, capsys, arrays, needle):
    """(Point clouds: issue 22's rows, here beside the image ones for their cheap fixture.)"""
    from gentune.cli import main

    code = main(["finetune", "--task", "point-classification", "--data", str(_npz(tmp_path, **arrays)),
                 "--out", str(tmp_path / "o"), "--set", "val_size=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not (tmp_path / "o").exists()
