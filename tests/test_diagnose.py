"""`gentune diagnose` on tiny real checkpoints: an image encoder and its fine-tuned classifier (with the gap
recomputed from the run), a text model; the JSON, the HTML report, the feature cache and bad inputs."""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import cli, cli_error, cli_ok


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("diag")
    rng = np.random.default_rng(0)
    for name, shift in (("down", 0), ("pre", 60)):
        for ci, c in enumerate(["cat", "dog"]):
            (root / name / c).mkdir(parents=True)
            for i in range(12):
                base = np.full((16, 16, 3), 90 + shift)
                base[..., ci] += 60
                img = (base + rng.normal(0, 25, (16, 16, 3))).clip(0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / name / c / f"{i}.png")
    return root


def test_image_checkpoints_json_report_gap_and_cache(folders, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GENTUNE_CACHE", str(tmp_path / "cache"))
    pre, ft = tmp_path / "pre", tmp_path / "ft"
    cli_ok(capsys, "pretrain", "--data", folders / "pre", "--out", pre, "--model", "vit-micro-p4", "--max-steps",
           "2", "--batch-size", "8", "--set", "val_size=4")
    cli_ok(capsys, "finetune", "--task", "image-classification", "--data", folders / "down", "--init", pre / "encoder",
           "--out", ft, "--max-steps", "3", "--batch-size", "8", "--set", "val_size=6")
    out = tmp_path / "diag"
    # --config and --set like the other commands: n_sigma from a YAML file, overridden by --set
    (tmp_path / "d.yaml").write_text("n_sigma: 20\nmax_examples: 100\n")
    args = ["diagnose", "--checkpoint", pre / "encoder", "--checkpoint", ft / "best", "--task",
            "image-classification", "--data", folders / "down", "--pretrain-data", folders / "pre", "--out", out,
            "--config", tmp_path / "d.yaml", "--set", "n_sigma=50"]
    cli_ok(capsys, *args)
    res = json.loads((out / "diagnostics.json").read_text())
    assert res["n"] == 24 and [c["checkpoint"] for c in res["checkpoints"]] == [str(pre / "encoder"), str(ft / "best")]
    for row in res["checkpoints"]:
        lin = row["complexity"]["linear"]
        assert lin["n_sigma"] == 50
        assert 0 < lin["estimate"] <= lin["bound"] and lin["ci_low"] <= lin["estimate"] <= lin["ci_high"]
        assert row["complexity"]["curve"][-1]["n"] == 24 and row["heterogeneity"]["mmd2"] > 0
        assert 0 < row["spread"]["spread"] <= 1 and 1 <= row["spread"]["effective_rank"] <= row["dim"]
        assert row["spread"]["n"] == 24
    enc, clf = res["checkpoints"]
    assert enc["gap"] is None  # an encoder has no fine-tuning run to recompute
    summary = json.loads((ft / "summary.json").read_text())
    assert clf["gap"]["heldout"]["accuracy"] == pytest.approx(summary["final_dev"]["accuracy"])
    assert clf["gap"]["train"]["loss"] > 0 and "loss_gap" in clf["gap"]
    evals = sum('"eval"' in l for l in (ft / "metrics.jsonl").read_text().splitlines())
    assert clf["gap"]["evaluations"] == evals >= 1 and clf["gap"]["selected_on_heldout"] == (evals > 1)
    page = (out / "report.html").read_text()
    assert page.startswith("<!doctype html>") and page.count("data:image/png;base64,") == 3
    # features are cached: a second run reads them instead of recomputing
    cached = sorted((out / "features").glob("*.npz"))
    assert len(cached) == 4
    stamp = [p.stat().st_mtime_ns for p in cached]
    cli_ok(capsys, *args, "--no-mlp")  # (the slow MLP estimate is not what this checks)
    assert [p.stat().st_mtime_ns for p in cached] == stamp


def test_text_checkpoint_and_errors(glue, tiny_model, tmp_path, capsys):
    data = glue / "k-shot/SST-2/16-13/train.tsv"
    test_like = tmp_path / "test.tsv"  # GLUE's test layout: an index, the sentence, no label column
    rows = [l.split("\t")[0] for l in data.read_text().splitlines()[1:]]
    test_like.write_text("index\tsentence\n" + "".join(f"{i}\t{t}\n" for i, t in enumerate(rows)))
    out = tmp_path / "t"
    other = tmp_path / "other.txt"  # plain text, one sentence a line, unlabelled: the "pretraining" side
    other.write_text("\n".join(f"sentence number {i} about the stock market" for i in range(20)) + "\n")
    code, _, err = cli(capsys, "diagnose", "--checkpoint", tiny_model, "--task", "sst2", "--data", test_like,
                       "--out", out, "--n-sigma", "30", "--no-mlp", "--pretrain-data", other)
    assert code == 0, err[-2000:]
    assert "read " + str(test_like) + " without labels" in err
    res = json.loads((out / "diagnostics.json").read_text())
    row = res["checkpoints"][0]
    assert row["kind"] == "text" and row["dim"] == 32 and "mlp" not in row["complexity"]
    assert res["n"] == len(rows)
    assert row["heterogeneity"]["domain_accuracy"] > 0.5

    cli_error(capsys, "a text checkpoint cannot be diagnosed on task 'image-classification'", "diagnose",
              "--checkpoint", tiny_model, "--task", "image-classification", "--data", data, "--out", out)
    cli_error(capsys, "nothing", "diagnose", "--checkpoint", tmp_path / "nothing", "--task", "sst2", "--data", data,
              "--out", out)
    cli_error(capsys, "no.tsv: no such file", "diagnose", "--checkpoint", tiny_model, "--task", "sst2", "--data",
              tmp_path / "no.tsv", "--out", out)
    cli_error(capsys, "max_examples and n_sigma must be at least 2", "diagnose", "--checkpoint", tiny_model,
              "--task", "sst2", "--data", data, "--out", out, "--max-examples", "0")
    cli_error(capsys, "--set n_sigma: expected an integer, got 'many'", "diagnose", "--checkpoint", tiny_model,
              "--task", "sst2", "--data", data, "--out", out, "--set", "n_sigma=many")
    cli_error(capsys, "diagnose: data is required", "diagnose", "--checkpoint", tiny_model, "--task", "sst2",
              "--out", out)
    bad = tmp_path / "badckpt"
    bad.mkdir()
    (bad / "gentune.json").write_text("{oops")
    cli_error(capsys, "gentune.json: malformed JSON", "diagnose", "--checkpoint", bad, "--task", "sst2", "--data",
              data, "--out", out)


def test_text_pooling_is_the_cls_state_or_the_masked_mean(glue, tiny_model, tmp_path, capsys):
    """--set pooling=mean|cls: the features (cached apart) are each sentence's mean hidden state or its [CLS] state,
    against transformers' AutoModel run on every sentence alone; one-line errors for a bad value and for an image
    checkpoint."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from gentune.data import get_task
    from gentune.data.glue import read_file
    from gentune.diagnose import extract, load_representation

    data = glue / "k-shot/SST-2/16-13/train.tsv"
    texts = read_file(get_task("sst2"), data)["text_a"]  # all 32: diagnose draws a seeded 6 of them
    model, tok = AutoModel.from_pretrained(tiny_model).eval(), AutoTokenizer.from_pretrained(tiny_model)
    with torch.no_grad():
        states = [model(**tok(t, return_tensors="pt")).last_hidden_state[0] for t in texts]
    cache = tmp_path / "cache"
    got = {}
    for pooling in ("mean", "cls"):
        rep = load_representation(tiny_model, pooling)
        feats, _ = extract(rep, "sst2", str(data), cache, 6, seed=0)
        got[pooling] = feats
    assert len(list(cache.glob("*.npz"))) == 2
    expected = {"mean": np.stack([s.mean(0).numpy() for s in states]), "cls": np.stack([s[0].numpy() for s in states])}
    for pooling, feats in got.items():  # the rows come in a seeded order: match each to its sentence
        for row in feats:
            assert np.abs(expected[pooling] - row).max(1).min() < 1e-5, pooling
    assert len(got["mean"]) == 6 and not np.allclose(got["mean"], got["cls"])
    out = tmp_path / "d"
    cli_ok(capsys, "diagnose", "--checkpoint", tiny_model, "--task", "sst2", "--data", data, "--out", out,
           "--n-sigma", "10", "--no-mlp", "--set", "pooling=mean")
    assert json.loads((out / "diagnostics.json").read_text())["checkpoints"][0]["pooling"] == "mean"
    cli_error(capsys, "pooling must be one of", "diagnose", "--checkpoint", tiny_model, "--task", "sst2", "--data",
              data, "--out", out, "--set", "pooling=max")
    image = tmp_path / "image-encoder"
    image.mkdir()
    (image / "gentune.json").write_text(json.dumps({"kind": "image-encoder"}))
    cli_error(capsys, "pooling applies to text checkpoints", "diagnose", "--checkpoint", image, "--task",
              "image-classification", "--data", data, "--out", out, "--set", "pooling=mean")


def test_feature_cache_key_follows_every_file_of_the_data(folders, tmp_path):
    """The cache is keyed on the checkpoint's and the data's files (path, size, mtime of each): an untouched
    folder reads the cache, changing one file (the last) recomputes."""
    import shutil

    from gentune.diagnose import Representation, extract

    data = tmp_path / "down"
    shutil.copytree(folders / "down", data)
    calls = []

    def fn(x):
        calls.append(len(x))
        return x.flatten(1)[:, :4]

    rep = Representation("features-of-pixels", "image", fn, {"mean": [0.5] * 3, "std": [0.25] * 3})
    first, labels = extract(rep, "image-classification", str(data), tmp_path / "cache")
    assert first.shape == (24, 4) and sorted(set(labels.tolist())) == [0, 1] and len(calls) == 1
    again, _ = extract(rep, "image-classification", str(data), tmp_path / "cache")
    assert len(calls) == 1 and np.array_equal(again, first)
    last = sorted(p for p in data.rglob("*") if p.is_file())[-1]
    last.write_bytes((folders / "down" / "cat" / "0.png").read_bytes())
    changed, _ = extract(rep, "image-classification", str(data), tmp_path / "cache")
    assert len(calls) == 2 and not np.array_equal(changed, first)
