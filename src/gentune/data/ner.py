"""Named-entity data: CoNLL files, EntLM's JSON splits, and the conversion between tags and entity spans.

Formats (by extension; :func:`read`):

- CoNLL (``.txt``, ``.conll``, ``.bio``, ``.iob``, ``.tsv``): one token per line, its tag in the last
  whitespace-separated column (``token TAG``, or CoNLL-2003's ``token POS CHUNK TAG``), a blank line between
  sentences, ``-DOCSTART-`` lines skipped.
- EntLM JSON lines (``.json``, ``.jsonl``): one sentence per line, ``{"text": [tokens], "label": [tags]}``.

Tags are IOB2 (``B-TYPE`` begins an entity, ``I-TYPE`` continues it, ``O`` is outside). ``scheme="iob1"`` (or
``auto``, the default) reads IOB1, where ``I-TYPE`` also begins an entity and ``B-TYPE`` only separates two
adjacent entities of one type, and converts it: an ``I-TYPE`` that does not continue an entity of its type becomes
``B-TYPE``. ``scheme="iob2"`` refuses such a tag instead. A malformed line, an unknown tag or a type outside
``types`` is a one-line error naming the file and line.

Spans are (start, end, type) over token positions, end exclusive: "Peter Blackburn visited Brussels" tagged
``B-PER I-PER O B-LOC`` has spans (0, 2, PER) and (3, 4, LOC).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import GentuneError

CONLL_SUFFIXES = (".txt", ".conll", ".bio", ".iob", ".tsv")
JSON_SUFFIXES = (".json", ".jsonl")
SCHEMES = ("auto", "iob1", "iob2")


@dataclass(frozen=True)
class Sentence:
    """A tokenized sentence and its IOB2 tags, one per token."""

    tokens: tuple[str, ...]
    tags: tuple[str, ...]

    @property
    def spans(self) -> list[tuple[int, int, str]]:
        return tags_to_spans(self.tags)


def _split_tag(tag: str, where: str) -> tuple[str, str]:
    if tag == "O":
        return "O", ""
    prefix, sep, kind = tag.partition("-")
    if not sep or prefix not in ("B", "I") or not kind:
        raise GentuneError(f"{where}: unknown tag {tag!r} (tags are O, B-TYPE or I-TYPE)")
    return prefix, kind


def _at(where, i: int) -> str:
    return where(i) if callable(where) else where


def normalize(tags: list[str], scheme: str = "auto", where="tags", types: set[str] | None = None) -> tuple[str, ...]:
    """``tags`` as IOB2 (see the module). ``where`` names them in an error: a string, or a function of the token's
    index (``file:line`` of that token)."""
    if scheme not in SCHEMES:
        raise GentuneError(f"tag scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    out = []
    previous = ""
    for i, tag in enumerate(tags):
        prefix, kind = _split_tag(tag, _at(where, i))
        if kind and types is not None and kind not in types:
            raise GentuneError(f"{_at(where, i)}: tag {tag!r} has an unknown type (known: {', '.join(sorted(types))})")
        if prefix == "I" and previous != kind:
            if scheme == "iob2":
                raise GentuneError(f"{_at(where, i)}: {tag!r} continues no {kind} entity (IOB2: an entity begins with "
                                   "B-; give scheme=iob1 for IOB1 files)")
            tag = f"B-{kind}"
        out.append(tag)
        previous = kind
    return tuple(out)


def read_conll(path: str | Path, scheme: str = "auto", types: set[str] | None = None) -> list[Sentence]:
    """Every sentence of a CoNLL file (see the module)."""
    path = Path(path)
    lines = _lines(path)
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    first = 0

    def flush():
        if tokens:
            sentences.append(Sentence(tuple(tokens), normalize(tags, scheme, lambda i: f"{path}:{first + i}", types)))
        tokens.clear()
        tags.clear()

    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            flush()
            continue
        if fields[0] == "-DOCSTART-":
            flush()
            continue
        if len(fields) < 2:
            raise GentuneError(f"{path}:{number}: {line.strip()!r} has no tag (lines are 'token TAG')")
        if not tokens:
            first = number
        tokens.append(fields[0])
        tags.append(fields[-1])
    flush()
    if not sentences:
        raise GentuneError(f"{path}: no sentences")
    return sentences


def read_json(path: str | Path, scheme: str = "auto", types: set[str] | None = None) -> list[Sentence]:
    """Every sentence of an EntLM JSON-lines file (``{"text": [...], "label": [...]}`` per line)."""
    path = Path(path)
    sentences = []
    for number, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise GentuneError(f"{path}:{number}: not JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), list) or not isinstance(row.get("label"),
                                                                                               list):
            raise GentuneError(f"{path}:{number}: a sentence is {{\"text\": [tokens], \"label\": [tags]}}")
        text, label = row["text"], row["label"]
        if len(text) != len(label):
            raise GentuneError(f"{path}:{number}: {len(text)} tokens but {len(label)} tags")
        if not text:
            continue
        if not all(isinstance(t, str) for t in text + label):
            raise GentuneError(f"{path}:{number}: tokens and tags must be strings")
        sentences.append(Sentence(tuple(text), normalize(label, scheme, f"{path}:{number}", types)))
    if not sentences:
        raise GentuneError(f"{path}: no sentences")
    return sentences


def read(path: str | Path, scheme: str = "auto", types: set[str] | None = None) -> list[Sentence]:
    """A NER file by its extension (CoNLL or EntLM JSON lines)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in JSON_SUFFIXES:
        return read_json(path, scheme, types)
    if suffix in CONLL_SUFFIXES:
        return read_conll(path, scheme, types)
    raise GentuneError(f"{path}: not a NER file (CoNLL: {', '.join(CONLL_SUFFIXES)}; EntLM JSON lines: "
                       f"{', '.join(JSON_SUFFIXES)})")


def _lines(path: Path) -> list[str]:
    if path.is_dir():
        raise GentuneError(f"{path}: a folder, not a NER file")
    if not path.is_file():
        raise GentuneError(f"{path}: no such file")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise GentuneError(f"{path}: not UTF-8 text (byte {e.start})") from None


def write_conll(sentences: list[Sentence], path: str | Path) -> None:
    """``token TAG`` lines, a blank line after each sentence (what :func:`read_conll` reads back)."""
    from ..fs import write_text_atomic

    write_text_atomic(Path(path), "".join("".join(f"{t} {g}\n" for t, g in zip(s.tokens, s.tags)) + "\n"
                                          for s in sentences))


def tags_to_spans(tags) -> list[tuple[int, int, str]]:
    """The entities of IOB2 ``tags`` as (start, end exclusive, type), in order; an ``I-`` that continues nothing
    (an IOB1 or damaged sequence) begins an entity, as seqeval's default mode reads it."""
    spans = []
    start, kind = None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, k = ("O", "") if tag == "O" else tag.split("-", 1)
        if start is not None and (prefix != "I" or k != kind):
            spans.append((start, i, kind))
            start, kind = None, None
        if prefix == "B" or (prefix == "I" and start is None):
            start, kind = i, k
    return spans


def spans_to_tags(spans, length: int, scheme: str = "iob2") -> tuple[str, ...]:
    """IOB2 (or ``io``: ``I-`` throughout) tags of ``length`` tokens for non-overlapping ``spans``."""
    if scheme not in ("iob2", "io"):
        raise GentuneError(f"spans_to_tags: scheme must be iob2 or io, got {scheme!r}")
    tags = ["O"] * length
    for start, end, kind in sorted(spans):
        if not 0 <= start < end <= length:
            raise GentuneError(f"span ({start}, {end}, {kind}) lies outside a sentence of {length} tokens")
        if any(t != "O" for t in tags[start:end]):
            raise GentuneError(f"span ({start}, {end}, {kind}) overlaps another")
        tags[start:end] = [f"{'B' if (j == start and scheme == 'iob2') else 'I'}-{kind}" for j in range(start, end)]
    return tuple(tags)


# ----------------------------------------------------------------------------------------------- span candidates
# FFF-NER (Wang, Zhao, Wang, Shang, Findings of EMNLP 2022) turns every candidate span into a masked prediction.


def candidate_spans(length: int, max_width: int | None = None) -> list[tuple[int, int]]:
    """Every span (start, end exclusive) of a sentence of ``length`` tokens at most ``max_width`` wide (None: any
    width), narrowest first, then left to right."""
    widest = length if max_width is None else min(max_width, length)
    return [(i, i + w) for w in range(1, widest + 1) for i in range(length - w + 1)]


def negative_weight(start: int, end: int, entity_tokens: list[int]) -> float:
    """FFF-NER's sampling weight of a non-entity span: exp((entity tokens inside it + 1) / its width), so spans
    that overlap entities, the hard negatives, are drawn more often. ``entity_tokens``: prefix counts (position
    i + 1 holds how many of tokens 0..i are inside a gold entity)."""
    import math

    return math.exp((entity_tokens[end] - entity_tokens[start] + 1) / (end - start))


def sample_spans(sentence: Sentence, rng, max_width: int | None = 8, multiplier: float = 3.0,
                 per_entity: int = 10) -> list[tuple[int, int, str | None]]:
    """The training spans of one sentence: every gold entity (start, end, type) once, then negatives (type None)
    drawn with replacement from the other candidate spans by :func:`negative_weight`. How many:
    int((tokens + per_entity x entities) x multiplier), at most the number of all spans of the sentence, as
    FFF-NER's data code draws them. ``rng``: a ``numpy.random.Generator``."""
    import numpy as np

    n = len(sentence.tokens)
    gold = {(a, b): kind for a, b, kind in sentence.spans}
    inside = [0] * (n + 1)
    for a, b in gold:
        for i in range(a, b):
            inside[i + 1] = 1
    for i in range(n):
        inside[i + 1] += inside[i]
    negatives = [(a, b) for a, b in candidate_spans(n, max_width) if (a, b) not in gold]
    out: list[tuple[int, int, str | None]] = [(a, b, kind) for (a, b), kind in sorted(gold.items())]
    count = min(int((n + per_entity * len(gold)) * multiplier), n * (n + 1) // 2)
    if negatives and count > 0:
        w = np.array([negative_weight(a, b, inside) for a, b in negatives])
        for k in rng.choice(len(negatives), size=count, replace=True, p=w / w.sum()):
            out.append((*negatives[int(k)], None))
    return out


def resolve_overlaps(predicted) -> list[tuple[int, int, str, float]]:
    """Non-overlapping entities from scored span predictions (start, end, type, score): the most confident first,
    each kept unless it overlaps one already kept (FFF-NER's greedy decoding); returned in sentence order."""
    kept: list[tuple[int, int, str, float]] = []
    for span in sorted(predicted, key=lambda p: (-p[3], p[0], p[1])):
        if all(span[1] <= k[0] or k[1] <= span[0] for k in kept):
            kept.append(tuple(span))
    return sorted(kept)


@dataclass(frozen=True)
class SpanTokens:
    """The ids FFF-NER's input is built from: the tokenizer's [CLS] and [SEP], the is-entity mask (``mask``), the two
    brackets, and the type mask (``type_mask``; None: the same token as ``mask``)."""

    cls: int
    sep: int
    mask: int
    left: int
    right: int
    type_mask: int | None = None


def span_fits(words: list[list[int]], start: int, end: int, max_length: int = 128) -> bool:
    """Whether span (start, end) with its markers fits in ``max_length`` tokens (context is cut to fit)."""
    return 10 + sum(len(w) for w in words[start:end]) <= max_length


def encode_span(words: list[list[int]], start: int, end: int, ids: SpanTokens,
                max_length: int = 128) -> tuple[list[int], int, int]:
    """One candidate span as FFF-NER's input,

        [CLS] left words [ [MASK] ] [ span words ] [ [MASK] ] right words [SEP]

    from each word's subword ids; returns (input ids, position of the is-entity [MASK], position of the type
    [MASK]). Past ``max_length`` the context words farthest from the span go first (the longer side first); a span
    that alone does not fit is an error."""
    if not 0 <= start < end <= len(words):
        raise GentuneError(f"span ({start}, {end}) lies outside a sentence of {len(words)} words")
    span = [t for w in words[start:end] for t in w]
    fixed = 2 + 3 + 2 + 3 + len(span)  # [CLS] [SEP], [ [MASK] ], the span's brackets, [ [MASK] ]
    if fixed > max_length:
        raise GentuneError(f"span ({start}, {end}) takes {fixed} tokens with its markers, more than max_length "
                           f"{max_length}")
    left, right = list(words[:start]), list(words[end:])
    while fixed + sum(map(len, left)) + sum(map(len, right)) > max_length:
        if sum(map(len, left)) >= sum(map(len, right)):
            left.pop(0)
        else:
            right.pop()
    out = [ids.cls, *[t for w in left for t in w], ids.left]
    entity_at = len(out)
    out += [ids.mask, ids.right, ids.left, *span, ids.right, ids.left]
    type_at = len(out)
    out += [ids.mask if ids.type_mask is None else ids.type_mask, ids.right, *[t for w in right for t in w], ids.sep]
    return out, entity_at, type_at



# ----------------------------------------------------------------------------------------------- subword encoding


def word_pieces(tokenizer, sentences: list[Sentence]) -> list[list[list[int]]]:
    """Each sentence's words as lists of subword ids (no special tokens), by one batched call of a fast tokenizer
    (``is_split_into_words``); a word the tokenizer makes nothing of (a control character) becomes [UNK]."""
    if not getattr(tokenizer, "is_fast", False):
        raise GentuneError(f"NER needs a fast tokenizer (word alignment), got {type(tokenizer).__name__}")
    if not sentences:
        return []
    enc = tokenizer([list(s.tokens) for s in sentences], is_split_into_words=True, add_special_tokens=False)
    out = []
    for k, s in enumerate(sentences):
        pieces: list[list[int]] = [[] for _ in s.tokens]
        for token_id, word in zip(enc["input_ids"][k], enc.word_ids(k)):
            if word is not None:
                pieces[word].append(token_id)
        out.append([p or [tokenizer.unk_token_id] for p in pieces])
    return out


def encode_words(words: list[list[int]], cls: int, sep: int, max_length: int = 128) -> tuple[list[int], list[int]]:
    """``[CLS] words [SEP]`` from each word's subword ids; returns (input ids, the position of each word's first
    subword). Words past ``max_length`` are left out (their positions are not returned: they are predicted O)."""
    ids, firsts = [cls], []
    for w in words:
        if len(ids) + len(w) + 1 > max_length:
            break
        firsts.append(len(ids))
        ids += w
    return ids + [sep], firsts


def tag_labels(types: list[str], scheme: str = "bio") -> list[str]:
    """The tag set of a token classifier over ``types``: ``O`` then ``B-``/``I-`` per type (``bio``), or ``O`` and
    ``I-`` per type (``io``: two adjacent entities of one type become one)."""
    if scheme not in ("bio", "io"):
        raise GentuneError(f"tag scheme must be bio or io, got {scheme!r}")
    return ["O", *[f"{p}-{t}" for t in types for p in (("B", "I") if scheme == "bio" else ("I",))]]


def to_iob2(tags) -> tuple[str, ...]:
    """Predicted tags as valid IOB2: an ``I-TYPE`` that continues no entity of its type begins one (how IO tags
    and a tagger's stray ``I-`` are read)."""
    return normalize(list(tags), "iob1")


def pad_batch(features: list[dict], pad_id: int) -> dict:
    """A batch of encoded examples as tensors: ``input_ids`` padded with ``pad_id`` (and an ``attention_mask``),
    ``labels`` with -100 and ``first`` with 0 when present (per-token lists), other fields (ints) stacked."""
    import torch

    length = max(len(f["input_ids"]) for f in features)
    pads = {"input_ids": pad_id, "labels": -100, "first": 0}
    out: dict = {}
    for key in features[0]:
        if key in pads:
            out[key] = torch.tensor([list(f[key]) + [pads[key]] * (length - len(f[key])) for f in features])
        else:
            out[key] = torch.tensor([f[key] for f in features])
    out["attention_mask"] = torch.tensor([[1] * len(f["input_ids"]) + [0] * (length - len(f["input_ids"]))
                                          for f in features])
    return out


def entity_types(sentences: list[Sentence]) -> list[str]:
    """The entity types the sentences' tags use, sorted."""
    return sorted({kind for s in sentences for _, _, kind in s.spans})


__all__ = ["Sentence", "SpanTokens", "candidate_spans", "encode_span", "encode_words", "entity_types",
           "negative_weight", "normalize", "pad_batch", "read", "read_conll", "read_json", "resolve_overlaps",
           "sample_spans", "span_fits", "spans_to_tags", "tag_labels", "tags_to_spans", "to_iob2", "word_pieces",
           "write_conll"]
