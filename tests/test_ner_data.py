"""NER data (gentune.data.ner): the reader round trips on the real CoNLL-2003 files and EntLM splits, IOB1
conversion and IOB2 strictness on hand-written sentences, spans <-> tags, and one-line errors for malformed files."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from conftest import shared_data
from gentune.data.ner import (Sentence, entity_types, normalize, read, read_conll, spans_to_tags, tags_to_spans,
                              write_conll)
from gentune.errors import GentuneError


@pytest.fixture(scope="module")
def conll():
    from pathlib import Path

    return shared_data(Path(__file__).resolve().parents[2] / "shared" / "data" / "ner" / "conll2003",
                       "CoNLL-2003 data")


def test_the_real_files_read_and_round_trip(conll, tmp_path):
    train, dev = read(conll / "train.txt"), read(conll / "dev.txt")
    assert (len(train), len(dev)) == (14041, 3250)  # the counts the data's README gives
    assert entity_types(train) == ["LOC", "MISC", "ORG", "PER"]
    # every token and tag back from the file's own lines (IOB2 already: nothing converted)
    raw = [l.split() for l in (conll / "dev.txt").read_text().splitlines() if l.strip()]
    assert [t for s in dev for t in s.tokens] == [r[0] for r in raw]
    assert [g for s in dev for g in s.tags] == [r[1] for r in raw]
    for s in dev:  # spans -> tags -> spans
        assert spans_to_tags(s.spans, len(s.tokens)) == s.tags
        assert tags_to_spans(s.tags) == s.spans
    write_conll(dev, tmp_path / "dev.txt")
    assert read(tmp_path / "dev.txt") == dev
    assert sum(len(s.spans) for s in dev) == sum(1 for r in raw if r[1].startswith("B-"))


@pytest.mark.parametrize("k", [5, 10, 20, 50])
def test_entlm_splits_have_k_mentions_per_type_and_both_formats_agree(conll, k):
    folder = conll / "fewshot" / f"{k}shot"
    splits = sorted(folder.glob("*.json"))
    assert len(splits) == (4 if k == 5 else 3)
    for split in splits:
        sentences = read(split)
        assert read(split.with_suffix(".txt")) == sentences
        assert Counter(kind for s in sentences for _, _, kind in s.spans) == {t: k for t in ("PER", "LOC", "ORG",
                                                                                              "MISC")}


def test_iob1_is_converted_and_iob2_is_strict():
    iob1 = ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG", "I-ORG"]
    assert normalize(iob1) == ("B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG", "I-ORG")
    assert tags_to_spans(normalize(iob1)) == [(0, 2, "PER"), (3, 4, "LOC"), (4, 5, "LOC"), (5, 7, "ORG")]
    with pytest.raises(GentuneError, match="continues no PER entity"):
        normalize(["O", "I-PER"], "iob2")
    with pytest.raises(GentuneError, match="continues no LOC entity"):
        normalize(["B-PER", "I-LOC"], "iob2")
    assert normalize(["B-PER", "I-PER", "B-PER"], "iob2") == ("B-PER", "I-PER", "B-PER")
    assert spans_to_tags([(0, 2, "PER"), (3, 4, "LOC")], 5, "io") == ("I-PER", "I-PER", "O", "I-LOC", "O")
    with pytest.raises(GentuneError, match="overlaps"):
        spans_to_tags([(0, 2, "PER"), (1, 3, "LOC")], 4)
    with pytest.raises(GentuneError, match="outside a sentence"):
        spans_to_tags([(2, 6, "PER")], 4)


def test_docstart_four_columns_and_blank_lines(tmp_path):
    f = tmp_path / "a.conll"
    f.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP I-ORG\nrejects VBZ B-VP O\n\n\n"
                 "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n")
    assert read_conll(f) == [Sentence(("EU", "rejects"), ("B-ORG", "O")),
                             Sentence(("Peter", "Blackburn"), ("B-PER", "I-PER"))]


@pytest.mark.parametrize("name, text, needle", [
    ("a.txt", "EU B-ORG\nrejects\n", "a.txt:2: 'rejects' has no tag"),
    ("b.txt", "EU X-ORG\n", "b.txt:1: unknown tag 'X-ORG'"),
    ("c.txt", "EU B-ORG\n\nSome O\nthing I-\n", "c.txt:4: unknown tag 'I-'"),
    ("d.txt", "EU B-FOOD\n", "d.txt:1: tag 'B-FOOD' has an unknown type"),
    ("e.json", '{"text": ["a", "b"], "label": ["O"]}\n', "e.json:1: 2 tokens but 1 tags"),
    ("f.json", '{"text": ["a"], "label": ["O"]}\n{"text": ["a"\n', "f.json:2: not JSON"),
    ("g.json", '["a", "O"]\n', "g.json:1: a sentence is"),
    ("h.txt", "\n\n", "h.txt: no sentences"),
    ("i.csv", "a,O\n", "not a NER file"),
])
def test_malformed_files_are_one_line_errors(tmp_path, name, text, needle):
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(GentuneError) as e:
        read(f, types={"PER", "LOC", "ORG", "MISC"})
    assert needle in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(GentuneError, match="no such file"):
        read(tmp_path / "missing.txt")


def test_strict_iob2_names_the_line(tmp_path):
    f = tmp_path / "s.txt"
    f.write_text("EU B-ORG\n\nPeter O\nBlackburn I-PER\n")
    with pytest.raises(GentuneError, match=r"s.txt:4: 'I-PER' continues no PER entity"):
        read(f, scheme="iob2")
    assert read(f)[1].tags == ("O", "B-PER")  # auto: read as IOB1
    j = tmp_path / "s.json"
    j.write_text(json.dumps({"text": ["Peter", "Blackburn"], "label": ["O", "I-PER"]}) + "\n")
    assert read(j)[0].spans == [(1, 2, "PER")]


# ----------------------------------------------------------------------------------------------- FFF-NER spans


def _hand_sentence():
    # "Peter Blackburn met EU officials in Brussels on Monday ." : PER 0-2, ORG 3-4, LOC 6-7
    tokens = ("Peter", "Blackburn", "met", "EU", "officials", "in", "Brussels", "on", "Monday", ".")
    return Sentence(tokens, spans_to_tags([(0, 2, "PER"), (3, 4, "ORG"), (6, 7, "LOC")], len(tokens)))


def test_span_enumeration_counts_and_order():
    from gentune.data.ner import candidate_spans

    assert candidate_spans(3) == [(0, 1), (1, 2), (2, 3), (0, 2), (1, 3), (0, 3)]
    assert len(candidate_spans(10, 8)) == sum(10 - w + 1 for w in range(1, 9)) == 52
    assert len(candidate_spans(10)) == 55 and candidate_spans(2, 8) == [(0, 1), (1, 2), (0, 2)]


def test_negative_sampler_count_and_distribution():
    """The count is int((10 + 10 x 3) x 3) = 120, capped at the 55 spans of 10 tokens; the draws follow
    exp((entity tokens + 1) / width) over the 52 - 3 = 49 non-entity spans of width <= 8."""
    import math

    import numpy as np

    from gentune.data.ner import candidate_spans, sample_spans

    s = _hand_sentence()
    rng = np.random.default_rng(0)
    drawn = sample_spans(s, rng)
    assert drawn[:3] == [(0, 2, "PER"), (3, 4, "ORG"), (6, 7, "LOC")]
    assert len(drawn) == 3 + 55 and all(kind is None for _, _, kind in drawn[3:])
    gold = {(0, 2), (3, 4), (6, 7)}
    negatives = [sp for sp in candidate_spans(10, 8) if sp not in gold]
    assert len(negatives) == 49 and all((a, b) in negatives for a, b, _ in drawn[3:])
    entity = {0, 1, 3, 6}  # the tokens inside a gold entity
    weight = {sp: math.exp((len(entity & set(range(*sp))) + 1) / (sp[1] - sp[0])) for sp in negatives}
    total = sum(weight.values())
    counts = Counter()
    for _ in range(2000):
        counts.update((a, b) for a, b, _ in sample_spans(s, rng)[3:])
    n = sum(counts.values())
    assert n == 2000 * 55
    for sp, w in weight.items():  # every frequency within 4 standard errors of its probability
        p = w / total
        assert abs(counts[sp] / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-12, sp
    # (0, 2) is gold, (1, 2) "Blackburn" (inside PER) is a heavy negative: e^2 against "met"'s e^1
    assert weight[(1, 2)] / weight[(2, 3)] == pytest.approx(math.e)
    few = Sentence(("a", "b"), ("O", "O"))
    assert len(sample_spans(few, rng)) == 3  # int(2 x 3) = 6, capped at the sentence's 3 spans


def test_overlap_resolution_by_confidence():
    from gentune.data.ner import resolve_overlaps

    predicted = [(0, 2, "PER", 0.9), (1, 3, "ORG", 0.95), (0, 1, "PER", 0.5), (3, 4, "LOC", 0.6),
                 (2, 4, "MISC", 0.7), (5, 6, "LOC", 0.4)]
    # 0.95 (1-3) first; 0.9 (0-2) and 0.7 (2-4) overlap it; 0.6 (3-4) is kept; 0.5 (0-1) does not touch 1-3
    assert resolve_overlaps(predicted) == [(0, 1, "PER", 0.5), (1, 3, "ORG", 0.95), (3, 4, "LOC", 0.6),
                                           (5, 6, "LOC", 0.4)]
    assert resolve_overlaps([]) == []


def test_a_span_is_encoded_with_two_masks_between_brackets(tok):
    from gentune.data.ner import SpanTokens, encode_span

    ids = SpanTokens(cls=1, sep=2, mask=3, left=4, right=5)
    words = [[10], [11, 12], [13], [14]]
    got, entity_at, type_at = encode_span(words, 1, 3, ids)
    assert got == [1, 10, 4, 3, 5, 4, 11, 12, 13, 5, 4, 3, 5, 14, 2]
    assert (entity_at, type_at) == (3, 11) and got[entity_at] == got[type_at] == 3
    # too long: the context farthest from the span goes, the longer side first; the span always stays
    long_words = [[20 + i] for i in range(10)]
    got, e, t = encode_span(long_words, 4, 5, ids, max_length=15)
    assert len(got) == 15 and got[e] == got[t] == 3 and 24 in got
    assert got[1:3] == [22, 23] and got[-3:-1] == [25, 26]  # two words kept on each side
    with pytest.raises(GentuneError, match="more than max_length"):
        encode_span(long_words, 0, 10, ids, max_length=15)
    # with a real tokenizer: "[" and "]" are single tokens of BERT's vocabulary
    left, right = tok.convert_tokens_to_ids(["[", "]"])
    real = SpanTokens(tok.cls_token_id, tok.sep_token_id, tok.mask_token_id, left, right)
    words = [tok.encode(w, add_special_tokens=False) for w in ["Peter", "Blackburn", "met", "EU"]]
    got, e, t = encode_span(words, 0, 2, real)
    assert tok.decode(got) == "[CLS] [ [MASK] ] [ peter blackburn ] [ [MASK] ] met eu [SEP]"


def test_seqeval_and_span_scores_agree_on_non_overlapping_predictions(conll):
    """On the real dev set with predictions made by damaging the gold spans (some dropped, some retyped, some
    shifted, some invented), seqeval's strict micro F1 equals FFF-NER's span F1, and per type it counts by hand."""
    import random

    from gentune.data.ner import resolve_overlaps
    from gentune.metrics import entity_scores, span_scores

    dev = read(conll / "dev.txt")[:600]
    rnd = random.Random(0)
    gold_tags, pred_tags, gold_spans, pred_spans = [], [], [], []
    for s in dev:
        spans = []
        for a, b, kind in s.spans:
            r = rnd.random()
            if r < 0.15:
                continue  # missed
            if r < 0.25:
                kind = "MISC" if kind != "MISC" else "PER"  # wrong type
            elif r < 0.35 and b < len(s.tokens):
                b += 1  # wrong boundary
            spans.append((a, b, kind, rnd.random()))
        if rnd.random() < 0.2:
            a = rnd.randrange(len(s.tokens))
            spans.append((a, a + 1, "LOC", rnd.random()))  # invented
        kept = {(a, b, k) for a, b, k, _ in resolve_overlaps(spans)}
        gold_tags.append(list(s.tags))
        pred_tags.append(list(spans_to_tags(kept, len(s.tokens))))
        gold_spans.append(set(s.spans))
        pred_spans.append(kept)
    seq, spn = entity_scores(gold_tags, pred_tags), span_scores(gold_spans, pred_spans)
    assert 0.5 < spn["f1"] < 0.95
    for k in ("precision", "recall", "f1"):
        assert seq[k] == pytest.approx(spn[k], abs=1e-12)
    for kind, row in seq["per_type"].items():
        tp = sum(1 for g, p in zip(gold_spans, pred_spans) for sp in g & p if sp[2] == kind)
        assert row["support"] == sum(1 for g in gold_spans for sp in g if sp[2] == kind)
        assert row["recall"] == pytest.approx(tp / row["support"])
