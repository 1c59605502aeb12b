"""Image pretraining and fine-tuning through the one loop and the CLI (in process): pretrain -> fine-tune ->
evaluate, the shared held-out split, and one-line errors for bad image inputs. An exact resume of either image task
is a row of tests/test_matrix.py."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import cli_error, cli_ok, write_images

CLASSES = ["cat", "dog", "ship"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """An image folder: 3 classes x 16 PNGs of 32x32, each class a different dominant colour plus noise."""
    return write_images(tmp_path_factory.mktemp("imgs") / "train", CLASSES, 16, 32, noise=35)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GENTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


PRE = ["--model", "vit-micro-p4", "--batch-size", "8", "--set", "val_size=9", "--set", "eval_batch_size=16"]


def test_pretrain_finetune_evaluate(images, tmp_path, capsys):
    pre = tmp_path / "mae"
    cli_ok(capsys, "pretrain", "--data", images, "--out", pre, "--max-steps", "4", *PRE, "--set", "eval_steps=2")
    summary = json.loads((pre / "summary.json").read_text())
    assert summary["objective"] == "mae" and summary["train_steps"] == 4 and summary["train_examples"] == 39
    assert summary["forward_flops_per_image"] > 0 and summary["final_dev"]["loss"] > 0
    meta = json.loads((pre / "encoder" / "gentune.json").read_text())
    assert meta["architecture"] == "vit" and meta["objective"] == "mae" and len(meta["mean"]) == 3
    assert meta["kind"] == "image-encoder" and meta["gentune"] == 1
    assert (pre / "reconstructions.png").is_file() and (pre / "loss.png").is_file()
    evals = [json.loads(l) for l in (pre / "metrics.jsonl").read_text().splitlines() if '"eval"' in l]
    assert [e["step"] for e in evals] == [2, 4]

    ft = tmp_path / "ft"
    # --init takes the pretraining run folder itself (what a user types first), or its encoder/
    cli_ok(capsys, "finetune", "--task", "image-classification", "--data", images, "--init", pre,
           "--out", ft, "--max-steps", "6", "--batch-size", "8", "--lr", "1e-3", "--set", "val_size=9",
           "--classes", "ship,cat")
    s = json.loads((ft / "summary.json").read_text())
    assert s["classes"] == ["ship", "cat"] and s["dev_examples"] == 6 and s["train_examples"] == 26
    best = json.loads((ft / "best" / "gentune.json").read_text())
    assert best["classes"] == ["ship", "cat"] and best["init"] == str(pre) and best["kind"] == "image-classifier"
    # the checkpoint scores a folder of its classes exactly as during training (held-out images only here)
    from gentune.data.splits import held_out_split, select_classes

    _, val = held_out_split(str(images), None, 9, 0)
    val = select_classes(val, ["ship", "cat"])
    from PIL import Image

    for c in ("ship", "cat"):
        (tmp_path / "val" / c).mkdir(parents=True)
    for i, (img, lab) in enumerate(zip(val.images, val.labels)):
        Image.fromarray(img).save(tmp_path / "val" / ["ship", "cat"][lab] / f"{i}.png")
    got = json.loads(cli_ok(capsys, "evaluate", "--checkpoint", ft / "best", "--task", "image-classification",
                            "--data", tmp_path / "val"))
    assert got["examples"] == 6 and got["accuracy"] == pytest.approx(s["best_dev"]["accuracy"])
    assert got["loss"] == pytest.approx(s["best_dev"]["loss"], rel=1e-5)
    # a folder of mixed sizes is resized to the training size, not refused
    Image.fromarray(val.images[0]).resize((48, 40)).save(tmp_path / "val" / "cat" / "big.png")
    assert json.loads(cli_ok(capsys, "evaluate", "--checkpoint", ft / "best", "--task", "image-classification",
                             "--data", tmp_path / "val"))["examples"] == 7


def test_context_encoder_and_linear_probe(images, tmp_path, capsys):
    pre = tmp_path / "ce"
    cli_ok(capsys, "pretrain", "--objective", "context-encoder", "--model", "conv-tiny", "--data", images, "--out",
           pre, "--max-steps", "2", "--batch-size", "8", "--set", "val_size=9", "--set", "context-encoder.mask=blocks")
    assert json.loads((pre / "encoder" / "gentune.json").read_text())["architecture"] == "conv"
    ft = tmp_path / "probe"
    cli_ok(capsys, "finetune", "--task", "image-classification", "--data", images, "--init", pre / "encoder",
           "--out", ft, "--max-steps", "3", "--batch-size", "8", "--set", "val_size=9", "--linear-probe",
           "--labels-per-class", "4")
    s = json.loads((ft / "summary.json").read_text())
    assert s["train_examples"] == 12 and s["linear_probe"] is True
    # a linear probe leaves the encoder as pretrained
    from safetensors.torch import load_file

    enc = load_file(str(pre / "encoder" / "model.safetensors"))
    clf = load_file(str(ft / "best" / "model.safetensors"))
    assert all(torch.equal(v, clf[f"encoder.{k}"]) for k, v in enc.items())


def test_held_out_split_is_the_same_for_pretraining_and_every_class_subset(images):
    from gentune.data.splits import held_out_split, select_classes

    train, val = held_out_split(str(images), None, 9, 0)
    assert len(val) == 9 and sorted(np.bincount(val.labels).tolist()) == [3, 3, 3]
    _, again = held_out_split(str(images), None, 9, 0)
    assert np.array_equal(val.images, again.images)
    # the held-out images never reach training, whichever class subset is fine-tuned
    seen = {img.tobytes() for img in train.images}
    assert not any(img.tobytes() in seen for img in val.images)
    sub = select_classes(val, ["dog"])
    assert len(sub) == 3 and set(sub.labels.tolist()) == {0}


def test_pretraining_on_a_class_subset_keeps_the_shared_held_out_split(images):
    """exclude_classes=cat,dog pretrains on the ship images of the training part only: none of the held-out images
    of any class (the split all fine-tuning uses), none of cat or dog; classes=... keeps the named ones."""
    from gentune.data.splits import held_out_split
    from gentune.errors import GentuneError
    from gentune.tasks.image_pretraining import ImagePretrainingConfig, datasets

    key = lambda arr: {img.tobytes() for img in arr}  # noqa: E731
    train, val = held_out_split(str(images), None, 9, 0)
    ship = datasets(ImagePretrainingConfig(data=str(images), val_size=9, exclude_classes=["cat", "dog"]))
    assert key(ship.train.images) == key(train.images[train.labels == 2])
    assert key(ship.heldout.images) == key(val.images[val.labels == 2])
    both = datasets(ImagePretrainingConfig(data=str(images), val_size=9, classes=["dog", "ship"],
                                           exclude_classes=["dog"]))
    assert key(both.train.images) == key(ship.train.images)
    with pytest.raises(GentuneError, match="exclude_classes: .* no class 'horse'"):
        datasets(ImagePretrainingConfig(data=str(images), val_size=9, exclude_classes=["horse"]))
    with pytest.raises(GentuneError, match="no class is left"):
        datasets(ImagePretrainingConfig(data=str(images), val_size=9, exclude_classes=CLASSES))


def test_tuning_split_never_touches_the_reported_validation_images(images, tmp_path, capsys):
    """exclude_split_seed=0, split_seed=1: the reported held-out images (seed 0) are in neither part, the tuning
    validation set is disjoint from the tuning training set; an encoder pretrained that way is known not to
    have seen the reported validation images (no warning), nor the tuning ones."""
    from types import SimpleNamespace

    from gentune.config import apply_mapping
    from gentune.data.splits import held_out_split
    from gentune.tasks.image_classification import ImageClassificationConfig, check_encoder_fits

    _, reported = held_out_split(str(images), None, 9, 0)
    train, tune = held_out_split(str(images), None, 9, 1, exclude_seed=0)
    key = lambda ds: {img.tobytes() for img in ds.images}  # noqa: E731
    assert len(tune) == 9 and len(train) == 48 - 18
    assert not key(reported) & (key(train) | key(tune)) and not key(train) & key(tune)
    assert sorted(np.bincount(tune.labels).tolist()) == [3, 3, 3]
    cfg = apply_mapping(ImageClassificationConfig(), {"data": str(images), "val_size": 9, "split_seed": 1,
                                                      "exclude_split_seed": 0}, "test")
    assert cfg.exclude_split_seed == 0
    meta = {"data": str(images), "val_size": 9, "split_seed": 1, "exclude_split_seed": 0}
    encoder = SimpleNamespace()
    check_encoder_fits(encoder, meta, "enc", 32, cfg)  # validating on the same tuning split
    check_encoder_fits(encoder, meta, "enc", 32, ImageClassificationConfig(data=str(images), val_size=9,
                                                                           split_seed=0))  # on the reported one
    assert "may have seen" not in capsys.readouterr().err
    check_encoder_fits(encoder, meta, "enc", 32, ImageClassificationConfig(data=str(images), val_size=9,
                                                                           split_seed=1))  # seed 1 of all
    assert "may have seen validation images" in capsys.readouterr().err


def test_bad_image_inputs_are_one_line_errors(images, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(images, bad)
    (bad / "dog" / "broken.png").write_bytes(b"not a png")
    ft = ["finetune", "--task", "image-classification", "--out", tmp_path / "o", "--max-steps", "1",
          "--set", "val_size=9"]
    cli_error(capsys, "broken.png", *ft, "--data", bad)
    empty = tmp_path / "empty"
    shutil.copytree(images, empty)
    shutil.rmtree(empty / "cat")
    (empty / "cat").mkdir()
    cli_error(capsys, "cat", *ft, "--data", empty)
    cli_error(capsys, "'horse'", *ft, "--data", images, "--classes", "cat,horse")
    cli_error(capsys, "needs --data", "finetune", "--task", "image-classification", "--out", tmp_path / "o")
    cli_error(capsys, "no such directory", *ft, "--data", images, "--init", tmp_path / "nowhere")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("objective: mae\n")
    cli_error(capsys, "a run folder without a saved encoder", *ft, "--data", images, "--init", unfinished)
    cli_error(capsys, "mae needs a vision transformer", "pretrain", "--data", images, "--out", tmp_path / "p",
              "--model", "conv-tiny", "--set", "val_size=9")
    cli_error(capsys, "not a pretraining objective", "pretrain", "--data", images, "--out", tmp_path / "p2",
              "--objective", "sequence-classification")
    cli_error(capsys, "objective 'mae' has no option 'ratio'", "pretrain", "--data", images, "--out",
              tmp_path / "p3", "--set", "mae.ratio=0.5")
    cli_error(capsys, "radreg.data", "pretrain", "--data", images, "--out", tmp_path / "p4", "--regularizer",
              "radreg", "--set", f"radreg.data={tmp_path / 'no-such-images'}")
    assert not (tmp_path / "o" / "summary.json").exists()
    assert not (tmp_path / "p4" / "config.yaml").exists()  # refused before OUT got anything


def test_python_api(images, tmp_path):
    import gentune

    s = gentune.pretrain(objective="mae", data=str(images), out=str(tmp_path / "p"), model="vit-micro-p4",
                         max_steps=2, batch_size=8, val_size=9, objective_options={"mae": {"mask_ratio": 0.5}})
    assert s["objective"] == "mae" and s["train_steps"] == 2
    meta = json.loads((tmp_path / "p" / "encoder" / "gentune.json").read_text())
    assert meta["objective_options"] == {"mask_ratio": 0.5}
    s = gentune.finetune(task="image-classification", data=str(images), init=str(tmp_path / "p" / "encoder"),
                         out=str(tmp_path / "f"), max_steps=2, batch_size=8, val_size=9, head="bn-linear")
    got = gentune.evaluate(str(tmp_path / "f" / "best"), "image-classification", str(images))
    assert got["examples"] == 48 and s["train_steps"] == 2
    # evaluate's accuracy and loss are the classifier's on every image, recomputed here by hand
    from gentune.data.images import load_images, normalize
    from gentune.models.checkpoint import load_image_classifier

    model, meta = load_image_classifier(tmp_path / "f" / "best")
    ds = load_images(images)
    with torch.no_grad():
        logits = model(normalize(torch.from_numpy(ds.images), meta["mean"], meta["std"])).double()
    labels = torch.from_numpy(ds.labels)
    assert got["accuracy"] == pytest.approx((logits.argmax(-1) == labels).double().mean().item())
    assert got["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)


def test_review_cases(images, tmp_path, capsys):
    """Image sizes other than 32, no validation split, and the errors that must come before any work."""
    # 16x16 images (resized): a ViT is built for them; a 32-pixel encoder is refused for them
    pre = tmp_path / "p16"
    cli_ok(capsys, "pretrain", "--data", images, "--out", pre, "--max-steps", "2", *PRE, "--set", "image_size=16")
    assert json.loads((pre / "encoder" / "gentune.json").read_text())["config"]["image_size"] == 16
    cli_error(capsys, "pretrained on 16x16 images", "finetune", "--task", "image-classification", "--data", images,
              "--init", pre / "encoder", "--out", tmp_path / "f32", "--max-steps", "1", "--set", "val_size=9")
    # no validation data: the final model is saved as best/
    out = cli_ok(capsys, "finetune", "--task", "image-classification", "--data", images, "--init", pre / "encoder",
                 "--out", tmp_path / "noval", "--max-steps", "2", "--batch-size", "8", "--set", "val_size=0",
                 "--set", "image_size=16")
    assert "no validation data" in out
    assert (tmp_path / "noval" / "best" / "model.safetensors").is_file()
    # options and regularizers that cannot work are one-line errors
    ft = ["finetune", "--task", "image-classification", "--data", images, "--out", tmp_path / "x", "--max-steps", "1",
          "--set", "val_size=9", "--model", "vit-micro-p4"]
    cli_error(capsys, "--train-size applies to text-classification only", *ft, "--train-size", "10")
    cli_error(capsys, "--classes applies to image-classification", "finetune", "--task", "rte", "--out",
              tmp_path / "y", "--classes", "a,b")
    cli_error(capsys, "has no get_input_embeddings()", *ft, "--regularizer", "smart-adv")
    pt = ["pretrain", "--data", images, "--out", tmp_path / "z", "--max-steps", "1", *PRE]
    cli_error(capsys, "mask_ratio must be in (0, 1)", *pt, "--set", "mae.mask_ratio=0")
    cli_error(capsys, "decoder_dim (128) must be a multiple", *pt, "--set", "mae.decoder_heads=3")
    cli_error(capsys, "the model's outputs have no logits", *pt, "--regularizer", "bregman")


def test_from_scratch_normalises_with_the_whole_training_part(images, tmp_path):
    """A from-scratch arm normalises pixels as pretraining does (statistics of every training image of data, all
    classes), not with the few labelled images of its classes, so both arms of a comparison see alike inputs."""
    import gentune
    from gentune.data.splits import held_out_split, pixel_stats, select_classes

    gentune.finetune(task="image-classification", data=str(images), model="vit-micro-p4", out=str(tmp_path / "ft"),
                     classes=["cat", "dog"], labels_per_class=4, max_steps=1, batch_size=8, val_size=9,
                     augment=False)
    meta = json.loads((tmp_path / "ft" / "best" / "gentune.json").read_text())
    train, _ = held_out_split(str(images), None, 9, 0)
    assert meta["mean"] == pytest.approx(pixel_stats(train.images)[0])
    assert meta["std"] == pytest.approx(pixel_stats(train.images)[1])
    subset = select_classes(train, ["cat", "dog"])
    assert max(abs(a - b) for a, b in zip(meta["mean"], pixel_stats(subset.images)[0])) > 0.05


def test_mean_pooling_for_vit_fine_tuning(images, tmp_path, capsys):
    """pool=mean (MAE's fine-tuning pooling) reaches the classifier, is saved with it and restored by evaluate;
    on a conv encoder it is a one-line error."""
    import gentune
    from gentune.models.checkpoint import load_image_classifier

    s = gentune.finetune(task="image-classification", data=str(images), model="vit-micro-p4", out=str(tmp_path / "ft"),
                         max_steps=2, batch_size=8, val_size=9, pool="mean")
    model, meta = load_image_classifier(str(tmp_path / "ft" / "best"))
    assert model.encoder.pool == "mean" and meta["config"]["pool"] == "mean"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.encoder.forward_features(x), model.encoder.forward_encoder(x)[:, 1:].mean(1))
    cli_ok(capsys, "evaluate", "--checkpoint", tmp_path / "ft" / "best", "--task", "image-classification", "--data",
           images)
    with pytest.raises(gentune.GentuneError, match="pooling applies to ViT encoders only"):
        gentune.finetune(task="image-classification", data=str(images), model="conv-tiny", out=str(tmp_path / "c"),
                         max_steps=1, batch_size=8, val_size=9, pool="mean")
    assert s["train_steps"] == 2


def test_mean_pooling_in_pretraining_is_the_saved_encoders_and_radregs(images, tmp_path, capsys, monkeypatch):
    """pretrain pool=mean: the saved encoder pools by the mean of its patch tokens (fine-tuning's default then),
    and RadReg's features in that run are the mean-pooled ones; on a conv encoder a one-line error."""
    import gentune
    from gentune.models.checkpoint import load_encoder
    from gentune.regularizers.radreg import RadReg

    pools, original = [], RadReg._features

    def features(self, encoder, x):
        pools.append(encoder.pool)
        return original(self, encoder, x)

    monkeypatch.setattr(RadReg, "_features", features)
    gentune.pretrain(objective="mae", data=str(images), model="vit-micro-p4", out=str(tmp_path / "pre"),
                     max_steps=1, batch_size=8, val_size=9, pool="mean", regularizer=["radreg"],
                     regularizer_options={"radreg": {"data": str(images), "batch_size": 4}})
    assert pools == ["mean"]
    encoder, _ = load_encoder(tmp_path / "pre" / "encoder")
    assert encoder.pool == "mean"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(encoder.forward_features(x), encoder.forward_encoder(x)[:, 1:].mean(1))
    cli_error(capsys, "pooling applies to ViT encoders only", "pretrain", "--objective", "context-encoder", "--data",
              images, "--out", tmp_path / "ce", "--model", "conv-tiny", "--set", "val_size=9", "--set", "pool=mean")
