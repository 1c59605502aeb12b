"""The grouping search: REINFORCE moves the controller towards the best action of a toy reward; a search killed
after an episode continues from there and ends with the trace of an uninterrupted one; the CLI writes a recipe that
gentune finetune takes, and refuses bad input with one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gentune.cli import main
from gentune.config import apply_mapping
from gentune.search import Controller, MovingBaseline, RandomPolicy, SearchConfig, reinforce_loss, search
from gentune.search import grouping as grouping_module
from gentune.tasks.image_classification import ImageClassificationConfig, build


def test_reinforce_moves_the_policy_to_the_best_action():
    torch.manual_seed(0)
    policy = Controller(length=4, num_choices=3, hidden=16)
    opt = torch.optim.Adam(policy.parameters(), lr=0.05)
    baseline, gen = MovingBaseline(0.8), torch.Generator().manual_seed(0)
    start = policy.probabilities()
    torch.testing.assert_close(start, torch.full((4, 3), 1 / 3))  # uniform at first
    for _ in range(150):
        sample = policy.sample(gen)
        reward = sum(a == 2 for a in sample.actions) / 4 + 0.05 * torch.randn(1, generator=gen).item()
        opt.zero_grad()
        reinforce_loss(sample, reward, baseline.update(reward)).backward()
        opt.step()
    probs = policy.probabilities()
    assert policy.greedy() == [2, 2, 2, 2]
    assert (probs[:, 2] > 0.8).all(), probs
    # the update's direction: the log-probability of a sample rewarded above the baseline goes up, below it down
    for reward, up in ((1.0, True), (-1.0, False)):
        fresh = Controller(length=4, num_choices=3, hidden=16)
        before = float(fresh.evaluate([0, 1, 0, 1]).log_prob.detach())
        reinforce_loss(fresh.evaluate([0, 1, 0, 1]), reward, 0.0).backward()
        torch.optim.SGD(fresh.parameters(), lr=0.1).step()
        after = float(fresh.evaluate([0, 1, 0, 1]).log_prob.detach())
        assert (after > before) == up


def test_random_policy_and_baseline():
    draws = np.array([RandomPolicy(3, 4).sample(torch.Generator().manual_seed(i)).actions for i in range(400)])
    assert draws.shape == (400, 3) and set(np.unique(draws)) == {0, 1, 2, 3}
    assert abs(draws.mean() - 1.5) < 0.15
    b = MovingBaseline(0.5)
    assert b.update(1.0) == 1.0 and b.update(0.0) == 1.0 and b.value == 0.5


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """3 classes x 8 PNGs of 16x16, each class a dominant colour."""
    from PIL import Image

    root = tmp_path_factory.mktemp("search-images") / "train"
    rng = np.random.default_rng(0)
    for ci, c in enumerate(["a", "b", "c"]):
        (root / c).mkdir(parents=True)
        for i in range(8):
            base = np.zeros((16, 16, 3))
            base[..., ci] = 170
            Image.fromarray((base + rng.normal(0, 40, (16, 16, 3))).clip(0, 255).astype(np.uint8)).save(
                root / c / f"{i}.png")
    return root


def _cfg(images: Path, out: Path):
    return apply_mapping(ImageClassificationConfig(), dict(
        data=str(images), out=str(out), model="conv-tiny", labels_per_class=3, val_size=6, batch_size=9,
        eval_batch_size=8, lr=3e-3, epochs=2, eval_every_epochs=0, save_steps=0, augment=False,
        regularizer=["neuron-grouping"],
        regularizer_options={"neuron-grouping": {"layers": ["encoder.blocks.[23].*"]}}),
        "test")


def test_a_killed_search_continues_from_its_last_episode(images, tmp_path, monkeypatch):
    settings = SearchConfig(episodes=4, choices=[1.0, 0.5, 0.25], seed=3)
    full = search(_cfg(images, tmp_path / "full"), settings, build)
    assert full["episodes"] == 4 and len(full["layers"]) == 4  # blocks 2 and 3: two convs each
    trace = [json.loads(line) for line in (tmp_path / "full" / "trace.jsonl").read_text().splitlines()]
    assert [t["episode"] for t in trace] == [1, 2, 3, 4]

    calls = []
    real = grouping_module._Episodes.reward

    def dies_in_the_third(self, fractions):
        calls.append(fractions)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, fractions)

    monkeypatch.setattr(grouping_module._Episodes, "reward", dies_in_the_third)
    with pytest.raises(KeyboardInterrupt):
        search(_cfg(images, tmp_path / "killed"), settings, build)
    monkeypatch.setattr(grouping_module._Episodes, "reward", real)
    again = []
    monkeypatch.setattr(grouping_module._Episodes, "reward", lambda self, f: again.append(f) or real(self, f))
    resumed = search(_cfg(images, tmp_path / "killed"), settings, build)
    assert len(again) == 2  # episodes 3 and 4 only
    assert resumed["rewards"] == full["rewards"] and resumed["best"] == full["best"]
    done = [json.loads(line) for line in (tmp_path / "killed" / "trace.jsonl").read_text().splitlines()]
    assert [t["actions"] for t in done] == [t["actions"] for t in trace]
    # another search in the same folder is refused
    with pytest.raises(Exception, match="other settings"):
        search(_cfg(images, tmp_path / "killed"), SearchConfig(episodes=5, seed=3), build)


def test_cli_search_writes_a_recipe_finetune_takes(images, tmp_path, capsys):
    out = tmp_path / "s"
    argv = ["search", "--strategy", "random", "--episodes", "2", "--choices", "1,0.25",
            "--task", "image-classification", "--data", str(images), "--model", "conv-tiny", "--labels-per-class", "3",
            "--epochs", "1", "--batch-size", "9", "--out", str(out), "--regularizer", "neuron-grouping",
            "--set", "val_size=6", "eval_every_epochs=0", "augment=false",
            "neuron-grouping.layers=[encoder.blocks.3.*]"]
    assert main(argv) == 0
    assert "best validation accuracy" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["strategy"] == "random" and set(summary["best"]["fractions"]) <= {1.0, 0.25}
    assert (out / "trace.png").stat().st_size > 0
    run = tmp_path / "retrain"
    assert main(["finetune", "--config", str(out / "best.yaml"), "--out", str(run)]) == 0
    saved = (run / "config.yaml").read_text()
    assert "neuron-grouping" in saved and "fraction" in saved


@pytest.mark.parametrize("extra, message", [
    (["--choices", "0,1"], "choices must be"),
    (["--episodes", "0"], "episodes must be"),
    (["--set", "search.nope=1"], "nope"),
    (["--set", "val_size=0"], "validation"),
])
def test_cli_search_bad_input_is_one_line(images, tmp_path, capsys, extra, message):
    argv = ["search", "--task", "image-classification", "--data", str(images), "--model", "conv-tiny",
            "--out", str(tmp_path / "s"), "--regularizer", "neuron-grouping", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
