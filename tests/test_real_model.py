"""One short run of the real pretrained MiniLM (the default model) on real SST-2 data."""

import json

import pytest

import gentune

from conftest import cli_ok


@pytest.mark.slow
def test_minilm_learns_sst2_and_evaluates(glue, tmp_path, capsys):
    out = tmp_path / "minilm"
    s = gentune.finetune(task="sst2", out=str(out), data_dir=str(glue), train_size=192, batch_size=16, lr=1e-4,
                         epochs=2, max_length=64, seed=13, eval_every_epochs=0)
    assert s["model"] == "all-MiniLM-L6-v2" and s["train_steps"] == 24
    # 24 steps of the pretrained encoder on real sentiment data: clearly above the 53% majority class of the 692
    # dev sentences (measured: 0.643; the standard error of an accuracy on 692 sentences is about 0.02), and the
    # training loss falls
    assert s["final_dev"]["accuracy"] > 0.60
    rec = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rec if r["type"] == "train"]
    assert sum(losses[-8:]) < sum(losses[:8])
    m = json.loads(cli_ok(capsys, "evaluate", "--checkpoint", out / "best", "--task", "sst2",
                          "--data", glue / "k-shot/SST-2/16-42/dev.tsv"))
    assert m["examples"] == 32 and m["accuracy"] > 0.6
