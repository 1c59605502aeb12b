"""pooling=mean: a head on the masked mean of the token states (how sentence-transformers checkpoints were
trained): the pooled vector against a literal mean over the real tokens, padding that cannot leak in, a run with
SMART on it, and the saved folder reloading to the same scores."""

import json

import pytest
import torch

from conftest import cli_error, cli_ok


def test_masked_mean_is_the_mean_over_real_tokens_and_ignores_padding(tiny_model):
    from transformers import AutoModel

    from gentune.models.pooling import MeanPooledClassifier, masked_mean

    hidden = torch.randn(2, 5, 3, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    got = masked_mean(hidden, mask)
    assert torch.allclose(got[0], hidden[0, :3].mean(0)) and torch.allclose(got[1], hidden[1].mean(0))

    torch.manual_seed(0)
    model = MeanPooledClassifier(AutoModel.from_pretrained(tiny_model), 3).double().eval()
    ids = torch.tensor([[101, 2023, 2003, 102, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    a = model(input_ids=ids, attention_mask=mask).logits
    b = model(input_ids=torch.tensor([[101, 2023, 2003, 102, 999, 555]]), attention_mask=mask).logits
    c = model(input_ids=ids[:, :4], attention_mask=mask[:, :4]).logits
    torch.testing.assert_close(a, b)  # what sits under the padding does not matter
    torch.testing.assert_close(a, c)  # nor how much padding there is
    states = model.encoder(input_ids=ids[:, :4]).last_hidden_state
    torch.testing.assert_close(a, model.classifier(states.mean(1)))


def test_a_mean_pooled_run_with_smart_saves_and_reloads(glue, tiny_model, tmp_path, capsys):
    k = glue / "k-shot/SST-2/16-13"
    out = tmp_path / "mean"
    cli_ok(capsys, "finetune", "--task", "sst2", "--out", out, "--model", tiny_model, "--train", k / "train.tsv",
           "--dev", k / "dev.tsv", "--max-steps", "3", "--batch-size", "8", "--regularizer", "smart", "--set",
           "pooling=mean")
    best = out / "best"
    assert (best / "encoder/config.json").is_file() and (best / "head.safetensors").is_file()
    assert not (best / "config.json").exists()  # pipeline() cannot take it for a CLS-pooled classifier
    meta = json.loads((best / "gentune.json").read_text())
    assert meta["pooling"] == "mean"
    encoder_config = json.loads((best / "encoder/config.json").read_text())
    assert encoder_config["id2label"] == {"0": "negative", "1": "positive"}
    log = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["smart_adv"] >= 0 for r in log if r["type"] == "train")
    scored = json.loads(cli_ok(capsys, "evaluate", "--checkpoint", best, "--task", "sst2", "--data", k / "dev.tsv"))
    assert scored["accuracy"] == pytest.approx(meta["dev"]["accuracy"])
    assert scored["loss"] == pytest.approx(meta["dev"]["loss"], rel=1e-5)
    # diagnose reads what the head reads: the masked mean of the encoder's states
    cli_ok(capsys, "diagnose", "--checkpoint", best, "--task", "sst2", "--data", k / "dev.tsv", "--out",
           tmp_path / "d", "--n-sigma", "4", "--no-mlp")
    assert json.loads((tmp_path / "d/diagnostics.json").read_text())["checkpoints"][0]["dim"] == 32
    # --init from it: the encoder carries on; a task with 3 labels gets a new head
    cli_ok(capsys, "finetune", "--task", "mnli", "--init", out, "--train", glue / "k-shot/MNLI/16-13/train.tsv",
           "--dev", glue / "k-shot/MNLI/16-13/dev_matched.tsv", "--out", tmp_path / "mnli", "--max-steps", "1",
           "--batch-size", "8", "--set", "pooling=mean")
    assert json.loads((tmp_path / "mnli/best/gentune.json").read_text())["pooling"] == "mean"
    cli_error(capsys, "pooling must be cls or mean", "finetune", "--task", "sst2", "--out", tmp_path / "x",
              "--model", tiny_model, "--set", "pooling=max")
    cli_error(capsys, "pooling=mean with --peft is not supported", "finetune", "--task", "sst2", "--out",
              tmp_path / "x", "--model", tiny_model, "--set", "pooling=mean", "--peft", "lora")
