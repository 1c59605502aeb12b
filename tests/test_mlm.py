"""Masked-LM pretraining: the masking rates (15%, then 80/10/10), whole words, the loss over masked positions only
(against a literal per-position sum), the tied head of a checkpoint without one, the text readers, and the command
on a user's text file (the run's saved model, reloaded by transformers alone, scores what the run reported)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from gentune.objectives.mlm import IGNORE, MaskedLM, MaskedLMCollator, masked_lm_loss


@pytest.fixture(scope="module")
def tok():
    from gentune.models.hf import load_tokenizer

    return load_tokenizer("all-MiniLM-L6-v2")


def _batch(tok, rows: int = 64, length: int = 120, seed: int = 0) -> dict:
    """Random ordinary tokens framed by [CLS] ... [SEP] and right padding of varied length."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2000, tok.vocab_size, (rows, length), generator=g)
    special = torch.zeros_like(ids)
    lengths = torch.randint(length // 2, length + 1, (rows,), generator=g)
    for i, n in enumerate(lengths.tolist()):
        ids[i, 0], ids[i, n - 1] = tok.cls_token_id, tok.sep_token_id
        ids[i, n:] = tok.pad_token_id
        special[i, 0] = special[i, n - 1:] = 1
    return {"input_ids": ids, "special_tokens_mask": special, "attention_mask": (ids != tok.pad_token_id).long()}


def _within(share: float, p: float, n: int, sigmas: float = 5.0) -> bool:
    return abs(share - p) <= sigmas * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("mask_prob,mask_replace,random_replace", [(0.15, 0.8, 0.1), (0.4, 0.5, 0.3)])
def test_masking_rates(tok, mask_prob, mask_replace, random_replace):
    batch = _batch(tok)
    objective = MaskedLM(mask_prob, mask_replace, random_replace, tokenizer=tok)
    torch.manual_seed(1)
    inputs, labels = objective.mask(batch)
    ids, special = batch["input_ids"], batch["special_tokens_mask"].bool()
    chosen = labels != IGNORE
    ordinary = int((~special).sum())
    assert not (chosen & special).any(), "a special or padding token was chosen"
    assert (labels[chosen] == ids[chosen]).all(), "the labels are the original tokens"
    assert (inputs[~chosen] == ids[~chosen]).all(), "an unchosen token was changed"
    n = int(chosen.sum())
    assert _within(n / ordinary, mask_prob, ordinary)
    as_mask = chosen & (inputs == tok.mask_token_id)
    kept = chosen & (inputs == ids)
    randomised = chosen & ~as_mask & ~kept
    assert _within(int(as_mask.sum()) / n, mask_replace, n)
    assert _within(int(randomised.sum()) / n, random_replace, n)
    assert _within(int(kept.sum()) / n, 1 - mask_replace - random_replace, n, sigmas=6.0)


def test_masking_follows_the_global_generator(tok):
    """Masks are drawn from torch's CPU generator, which the loop saves and restores: a resumed run masks alike."""
    batch = _batch(tok, rows=8)
    objective = MaskedLM(tokenizer=tok)
    torch.manual_seed(5)
    a = objective.mask(batch)
    torch.manual_seed(5)
    b = objective.mask(batch)
    c = objective.mask(batch)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(b[1], c[1])


def test_whole_word_masking_chooses_every_piece_of_a_word(tok):
    text = ["unbelievably gargantuan transmogrification of hippopotamuses " * 6] * 16
    enc = tok(text, return_special_tokens_mask=True, return_offsets_mapping=True)
    features = [{k: enc[k][i] for k in enc.keys()} for i in range(len(text))]
    batch = MaskedLMCollator(tok, whole_word=True)(features)
    objective = MaskedLM(mask_prob=0.3, whole_word=True, tokenizer=tok)
    torch.manual_seed(0)
    inputs, labels = objective.mask(batch)
    assert (inputs[labels != IGNORE] == tok.mask_token_id).all(), "whole words: every chosen piece is [MASK]"
    chosen = (labels != IGNORE).tolist()
    words = 0
    for row, offsets in zip(chosen, batch["offset_mapping"].tolist()):
        pieces: list[bool] = []
        previous_end = None
        for c, (start, end) in zip(row, offsets):
            if end == 0:  # special or padding
                continue
            if start != previous_end and pieces:  # a new word: the last one was all chosen or all not
                assert len(set(pieces)) == 1, "a word was partly chosen"
                words += 1
                pieces = []
            pieces.append(c)
            previous_end = end
        assert len(set(pieces)) == 1
    multi = sum(1 for t in tok.tokenize(text[0]) if t.startswith("##"))
    assert words > 0 and multi > 10, "the text must hold words of several pieces"
    assert 0 < sum(map(sum, chosen)) < sum(len(r) for r in chosen)


def test_loss_counts_masked_positions_only():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g, requires_grad=True)
    labels = torch.full((3, 7), IGNORE)
    labels[0, 2], labels[1, 0], labels[1, 6], labels[2, 3] = 4, 0, 10, 7
    loss, correct, count = masked_lm_loss(logits, labels)
    literal = []
    for i, j in [(0, 2), (1, 0), (1, 6), (2, 3)]:
        row = logits[i, j]
        literal.append(-(row[labels[i, j]] - torch.log(torch.exp(row).sum())))
    assert loss.item() == pytest.approx(torch.stack(literal).mean().item(), rel=1e-6)
    assert int(count) == 4
    assert int(correct) == sum(int(logits[i, j].argmax() == labels[i, j]) for i, j in [(0, 2), (1, 0), (1, 6), (2, 3)])
    loss.backward()
    grad_rows = logits.grad.abs().sum(-1) > 0
    assert grad_rows.tolist() == (labels != IGNORE).tolist(), "only masked positions get a gradient"
    empty, _, none = masked_lm_loss(logits, torch.full((3, 7), IGNORE))
    assert empty.item() == 0.0 and int(none) == 0


def test_options_are_checked():
    with pytest.raises(ValueError, match="mask_prob"):
        MaskedLM(mask_prob=0)
    with pytest.raises(ValueError, match="sum to at most 1"):
        MaskedLM(mask_replace=0.8, random_replace=0.3)
    with pytest.raises(RuntimeError, match="bind"):
        MaskedLM().mask({})


def test_a_checkpoint_without_a_head_gets_one_tied_to_the_embeddings(tiny_model):
    from gentune.models.hf import load_masked_lm

    model, head = load_masked_lm(tiny_model)  # a BertModel: no cls.* weights
    assert head == "tied"
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    again, _ = load_masked_lm(tiny_model)
    assert torch.equal(again.bert.embeddings.word_embeddings.weight, model.bert.embeddings.word_embeddings.weight)


def test_a_checkpoint_with_its_head_keeps_it():
    from conftest import SHARED, shared_data
    from gentune.models.hf import load_masked_lm

    path = shared_data(SHARED / "models" / "splade_tiny_bert_mlm", "the tiny masked LM")
    _, head = load_masked_lm(str(path))
    assert head == "pretrained"


def test_read_texts(tmp_path, glue):
    from gentune.data import get_task
    from gentune.data.tables import read_texts
    from gentune.errors import GentuneError

    (tmp_path / "a.txt").write_text("first line\n\n  second line  \n")
    (tmp_path / "b.csv").write_text("id,body,other\n1,hello there,x\n2,\"a, b\",y\n")
    (tmp_path / "c.jsonl").write_text('{"q": "why", "a": "because"}\n{"q": "how", "a": "so"}\n')
    ds = read_texts([str(tmp_path / "a.txt"), str(tmp_path / "b.csv")], text_column="body")
    assert ds["text_a"] == ["first line", "second line", "hello there", "a, b"]
    pairs = read_texts([str(tmp_path / "c.jsonl")], text_column="q", text_pair_column="a")
    assert pairs["text_a"] == ["why", "how"] and pairs["text_b"] == ["because", "so"]
    task = read_texts([str(glue / "k-shot" / "RTE" / "16-13" / "train.tsv")], task=get_task("rte"))
    assert len(task) == 32 and "label" not in task.column_names and all(task["text_b"])
    with pytest.raises(GentuneError, match="b.csv.*body2|body2.*b.csv"):
        read_texts([str(tmp_path / "b.csv")], text_column="body2")
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(GentuneError, match="empty.txt: no text"):
        read_texts([str(tmp_path / "empty.txt")])
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(GentuneError, match="latin.txt: not UTF-8"):
        read_texts([str(tmp_path / "latin.txt")])


def test_pretrain_mlm_on_a_text_file(tmp_path, tiny_model, capsys):
    """The command on a user's file: a model folder transformers loads by itself, whose masked-token loss on the
    held-out slice (fixed masks) is the run's final one; the tied head and the accuracy are logged."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from conftest import cli_ok
    from gentune.objectives.mlm import MaskedLM as Objective
    from gentune.tasks.text_pretraining import masked_lm_eval, tokenize_text
    from gentune.data.tables import read_texts

    words = "the a cat dog sat ran on under mat log red big small quick".split()
    g = torch.Generator().manual_seed(0)
    lines = [" ".join(words[int(i)] for i in torch.randint(len(words), (12,), generator=g)) for _ in range(60)]
    (tmp_path / "text.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    printed = cli_ok(capsys, "pretrain", "--objective", "mlm", "--model", tiny_model, "--data",
                     str(tmp_path / "text.txt"), "--out", str(out), "--max-steps", "6", "--batch-size", "8",
                     "--set", "eval_steps=3", "val_size=6", "max_length=32", "lr=1e-3")
    assert "tied" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["head"] == "tied" and summary["train_steps"] == 6
    train_logs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["masked_accuracy"] <= 1 for r in train_logs if r.get("type") == "train")
    model = AutoModelForMaskedLM.from_pretrained(out / "model")
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    assert json.loads((out / "model" / "gentune.json").read_text())["kind"] == "text-mlm"

    # the held-out slice the run used: the same seeded draw of 6 lines
    order = __import__("numpy").random.default_rng(0).permutation(60)
    held = read_texts([str(tmp_path / "text.txt")]).select(sorted(order[:6].tolist()))
    val = tokenize_text(held, tokenizer, 32, False)

    class One:  # a single process
        process_index = 0

        @staticmethod
        def gather_for_metrics(x):
            return x

    collate = MaskedLMCollator(tokenizer)
    loader = torch.utils.data.DataLoader(val, batch_size=64, collate_fn=collate)
    scored = masked_lm_eval(Objective(tokenizer=tokenizer))(model, loader, One())
    assert scored["loss"] == pytest.approx(summary["final_dev"]["loss"], rel=1e-4)
    assert scored["accuracy"] == pytest.approx(summary["final_dev"]["accuracy"], abs=1e-6)


def test_pretrain_mlm_bad_inputs(tmp_path, tiny_model, capsys):
    from conftest import cli_error

    cli_error(capsys, "no such file", "pretrain", "--objective", "mlm", "--model", tiny_model, "--data",
              str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o"))
    (tmp_path / "t.csv").write_text("body\nhello\n")
    cli_error(capsys, "text", "pretrain", "--objective", "mlm", "--model", tiny_model, "--data",
              str(tmp_path / "t.csv"), "--out", str(tmp_path / "o2"))
    (tmp_path / "t.txt").write_text("hello\n")
    cli_error(capsys, "mask_prob", "pretrain", "--objective", "mlm", "--model", tiny_model, "--data",
              str(tmp_path / "t.txt"), "--out", str(tmp_path / "o3"), "--set", "mlm.mask_prob=2")
    assert not (tmp_path / "o").exists() and not (tmp_path / "o3" / "model").exists()


def test_head_only_mlm_leaves_the_encoder(tmp_path, tiny_model, capsys):
    from safetensors.torch import load_file

    from conftest import cli_ok

    (tmp_path / "t.txt").write_text("\n".join(f"the cat sat on mat {i}" for i in range(40)) + "\n")
    out = tmp_path / "head"
    cli_ok(capsys, "pretrain", "--objective", "mlm", "--model", tiny_model, "--data", str(tmp_path / "t.txt"), "--out",
           str(out), "--max-steps", "3", "--batch-size", "8", "--lr", "1e-2", "--set", "train=head", "val_size=4")
    before = load_file(str(Path(tiny_model) / "model.safetensors"))
    after = load_file(str(out / "model" / "model.safetensors"))
    body = [k for k in after if k.startswith("bert.") and k.removeprefix("bert.") in before]
    assert len(body) > 10 and all(torch.equal(after[k], before[k.removeprefix("bert.")]) for k in body)
    assert json.loads((out / "model" / "gentune.json").read_text())["train"] == "head"
