"""Prompt-based fine-tuning (LM-BFF): the label-word logits against a literal computation on a tiny BERT, the
two-pole regression and its KL loss, the packaged template of every task rendered on its real examples, truncation
that keeps the [MASK], the refusals, and the command (fine-tune, reload, zero-shot, diagnose, a regularizer on top)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gentune.data import TASKS, get_task
from gentune.data.prompts import Prompt, encode, label_word_ids, packaged, prompt_for, render
from gentune.errors import GentuneError


def _gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / 2.0 ** 0.5))


def _literal_label_logits(mlm, input_ids, attention_mask, mask_id, label_ids):
    """BERT's masked-LM head written out from its weights: dense, GELU, LayerNorm, then the decoder rows of the
    label words (the word embeddings, tied) plus their bias, at each row's [MASK]."""
    hidden = mlm.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    rows = []
    for b in range(len(input_ids)):
        m = int((input_ids[b] == mask_id).nonzero()[0, 0])
        h = hidden[b, m]
        t = mlm.cls.predictions.transform
        z = _gelu(t.dense.weight @ h + t.dense.bias)
        z = (z - z.mean()) / torch.sqrt(z.var(unbiased=False) + t.LayerNorm.eps) * t.LayerNorm.weight + \
            t.LayerNorm.bias
        words = mlm.bert.embeddings.word_embeddings.weight[label_ids]
        rows.append(words @ z + mlm.cls.predictions.bias[label_ids])
    return torch.stack(rows)


def test_label_word_logits_against_a_literal_computation(tiny_mlm, tok):
    from gentune.models.prompting import PromptClassifier
    from transformers import AutoModelForMaskedLM

    mlm = AutoModelForMaskedLM.from_pretrained(tiny_mlm).eval()
    prompt = packaged("sst5")
    ids = label_word_ids(tok, prompt.label_words)
    enc = encode(prompt, tok, ["a fine film", "dull , slow and far too long , with a plot nobody follows"], None, 64)
    batch = dict(tok.pad(enc, return_tensors="pt"))
    model = PromptClassifier(mlm, ids, tok.mask_token_id).eval()
    with torch.no_grad():
        out = model(**batch)
        literal = _literal_label_logits(mlm, batch["input_ids"], batch["attention_mask"], tok.mask_token_id, ids)
        full = mlm(**batch).logits  # the whole vocabulary at every position, the [MASK] row taken
        pos = (batch["input_ids"] == tok.mask_token_id).int().argmax(1)
        via_full = full[torch.arange(2), pos][:, ids]
    assert out.logits.shape == (2, 5)
    torch.testing.assert_close(out.logits, literal, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.logits, via_full, rtol=1e-5, atol=1e-5)
    assert ids == tok.convert_tokens_to_ids(["terrible", "bad", "okay", "good", "great"])


def test_regression_prediction_and_loss_are_lm_bffs(tiny_mlm, tok):
    from gentune.models.prompting import PromptClassifier
    from gentune.objectives.prompt import prompt_loss
    from transformers import AutoModelForMaskedLM

    prompt = packaged("stsb")
    assert prompt.bounds == (0.0, 5.0) and prompt.label_words == ("no", "yes")
    mlm = AutoModelForMaskedLM.from_pretrained(tiny_mlm).eval()
    model = PromptClassifier(mlm, label_word_ids(tok, prompt.label_words), tok.mask_token_id, prompt.bounds).eval()
    enc = encode(prompt, tok, ["A man plays a guitar.", "Two dogs run."], ["A man plays music.", "A cat sleeps."],
                 64)
    with torch.no_grad():
        out = model(**dict(tok.pad(enc, return_tensors="pt")))
    poles = out.label_logits
    p_yes = torch.exp(poles[:, 1]) / torch.exp(poles).sum(1)
    torch.testing.assert_close(out.logits.squeeze(-1), 5.0 * p_yes, rtol=1e-5, atol=1e-6)

    # the loss: KL([1 - t, t] || p) with t = y / 5, written out per example
    logits = torch.tensor([[0.3, -1.2], [2.0, 0.5], [-0.4, 0.4]])
    y = torch.tensor([1.0, 5.0, 0.0])
    expected = []
    for l, score in zip(logits, y):
        p = torch.softmax(l, 0)
        t = float(score) / 5.0
        q = [1 - t, t]
        expected.append(sum(qi * (torch.log(torch.tensor(qi)) - torch.log(pi)) for qi, pi in zip(q, p) if qi > 0))
    assert prompt_loss(logits, y, (0.0, 5.0)).item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
    labels = torch.tensor([2, 0, 1])
    three = torch.randn(3, 3)
    assert prompt_loss(three, labels, None).item() == pytest.approx(
        -torch.log_softmax(three, 1)[torch.arange(3), labels].mean().item(), rel=1e-6)


def _examples(glue, task: str, n: int = 8):
    from gentune.data.glue import read_file

    spec = get_task(task)
    folder = glue / "k-shot" / spec.dirname / "16-13"
    files = sorted(folder.glob("train.*"))
    return read_file(spec, files[0]).select(range(n))


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_tasks_template_renders_on_its_examples(task, tok, glue):
    """The packaged LM-BFF prompt of every task: one label word per label, each a single token; on real examples
    exactly one [MASK], the text fields in place, and the part-by-part encoding equal to tokenizing the rendered
    prompt whole (for WordPiece, where a space between parts changes nothing)."""
    spec = get_task(task)
    prompt = packaged(task)
    assert prompt is not None
    assert len(prompt.label_words) == (2 if spec.is_regression else spec.num_labels)
    label_word_ids(tok, prompt.label_words)
    assert prompt.pair == spec.text_pair
    if not (glue / "k-shot" / spec.dirname).is_dir():
        ds = None
        rows = [("The film was great.", "It was good." if spec.text_pair else None)]
    else:
        ds = _examples(glue, task)
        rows = list(zip(ds["text_a"], ds["text_b"]))
    enc = encode(prompt, tok, [a for a, _ in rows], [b for _, b in rows] if prompt.pair else None, 256)
    for (a, b), ids in zip(rows, enc["input_ids"]):
        assert ids.count(tok.mask_token_id) == 1
        text = render(prompt, a, b, mask=tok.mask_token)
        assert tok(text)["input_ids"] == ids, (text, tok.decode(ids))
    if task in ("sst2", "mr", "cr", "mpqa"):
        assert render(prompt, "A fine film.") == "A fine film. It was [MASK] ."
    if task in ("rte", "qnli", "mnli", "snli"):
        assert render(prompt, "The cat sat.", "Some cat sat.") == "The cat sat ? [MASK] , some cat sat."
    if task in ("mrpc", "qqp", "stsb"):
        assert render(prompt, "One thing.", "Another thing.") == "One thing. [MASK] , another thing."
    if task == "trec":
        assert render(prompt, "Who wrote it?") == "[MASK] : Who wrote it?"


def test_truncation_keeps_the_mask_and_cuts_the_longest_text(tok):
    prompt = packaged("rte")
    long_a, short_b = "word " * 300, "a short hypothesis."
    enc = encode(prompt, tok, [long_a], [short_b], 48)
    ids = enc["input_ids"][0]
    assert len(ids) == 48 and ids.count(tok.mask_token_id) == 1
    assert tok.decode(ids).endswith("? [MASK], a short hypothesis. [SEP]")  # the short text is whole
    both = encode(prompt, tok, ["left " * 100], ["right " * 100], 40)["input_ids"][0]
    text = tok.decode(both)
    assert len(both) == 40 and abs(text.count("left") - text.count("right")) <= 1  # cut evenly, longest first


def test_a_mask_in_the_text_becomes_unk(tok):
    enc = encode(packaged("sst2"), tok, ["I [MASK] liked it"], None, 32)
    ids = enc["input_ids"][0]
    assert ids.count(tok.mask_token_id) == 1 and tok.unk_token_id in ids


@pytest.mark.parametrize("template,label_words,needle", [
    ("{text_a} It was .", None, "exactly one {mask}"),
    ("{text_a} {mask} {mask}", None, "exactly one {mask}"),
    ("{sentence} {mask}", None, "unknown field {sentence}"),
    ("{text_a:upper} {mask}", None, "unknown filter"),
    ("{mask} .", None, "no {text_a}"),
    ("{text_a} {mask} {text_b}", None, "has one text"),
    (None, ["great"], "needs 2"),
    (None, ["great", "great"], "repeats"),
])
def test_bad_prompts_are_refused(template, label_words, needle):
    with pytest.raises(GentuneError, match=needle.replace("{", r"\{").replace("}", r"\}")):
        prompt_for(get_task("sst2"), template, label_words)


def test_a_multi_token_label_word_is_refused(tok):
    with pytest.raises(GentuneError, match="'hippopotamuses' is .* tokens.*single tokens"):
        label_word_ids(tok, ["great", "hippopotamuses"])


def test_own_data_needs_a_prompt():
    from gentune.data.text_tasks import TaskSpec, TsvLayout

    own = TaskSpec("text-classification", "", ("a", "b"), ("accuracy",), "accuracy", TsvLayout("text", None, "label"))
    with pytest.raises(GentuneError, match="no packaged prompt"):
        prompt_for(own)
    p = prompt_for(own, "Review: {text_a} Verdict: {mask}", ["bad", "good"])
    assert p == Prompt("Review: {text_a} Verdict: {mask}", ("bad", "good"), None)


def _files(glue, tmp_path):
    k = glue / "k-shot" / "SST-2" / "16-13"
    return k / "train.tsv", k / "dev.tsv"


def test_finetune_prompt_reload_and_score(tmp_path, tiny_mlm, glue, capsys):
    """A prompt run saves a masked LM that transformers loads alone; gentune evaluate (which applies the saved
    prompt) scores its dev file as the run did; diagnose reads the [MASK] state; SMART composes with it."""
    from transformers import AutoModelForMaskedLM

    from conftest import cli_ok

    train, dev = _files(glue, tmp_path)
    out = tmp_path / "run"
    cli_ok(capsys, "finetune", "--task", "sst2", "--objective", "prompt", "--model", tiny_mlm, "--train", str(train),
           "--dev", str(dev), "--out", str(out), "--max-steps", "4", "--batch-size", "8", "--lr", "1e-3",
           "--regularizer", "smart", "--set", "eval_steps=2", "smart.steps=1")
    summary = json.loads((out / "summary.json").read_text())
    meta = json.loads((out / "best" / "gentune.json").read_text())
    assert meta["objective"] == "prompt" and meta["prompt"]["label_words"] == ["terrible", "great"]
    assert summary["objective"] == "prompt" and summary["mlm_head"] == "pretrained"
    logs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("smart_adv", 0) > 0 for r in logs if r["type"] == "train")
    AutoModelForMaskedLM.from_pretrained(out / "best")  # a standard folder
    assert "fill-mask" in (out / "best" / "README.md").read_text()
    scored = json.loads(cli_ok(capsys, "evaluate", "--checkpoint", str(out / "best"), "--task", "sst2", "--data",
                               str(dev)))
    assert scored["accuracy"] == pytest.approx(summary["best_dev"]["accuracy"], abs=1e-9)
    assert scored["loss"] == pytest.approx(summary["best_dev"]["loss"], rel=1e-5)

    from gentune.diagnose import _batches_text, load_representation

    rep = load_representation(str(out / "best"))
    dl, labels = _batches_text(rep, "sst2", str(dev), 8, 0)
    with torch.no_grad():
        h = torch.cat([rep.fn(b) for b in dl])
    assert h.shape == (8, 32) and len(labels) == 8

    assert Prompt.from_dict(meta["prompt"]) == packaged("sst2")  # what as_dict wrote comes back
    from conftest import cli_error

    damaged = {**meta, "prompt": {k: v for k, v in meta["prompt"].items() if k != "template"}}
    (out / "best" / "gentune.json").write_text(json.dumps(damaged))
    cli_error(capsys, "gentune.json: prompt: not a saved prompt (KeyError: 'template')", "evaluate", "--checkpoint",
              str(out / "best"), "--task", "sst2", "--data", str(dev))


def test_zero_shot_and_regression(tmp_path, tiny_mlm, glue, capsys):
    """Zero-shot scoring of a masked LM through the packaged or a user prompt equals the untrained classifier's
    accuracy computed here; an STS-B prompt run trains and reports MSE beside Pearson."""
    from conftest import cli_error, cli_ok
    from gentune.data.glue import read_file
    from gentune.models.prompting import PromptClassifier
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    train, dev = _files(glue, tmp_path)
    zero = json.loads(cli_ok(capsys, "evaluate", "--checkpoint", tiny_mlm, "--task", "sst2", "--data", str(dev),
                             "--objective", "prompt", "--set", "prompt.label_words=bad,good"))
    tok = AutoTokenizer.from_pretrained(tiny_mlm)
    mlm = AutoModelForMaskedLM.from_pretrained(tiny_mlm).eval()
    prompt = prompt_for(get_task("sst2"), None, ["bad", "good"])
    ds = read_file(get_task("sst2"), dev)
    model = PromptClassifier(mlm, label_word_ids(tok, prompt.label_words), tok.mask_token_id).eval()
    enc = encode(prompt, tok, ds["text_a"], None, 128)
    with torch.no_grad():
        pred = torch.cat([model(**dict(tok.pad({k: v[i:i + 16] for k, v in enc.items()}, return_tensors="pt")))
                         .logits.argmax(-1) for i in range(0, len(ds), 16)])
    assert zero["accuracy"] == pytest.approx(float((pred == torch.tensor(ds["label"])).float().mean()), abs=1e-9)
    cli_error(capsys, "exactly one {mask}", "evaluate", "--checkpoint", tiny_mlm, "--task", "sst2", "--data",
              str(dev), "--objective", "prompt", "--set", "prompt.template={text_a}")
    cli_error(capsys, "evaluate takes only prompt", "evaluate", "--checkpoint", tiny_mlm, "--task", "sst2",
              "--data", str(dev), "--set", "lr=3")

    k = glue / "k-shot" / "STS-B" / "16-13"
    out = tmp_path / "stsb"
    cli_ok(capsys, "finetune", "--task", "stsb", "--objective", "prompt", "--model", tiny_mlm, "--train",
           str(k / "train.tsv"), "--dev", str(k / "dev.tsv"), "--out", str(out), "--max-steps", "2",
           "--batch-size", "8")
    final = json.loads((out / "summary.json").read_text())["final_dev"]
    assert {"pearson", "mse", "slope"} <= set(final) and 0 <= final["mse"] < 30


def test_prompt_config_refusals(tmp_path, tiny_mlm, glue, capsys):
    from conftest import cli_error

    train, dev = _files(glue, tmp_path)
    base = ["finetune", "--task", "sst2", "--model", tiny_mlm, "--train", str(train), "--dev", str(dev)]
    cli_error(capsys, "pooling=mean", *base, "--out", str(tmp_path / "a"), "--objective", "prompt", "--set",
              "pooling=mean")
    cli_error(capsys, "options given for objective 'prompt'", *base, "--out", str(tmp_path / "b"), "--set",
              "prompt.label_words=bad,good")
    cli_error(capsys, "single tokens", *base, "--out", str(tmp_path / "c"), "--objective", "prompt", "--set",
              "prompt.label_words=bad,hippopotamuses")
    assert not any((tmp_path / d).exists() for d in "abc")


def test_evaluation_sets_lose_every_k_shot_text(glue):
    """The few-shot protocol's dedup: every example of full/<TASK>/dev whose text is in a seed's k-shot train or dev
    goes, counted; texts compare case- and whitespace-insensitively, pairs as pairs."""
    import datasets

    from gentune.data.glue import read_file
    from gentune.data.splits import without_overlap

    spec = get_task("mr")
    dev = read_file(spec, glue / "full" / "mr" / "dev.json")
    k = glue / "k-shot" / "mr" / "16-42"
    train, kdev = read_file(spec, k / "train.csv"), read_file(spec, k / "dev.csv")
    kept, removed = without_overlap(dev, train, kdev)
    inside = {" ".join(t.lower().split()) for t in list(train["text_a"]) + list(kdev["text_a"])}
    assert removed == sum(" ".join(t.lower().split()) in inside for t in dev["text_a"]) and removed > 0
    assert not inside & {" ".join(t.lower().split()) for t in kept["text_a"]}
    assert len(kept) + removed == len(dev)
    pairs = datasets.Dataset.from_dict({"text_a": ["A b", "A b", "c"], "text_b": ["x", "y", None], "label": [0, 1, 0]})
    other = datasets.Dataset.from_dict({"text_a": ["a  B", "C"], "text_b": ["X", None]})
    kept, removed = without_overlap(pairs, other)
    assert removed == 2 and kept["text_b"] == ["y"]


def test_a_text_linear_probe_trains_the_head_only(tmp_path, tiny_model, glue, capsys):
    from safetensors.torch import load_file

    from conftest import cli_ok

    train, dev = _files(glue, tmp_path)
    out = tmp_path / "probe"
    cli_ok(capsys, "finetune", "--task", "sst2", "--model", tiny_model, "--train", str(train), "--dev", str(dev),
           "--out", str(out), "--max-steps", "3", "--batch-size", "8", "--lr", "1e-2", "--linear-probe", "--set",
           "pooling=mean")
    before = load_file(str(Path(tiny_model) / "model.safetensors"))
    after = load_file(str(out / "best" / "encoder" / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before if k in after) and len(after) > 10
    head = load_file(str(out / "best" / "head.safetensors"))
    assert head["weight"].shape == (2, 32)
