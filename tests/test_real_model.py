"""One short run of the real pretrained MiniLM (the default model) on real SST-2 data."""

import json

import pytest

import gentune

from conftest import run_cli


@pytest.mark.slow
def test_minilm_learns_sst2_and_evaluates(glue, tmp_path):
    out = tmp_path / "minilm"
    s = gentune.finetune(task="sst2", out=str(out), data_dir=str(glue), train_size=320, batch_size=16, lr=1e-4,
                         epochs=1, max_length=64, seed=13)
    assert s["model"] == "all-MiniLM-L6-v2" and s["train_steps"] == 20
    # 20 steps of a pretrained sentence encoder on real sentiment data are far above chance on 692 dev sentences
    assert s["best_dev"]["accuracy"] > 0.7
    r = run_cli("evaluate", "--checkpoint", out / "best", "--task", "sst2",
                "--data", glue / "k-shot/SST-2/16-42/dev.tsv")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["examples"] == 32 and m["accuracy"] > 0.6
