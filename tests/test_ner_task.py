"""The ner task (gentune.tasks.ner): each objective's examples, decoding and loss against hand-worked cases and
literal re-computations, a short run of each objective that saves a model scoring what the run reported, and the
CLI (finetune, evaluate, predict, errors)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from gentune.config import apply_mapping
from gentune.data.ner import Sentence, candidate_spans, read, write_conll
from gentune.errors import GentuneError

TRAIN = [
    (["John", "Smith", "visited", "Paris", "on", "Monday", "."], ["B-PER", "I-PER", "O", "B-LOC", "O", "O", "O"]),
    (["The", "Red", "Cross", "helped", "Maria", "."], ["O", "B-ORG", "I-ORG", "O", "B-PER", "O"]),
    (["Germany", "beat", "France", "in", "Berlin", "."], ["B-LOC", "O", "B-LOC", "O", "B-LOC", "O"]),
    (["He", "spoke", "English", "at", "the", "United", "Nations", "."],
     ["O", "O", "B-MISC", "O", "O", "B-ORG", "I-ORG", "O"]),
]
LABEL_WORDS = {"I-PER": ["john", "michael"], "I-ORG": ["bank", "party"], "I-LOC": ["england", "france"],
               "I-MISC": ["english", "russian"]}


@pytest.fixture()
def files(tmp_path) -> tuple[Path, Path]:
    sentences = [Sentence(tuple(t), tuple(g)) for t, g in TRAIN]
    write_conll(sentences, tmp_path / "train.txt")
    write_conll(sentences[:3], tmp_path / "dev.txt")
    (tmp_path / "label_map_test.json").write_text(json.dumps(LABEL_WORDS))
    return tmp_path / "train.txt", tmp_path / "dev.txt"


def _config(files, out, model, objective, **kw):
    from gentune.tasks.ner import NerConfig

    train, dev = files
    return apply_mapping(NerConfig(), dict(train=str(train), dev=str(dev), out=str(out), model=model,
                                           objective=objective, batch_size=4, lr=1e-3, max_length=48, **kw), "test")


def _bundle(tok, objective: str, **kw):
    from gentune.tasks.ner import NerModel

    return NerModel(None, tok, objective, ["LOC", "MISC", "ORG", "PER"], **kw)


# ------------------------------------------------------------------------------------------------- examples


def test_token_classification_labels_only_first_subwords(tok):
    from gentune.tasks.ner import examples

    s = Sentence(("Blackburn", "visited", "Brussels"), ("B-PER", "O", "B-LOC"))
    for scheme, want in (("bio", ["B-PER", "O", "B-LOC"]), ("io", ["I-PER", "O", "I-LOC"])):
        bundle = _bundle(tok, "token-classification", scheme=scheme)
        (ex,) = examples(bundle, [s], train=True)
        tokens = tok.convert_ids_to_tokens(ex["input_ids"])
        firsts = [i for i, f in enumerate(ex["first"]) if f]
        assert [tokens[i] for i in firsts] == ["blackburn", "visited", "brussels"][:len(firsts)] or \
            all(not t.startswith("##") for t in (tokens[i] for i in firsts))
        assert [bundle.tags[ex["labels"][i]] for i in firsts] == want
        assert all(ex["labels"][i] == -100 for i in range(len(tokens)) if i not in firsts)
        assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"


def test_entlm_labels_label_words_at_entity_first_subwords_and_tokens_elsewhere(tok):
    from gentune.tasks.ner import examples

    label_ids = [901, 902, 903, 904]  # LOC, MISC, ORG, PER
    bundle = _bundle(tok, "entlm", label_ids=label_ids)
    s = Sentence(("Hageman", "saw", "Wolfsburg", "play"), ("B-PER", "O", "B-ORG", "O"))
    (ex,) = examples(bundle, [s], train=True)
    ids, labels = ex["input_ids"], ex["labels"]
    firsts = [i for i, f in enumerate(ex["first"]) if f]
    assert len(firsts) == 4
    pieces = [len(tok.encode(w, add_special_tokens=False)) for w in s.tokens]
    assert pieces[0] > 1  # a word of several subwords: its later ones are ignored
    assert labels[firsts[0]] == 904 and labels[firsts[2]] == 903
    assert all(labels[q] == -100 for q in range(firsts[0] + 1, firsts[0] + pieces[0]))
    assert labels[firsts[1]] == ids[firsts[1]] and labels[firsts[3]] == ids[firsts[3]]  # O words predict themselves
    assert labels[0] == labels[-1] == -100


def test_fffner_examples_every_gold_span_and_the_sampled_negatives_then_every_candidate(tok):
    import numpy as np

    from gentune.data.ner import sample_spans
    from gentune.tasks.ner import examples

    markers = {"entity": tok.mask_token_id, "type": tok.mask_token_id, "left": 1031, "right": 1033}
    bundle = _bundle(tok, "fffner", markers=markers, max_width=3, sampling={"multiplier": 3.0, "per_entity": 10})
    s = Sentence(tuple(TRAIN[0][0]), tuple(TRAIN[0][1]))
    train = examples(bundle, [s], train=True, seed=5)
    want = sample_spans(s, np.random.default_rng(5), 3, 3.0, 10)
    assert [(e["start"], e["end"]) for e in train] == [(a, b) for a, b, _ in want]
    assert sum(e["is_entity"] for e in train) == 2
    assert {(e["start"], e["end"], e["type_label"]) for e in train if e["is_entity"]} == {(0, 2, 3), (3, 4, 0)}
    assert all(e["type_label"] == -100 for e in train if not e["is_entity"])
    dev = examples(bundle, [s], train=False)
    assert sorted((e["start"], e["end"]) for e in dev) == sorted(candidate_spans(7, 3))
    assert [len(e["input_ids"]) for e in dev] == sorted(len(e["input_ids"]) for e in dev)
    for e in dev:
        assert e["input_ids"][e["entity_at"]] == e["input_ids"][e["type_at"]] == tok.mask_token_id
        assert e["is_entity"] == int((e["start"], e["end"]) in {(0, 2), (3, 4)})


# ------------------------------------------------------------------------------------------------- decoding


def test_tags_decode_to_iob2_entities_and_words_past_max_length_are_o(tok):
    from gentune.tasks.ner import _decode_tags

    s = Sentence(("a", "b", "c", "d", "e"), ("O",) * 5)
    io = _bundle(tok, "entlm")  # IO names: O, I-LOC, I-MISC, I-ORG, I-PER
    got = _decode_tags(io, [([4, 4, 0, 1], [0.9, 0.7, 0.99, 0.5])], [s])
    assert got == [[(0, 2, "PER", pytest.approx(0.8)), (3, 4, "LOC", 0.5)]]  # e: past max_length, O
    bio = _bundle(tok, "token-classification")  # O, B-LOC, I-LOC, B-MISC, ...
    names = bio.tags
    which = [names.index(t) for t in ("I-ORG", "I-ORG", "B-ORG", "O", "B-LOC")]
    got = _decode_tags(bio, [(which, [1.0] * 5)], [s])
    assert [g[:3] for g in got[0]] == [(0, 2, "ORG"), (2, 3, "ORG"), (4, 5, "LOC")]  # a stray I- begins one


def test_fffner_decoding_keeps_winning_spans_and_resolves_overlaps(tok):
    from gentune.tasks.ner import _decode_spans, metrics_of

    bundle = _bundle(tok, "fffner")
    # rows: p(entity), type index, p(type), sentence, start, end
    table = torch.tensor([[0.9, 3, 0.8, 0, 0, 2],  # PER 0-2, kept
                          [0.7, 3, 0.6, 0, 1, 2],  # overlaps a surer span: dropped after resolution
                          [0.4, 0, 0.9, 0, 3, 4],  # is-entity loses: never a prediction
                          [0.6, 0, 0.9, 1, 0, 1],  # LOC 0-1 in sentence 1
                          [0.55, 2, 0.5, 1, 2, 4]])  # ORG 2-4, a wrong type and boundary
    resolved, raw = _decode_spans(bundle, table, 2)
    assert [r[:3] for r in resolved[0]] == [(0, 2, "PER")] and len(raw[0]) == 2
    assert [r[:3] for r in resolved[1]] == [(0, 1, "LOC"), (2, 4, "ORG")]
    gold = [Sentence(("a", "b", "c", "d"), ("B-PER", "I-PER", "O", "B-LOC")),
            Sentence(("a", "b", "c", "d"), ("B-LOC", "O", "B-MISC", "O"))]
    m = metrics_of(gold, resolved, raw)
    # resolved: 3 predicted, 2 right, 4 gold -> P 2/3, R 1/2
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(m["span_f1_resolved"]) == pytest.approx(4 / 7)
    assert m["span_f1_raw"] == pytest.approx(2 * (2 / 4) * 0.5 / (2 / 4 + 0.5))  # 4 raw spans, 2 right
    assert m["f1_PER"] == 1.0 and m["f1_MISC"] == 0.0


# ------------------------------------------------------------------------------------------------- losses, models


def test_fffner_loss_is_entity_ce_over_all_plus_type_ce_over_gold():
    from gentune.objectives.fffner import fffner_loss

    torch.manual_seed(0)
    e, t = torch.randn(5, 2), torch.randn(5, 4)
    is_entity = torch.tensor([1, 0, 0, 1, 0])
    types = torch.tensor([2, -100, -100, 0, -100])

    def nll(logits, k):
        return -(logits[k] - math.log(sum(math.exp(v) for v in logits.tolist())))

    want_e = sum(nll(e[i], int(is_entity[i])) for i in range(5)) / 5
    want_t = (nll(t[0], 2) + nll(t[3], 0)) / 2
    total, ent, kind = fffner_loss(e, t, is_entity, types)
    assert float(ent) == pytest.approx(float(want_e), rel=1e-6)
    assert float(kind) == pytest.approx(float(want_t), rel=1e-6)
    assert float(total) == pytest.approx(float(want_e + want_t), rel=1e-6)
    _, _, none = fffner_loss(e, t, torch.zeros(5, dtype=torch.long), torch.full((5,), -100))
    assert float(none) == 0.0


def test_new_markers_and_virtual_label_words_start_from_pretrained_rows(tiny_mlm):
    from transformers import AutoModel, AutoModelForMaskedLM

    from gentune.models.hf import load_tokenizer
    from gentune.models.ner import NEW_MARKERS, add_label_tokens, add_markers

    tok = load_tokenizer(tiny_mlm)
    encoder = AutoModel.from_pretrained(tiny_mlm)
    before = encoder.get_input_embeddings().weight.detach().clone()
    ids = add_markers(encoder, tok, "new")
    table = encoder.get_input_embeddings().weight
    assert len(tok) == before.shape[0] + 4 and table.shape[0] == len(tok)
    for key, src in (("entity", tok.mask_token_id), ("type", tok.mask_token_id), ("left", 1031), ("right", 1033)):
        assert tok.convert_ids_to_tokens(ids[key]) == NEW_MARKERS[key]
        assert torch.equal(table[ids[key]], before[src])
    assert tok.convert_ids_to_tokens([1031, 1033]) == ["[", "]"]
    assert add_markers(encoder, tok, "vocab")["left"] == 1031
    with pytest.raises(GentuneError, match="markers"):
        add_markers(encoder, tok, "odd")

    tok = load_tokenizer(tiny_mlm)
    mlm = AutoModelForMaskedLM.from_pretrained(tiny_mlm)
    emb = mlm.get_input_embeddings().weight.detach().clone()
    bias = mlm.get_output_embeddings().bias.detach().clone()
    words = {"PER": ["john", "michael"], "LOC": ["france", "zzzqqq"]}  # zzzqqq: several tokens, skipped
    got = add_label_tokens(mlm, tok, ["LOC", "PER"], words, virtual=True)
    john, michael, france = tok.convert_tokens_to_ids(["john", "michael", "france"])
    new = mlm.get_input_embeddings().weight
    assert torch.allclose(new[got[1]], (emb[john] + emb[michael]) / 2)
    assert torch.allclose(new[got[0]], emb[france])
    out = mlm.get_output_embeddings()
    assert torch.equal(out.weight[got[1]], new[got[1]])  # tied
    assert float(out.bias[got[1]].detach()) == pytest.approx(float(bias[john] + bias[michael]) / 2)
    assert add_label_tokens(mlm, tok, ["LOC", "PER"], words, virtual=False) == [france, john]
    with pytest.raises(GentuneError, match="no label words for type ORG"):
        add_label_tokens(mlm, tok, ["ORG"], words)


# ------------------------------------------------------------------------------------------------- runs


@pytest.mark.parametrize("objective", ["token-classification", "fffner", "entlm"])
def test_each_objective_trains_saves_and_the_saved_model_scores_what_the_run_reported(objective, files, tiny_model,
                                                                                      tiny_mlm, tmp_path):
    from gentune.models.checkpoint import read_meta
    from gentune.tasks.ner import TASK, load, predict_entities, score
    from gentune.train import run

    model = tiny_mlm if objective == "entlm" else tiny_model
    cfg = _config(files, tmp_path / "run", model, objective, max_steps=2,
                  objective_options={"fffner": {"max_width": 3}} if objective == "fffner" else {})
    summary = run(cfg, TASK.build)
    assert summary["train_steps"] == 2 and set(summary["final_dev"]) >= {"f1", "precision", "recall", "f1_PER"}
    meta = read_meta(tmp_path / "run" / "best")
    assert meta["kind"] == {"token-classification": "ner-tagger", "fffner": "ner-span", "entlm": "ner-entlm"}[objective]
    bundle = load(str(tmp_path / "run" / "best"))
    assert bundle.types == ["LOC", "MISC", "ORG", "PER"]
    dev = read(files[1])
    assert score(bundle, dev, batch_size=3) == pytest.approx(summary["final_dev"], rel=1e-5, abs=1e-6)
    text = "John Smith visited Paris ."
    for e in predict_entities(bundle, texts=[text]):
        assert text[e["start"]:e["end"]] == e["text"] and e["type"] in bundle.types and 0 <= e["score"] <= 1
    if objective == "fffner":
        assert summary["dev_spans"] == sum(len(candidate_spans(len(s.tokens), 3)) for s in dev)
        assert "span_f1_raw" in summary["final_dev"]


def test_cli_finetune_evaluate_predict_and_errors(files, tiny_model, tmp_path, capsys):
    """The commands in process (main(): the code path of `gentune ...` without a process start-up each)."""
    from gentune.cli import main

    train, dev = files
    out = tmp_path / "cli"
    assert main(["finetune", "--task", "ner", "--objective", "fffner", "--train", str(train), "--dev", str(dev),
                 "--model", tiny_model, "--out", str(out), "--max-steps", "2", "--batch-size", "4",
                 "--set", "fffner.max_width=2"]) == 0
    assert "ner: best dev f1" in capsys.readouterr().out
    assert main(["evaluate", "--task", "ner", "--checkpoint", str(out / "best"), "--data", str(dev)]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["examples"] == 3 and 0 <= got["f1"] <= 1 and "f1_LOC" in got and got["speed"]["inputs"] > 0
    assert main(["predict", "--checkpoint", str(out / "best"), "--text", "Maria visited Berlin .", "--text", ""]) == 0
    printed = capsys.readouterr()
    assert "sentences" in printed.err
    for line in printed.out.splitlines():
        assert set(json.loads(line)) == {"sentence", "text", "type", "start", "end", "token_start", "token_end",
                                         "score"}
    assert main(["predict", "--checkpoint", str(out / "best"), "--data", str(dev), "--out",
                 str(tmp_path / "p.jsonl")]) == 0
    assert (tmp_path / "p.jsonl").is_file() and not capsys.readouterr().out
    other = tmp_path / "other.txt"  # a type the model was not trained on
    other.write_text("Alpha B-LOC\nBeta B-EVENT\n\n")
    assert main(["predict", "--checkpoint", str(out / "best"), "--data", str(other)]) == 0  # tags are not read
    capsys.readouterr()
    assert main(["evaluate", "--task", "ner", "--checkpoint", str(out / "best"), "--data", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"{other}:2" in err and "unknown type" in err
    bad = tmp_path / "bad.txt"
    bad.write_text("John B-PER\nSmith\n")
    for args, needle in ((("finetune", "--task", "ner", "--train", str(bad), "--dev", str(dev), "--model", tiny_model,
                           "--out", str(tmp_path / "x")), f"{bad}:2"),
                         (("finetune", "--task", "ner", "--train", str(train), "--dev", str(dev), "--model",
                           tiny_model, "--out", str(tmp_path / "y"), "--set", "fffner.markers=odd", "--objective",
                           "fffner"), "markers"),
                         (("evaluate", "--task", "ner", "--checkpoint", str(tmp_path), "--data", str(dev)),
                          "not a gentune NER checkpoint"),
                         (("evaluate", "--task", "sst2", "--checkpoint", str(out / "best"), "--data", str(dev),
                           "--precision", "bf16"), "--precision")):
        capsys.readouterr()
        assert main(list(args)) == 2, args  # in process: the same code path as the command, without its start-up
        err = capsys.readouterr().err.strip().splitlines()
        assert err and err[-1].startswith("error: ") and needle in err[-1], (args, err)
        assert not any(line.startswith("Traceback") for line in err)


def test_config_errors_name_the_problem(files, tiny_model, tmp_path, monkeypatch):
    from gentune.tasks.ner import NerConfig, datasets

    monkeypatch.delenv("GENTUNE_NER_DATA", raising=False)
    with pytest.raises(GentuneError, match="ner needs data"):
        apply_mapping(NerConfig(), {"out": str(tmp_path / "o")}, "test").validate()
    with pytest.raises(GentuneError, match="objective must be one of"):
        _config(files, tmp_path / "o", tiny_model, "prompt").validate()
    cfg = _config(files, tmp_path / "o", tiny_model, "fffner", types=["PER", "LOC"])
    with pytest.raises(GentuneError, match="unknown type"):
        datasets(cfg)  # ORG and MISC in the files
    cfg = _config(files, tmp_path / "o", tiny_model, "fffner", dev_from_train=1)
    data = datasets(cfg)
    assert len(data.train) == 3 and len(data.heldout) == 1 and data.info["types"] == ["LOC", "MISC", "ORG", "PER"]


def test_raw_text_is_split_into_conll_style_words_with_offsets():
    from gentune.tasks.ner import split_words

    text = "Peter Blackburn's EU-wide plan, 3,000 or 1.5 in 1996 (U.S.)."
    words, offsets = split_words(text)
    assert words == ["Peter", "Blackburn's", "EU-wide", "plan", ",", "3,000", "or", "1.5", "in", "1996", "(", "U.S.",
                     ")", "."]
    assert [text[a:b] for a, b in offsets] == words
    assert split_words("") == ([], [])
