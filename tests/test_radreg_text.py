"""RadReg on text (masked-LM pretraining with ``--regularizer radreg --set radreg.data=FILE``): the text stream
cycles its pool in seeded permutations and pads like the tokenizer, the representation is the masked mean of the
encoder's hidden states (against each sentence encoded alone by ``transformers``), the term reaches the encoder,
and a run killed after a checkpoint and rerun matches the uninterrupted one."""

from __future__ import annotations

import json

import pytest
import torch

from gentune.data.streams import TextStream

WORDS = "the a cat dog sat ran on under mat log red big small quick slow film plot dull warm".split()


def _lines(n: int, seed: int, short: int = 3, long: int = 14) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(short, long + 1, (1,), generator=g))
        out.append(" ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (k,), generator=g)))
    return out


def test_text_stream_cycles_the_pool_in_seeded_permutations_and_pads():
    pool = [{"input_ids": list(range(1, 2 + i)), "token_type_ids": [0] * (1 + i)} for i in range(5)]
    stream = TextStream(pool, 3, torch.Generator().manual_seed(4), pad_id=9)
    drawn = [next(stream) for _ in range(5)]  # 15 draws: three passes of 5, batches crossing their ends

    order = torch.Generator().manual_seed(4)  # the documented cycling, written out: a permutation per pass
    expected = torch.cat([torch.randperm(5, generator=order) for _ in range(3)])
    assert torch.equal(torch.cat([idx for _, idx in drawn]), expected)
    for batch, idx in drawn:
        width = max(len(pool[i]["input_ids"]) for i in idx.tolist())
        assert set(batch) == {"input_ids", "attention_mask", "token_type_ids"}
        for row, i in enumerate(idx.tolist()):
            ids, n = pool[i]["input_ids"], len(pool[i]["input_ids"])
            assert batch["input_ids"][row].tolist() == ids + [9] * (width - n)
            assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
            assert batch["token_type_ids"][row].tolist() == [0] * width

    # the position and the generator's state resume it exactly
    g = torch.Generator().manual_seed(1)
    a = TextStream(pool, 2, g)
    next(a)
    state, gstate = a.state_dict(), g.get_state()
    after = [next(a)[1].tolist() for _ in range(4)]
    g2 = torch.Generator()
    g2.set_state(gstate)
    b = TextStream(pool, 2, g2)
    b.load_state_dict(state)
    assert [next(b)[1].tolist() for _ in range(4)] == after

    # a subset keeps those examples in their order
    a.subset(torch.tensor([4, 1]))
    assert len(a) == 2 and a.pool == [pool[4], pool[1]]
    with pytest.raises(ValueError, match="empty"):
        TextStream([], 2, g)


def test_text_features_are_the_masked_mean_of_each_sentences_hidden_states(tiny_model):
    """A padded batch from the task's own stream, represented by text_features, against every sentence encoded
    alone (no padding) by transformers' AutoModel loaded from the same folder, averaged over all its tokens."""
    from transformers import AutoModel

    from gentune.models.hf import load_masked_lm, load_tokenizer
    from gentune.tasks.text_pretraining import TextPretrainingConfig, text_features, text_stream

    tok = load_tokenizer(tiny_model)
    model, _ = load_masked_lm(tiny_model)
    plain = AutoModel.from_pretrained(tiny_model, add_pooling_layer=False).eval()
    model.eval()
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "down.txt"
        texts = _lines(7, 0)
        path.write_text("\n".join(texts) + "\n")
        cfg = TextPretrainingConfig(data=str(path), model=tiny_model, max_length=32)
        stream = text_stream(cfg, tok)(str(path), 5, torch.Generator().manual_seed(0), None, None, None)
        batch, idx = next(stream)
    assert batch["attention_mask"].min() == 0  # the lengths differ: there is padding to leave out
    with torch.no_grad():
        h = text_features(model, batch)
        alone = torch.stack([plain(**tok(texts[i], return_tensors="pt")).last_hidden_state[0].mean(0)
                             for i in idx.tolist()])
    assert h.shape == (5, 32)
    torch.testing.assert_close(h, alone, atol=1e-5, rtol=1e-5)


def _cfg(tiny_model, tmp_path, out, weight: float = 1.0, **kw):
    from gentune.config import apply_mapping
    from gentune.tasks.text_pretraining import TextPretrainingConfig

    (tmp_path / "text.txt").write_text("\n".join(_lines(40, 1)) + "\n")
    (tmp_path / "down.txt").write_text("\n".join(_lines(12, 2)) + "\n")
    options = {"data": str(tmp_path / "down.txt"), "weight": weight, "batch_size": 4, "head": "mlp",
               "estimator": "unit", "ascent_steps": 3, "restarts": 2}
    return apply_mapping(TextPretrainingConfig(), dict(
        data=str(tmp_path / "text.txt"), out=str(out), model=tiny_model, val_size=4, batch_size=4, max_length=32,
        lr=1e-3, regularizer=["radreg"], regularizer_options={"radreg": options}, **kw), "test")


def _train_logs(out) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["type"] == "train"]


def test_radreg_on_masked_lm_pretraining_reaches_the_encoder_and_resumes_exactly(tiny_model, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from gentune.tasks.text_pretraining import TASK
    from gentune.train import run
    from gentune.train.run import _RunFolder

    monkeypatch.setenv("GENTUNE_CACHE", str(tmp_path / "cache"))
    full, off = tmp_path / "full", tmp_path / "off"
    run(_cfg(tiny_model, tmp_path, full, max_steps=4, save_steps=1), TASK.build)
    run(_cfg(tiny_model, tmp_path, off, weight=0.0, max_steps=4, save_steps=1), TASK.build)
    logs = _train_logs(full)
    assert len(logs) == 4
    for r in logs:
        assert r["radreg"] == pytest.approx(r["radreg_complexity"], rel=1e-5) and r["radreg_complexity"] > 0
        assert r["loss"] == pytest.approx(r["task"] + r["radreg"], rel=1e-5)
    # the same masks and batches: only the penalty's gradient differs, and it moves the encoder
    assert _train_logs(off)[0]["task"] == pytest.approx(logs[0]["task"], rel=1e-6)
    a, b = (load_file(d / "model" / "model.safetensors") for d in (full, off))
    encoder = [k for k in a if "encoder.layer.0.attention" in k]
    assert encoder and any(not torch.allclose(a[k], b[k]) for k in encoder)

    part = tmp_path / "part"
    real = _RunFolder.checkpoint

    def killed(self, state, save):
        real(self, state, save)
        if state.step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(_RunFolder, "checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(tiny_model, tmp_path, part, max_steps=4, save_steps=1), TASK.build)
    monkeypatch.setattr(_RunFolder, "checkpoint", real)
    run(_cfg(tiny_model, tmp_path, part, max_steps=4, save_steps=1), TASK.build)
    resumed = _train_logs(part)
    for key in ("loss", "radreg_complexity"):
        assert [r[key] for r in resumed] == pytest.approx([r[key] for r in logs], rel=1e-5), key
    c = load_file(part / "model" / "model.safetensors")
    assert all(torch.allclose(a[k], c[k], atol=1e-6) for k in a)


def test_radreg_text_errors(tiny_model, tmp_path, capsys, glue):
    from conftest import cli_error

    (tmp_path / "text.txt").write_text("\n".join(_lines(20, 3)) + "\n")
    (tmp_path / "empty.txt").write_text("\n\n")
    base = ["pretrain", "--objective", "mlm", "--model", tiny_model, "--data", tmp_path / "text.txt",
            "--max-steps", "1", "--regularizer", "radreg"]
    cli_error(capsys, "no such file", *base, "--out", tmp_path / "o1", "--set", f"radreg.data={tmp_path / 'nope.txt'}")
    cli_error(capsys, "empty.txt", *base, "--out", tmp_path / "o2", "--set", f"radreg.data={tmp_path / 'empty.txt'}")
    # text fine-tuning: no representation or stream for it
    cli_error(capsys, "masked-LM pretraining", "finetune", "--task", "sst2", "--model", tiny_model,
              "--out", tmp_path / "o3", "--max-steps", "1", "--regularizer", "radreg", "--set",
              f"radreg.data={tmp_path / 'text.txt'}")
