"""Few-shot named-entity recognition (``--task ner``): CoNLL or EntLM JSON files and any Hugging Face encoder,
through one of three objectives:

- ``token-classification``: a tag per word at its first subword (BIO or IO), the standard "BERT-tagger";
- ``fffner``: FFF-NER's spans as masked-token predictions (:mod:`gentune.objectives.fffner`);
- ``entlm``: EntLM's label words through the masked-LM head (:mod:`gentune.objectives.entlm`).

Every objective is scored the same way: its predictions become entity spans (FFF-NER's resolved greedily by
is-entity confidence, a tagger's read as IOB2), then IOB2 tags, scored by seqeval in strict mode (entity-level
micro P/R/F1 and per type). FFF-NER also reports its span micro-F1 before and after overlap resolution.
"""

from __future__ import annotations

import os
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig, opt
from ..data import ner as nerdata
from ..errors import GentuneError
from ..metrics import entity_scores, span_scores
from ..models.hf import DEFAULT_MODEL, load_tokenizer, resolve_model_path
from ..registry import create
from ..train import Job
from .base import Splits, Task, register_task

OBJECTIVES = ("token-classification", "fffner", "entlm")
DATA_ENV = "GENTUNE_NER_DATA"
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class NerConfig(RunConfig):
    """A few-shot NER run: CoNLL/EntLM files and a Hugging Face encoder."""

    task: str = opt("ner", "ner")
    train: str | None = opt(None, "a training file: CoNLL (token ... TAG per line, blank line between sentences) or "
                                  "EntLM JSON lines ({\"text\": [...], \"label\": [...]})")
    dev: str | None = opt(None, "the dev file (same formats), scored at the end (and every eval_every_epochs)")
    test: str | None = opt(None, "a labelled file scored with the final model at the end (OUT/test.json)")
    data_dir: str | None = opt(None, "a folder with train.txt and dev.txt (default $GENTUNE_NER_DATA) when --train "
                                     "is not given")
    model: str = opt(DEFAULT_MODEL, "a Hugging Face encoder name or path (entlm: one with a masked-LM head)")
    objective: str = opt("token-classification", "token-classification (a tag per word), fffner (FFF-NER spans) or "
                                                 "entlm (EntLM label words): their options --set fffner.max_width=8")
    objective_options: dict[str, dict[str, Any]] = opt(factory=dict, help="the objective's options: --set "
                                                                          "fffner.max_width=6 entlm.virtual=false")
    init: str | None = opt(None, "start from a gentune run (its best/, or a text-pretraining run's model/) or a "
                                 "model folder")
    max_length: int = opt(128, "maximum tokens per input (a sentence; FFF-NER: a span with its context and markers)")
    types: list[str] | None = opt(None, "the entity types in label order (default: those of the training and dev "
                                        "tags, sorted)")
    tag_scheme: str = opt("auto", "the files' tags: auto or iob1 (IOB1 converted to IOB2), or iob2 (strict)")
    dev_from_train: int | None = opt(None, "carve this many seeded training sentences out as the dev set")
    precision: str = opt("auto", "the precision of scoring (dev, test): auto (bf16 on a GPU that has it, else fp32), "
                                 "fp32, or bf16 (about twice as fast on CPUs with AVX-512 BF16)")
    eval_every_epochs: int = opt(0, "evaluate at the end of every N-th epoch (0: only at the end: few-shot NER "
                                    "trains a fixed schedule and keeps the last model, as EntLM does)")

    def _checks(self) -> list[tuple[bool, str]]:
        return [
            *super()._checks(),
            (self.objective in OBJECTIVES, f"objective must be one of {', '.join(OBJECTIVES)}, got "
                                           f"{self.objective!r}"),
            (self.max_length >= 16, "max_length must be at least 16"),
            (self.tag_scheme in nerdata.SCHEMES, f"tag_scheme must be one of {', '.join(nerdata.SCHEMES)}"),
            (self.dev_from_train is None or self.dev_from_train > 0, "dev_from_train must be positive"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got "
                                           f"{self.precision!r}"),
            (not self.types or len(set(self.types)) == len(self.types), "types must not repeat"),
            (bool(self.train or self.data_dir or os.environ.get(DATA_ENV)),
             f"ner needs data: --train FILE --dev FILE, --data-dir DIR, or ${DATA_ENV}"),
        ]


def _files(cfg: NerConfig) -> tuple[str, str | None]:
    if cfg.train:
        return cfg.train, cfg.dev
    root = Path(cfg.data_dir or os.environ[DATA_ENV])
    dev = cfg.dev or (str(root / "dev.txt") if (root / "dev.txt").is_file() else None)
    return str(root / "train.txt"), dev


def datasets(cfg: NerConfig) -> Splits:
    """(train, dev) lists of :class:`gentune.data.ner.Sentence`; ``info``: the entity types."""
    known = set(cfg.types) if cfg.types else None
    train_file, dev_file = _files(cfg)
    train = nerdata.read(train_file, cfg.tag_scheme, known)
    dev = nerdata.read(dev_file, cfg.tag_scheme, known) if dev_file else None
    if cfg.dev_from_train:
        if cfg.dev_from_train >= len(train):
            raise GentuneError(f"dev_from_train {cfg.dev_from_train}: {train_file} has only {len(train)} sentences")
        order = list(range(len(train)))
        random.Random(cfg.seed + 1).shuffle(order)
        chosen = set(order[:cfg.dev_from_train])
        dev = [s for i, s in enumerate(train) if i in chosen]
        train = [s for i, s in enumerate(train) if i not in chosen]
    if dev is None:
        raise GentuneError(f"ner: no dev set (give --dev FILE or --set dev_from_train=N; {train_file} has no "
                           "dev.txt beside it)")
    types = list(cfg.types) if cfg.types else nerdata.entity_types(train + dev)
    if not types:
        raise GentuneError(f"{train_file}: no entities in the training or dev tags")
    return Splits(train, dev, info={"types": types})


# ----------------------------------------------------------------------------------------------- the model bundle


@dataclass
class NerModel:
    """A NER model with what reads and decodes it: its tokenizer, objective, types and the objective's ids."""

    model: torch.nn.Module
    tokenizer: Any
    objective: str
    types: list[str]
    max_length: int = 128
    scheme: str = "bio"  # token-classification
    label_ids: list[int] = field(default_factory=list)  # entlm: each type's label token
    markers: dict[str, int] = field(default_factory=dict)  # fffner
    max_width: int = 8  # fffner
    sampling: dict = field(default_factory=dict)  # fffner training: sample_spans' multiplier and per_entity
    speed: dict = field(default_factory=dict)  # the last scoring's throughput
    scores: Any = None  # fffner: the last scoring's rows (p(is-entity), type, p(type), sentence, start, end)

    name = "ner"

    @property
    def tags(self) -> list[str]:
        return nerdata.tag_labels(self.types, self.scheme)

    def meta(self) -> dict:
        out = {"task": "ner", "objective": self.objective, "types": self.types, "max_length": self.max_length}
        if self.objective == "token-classification":
            out["scheme"] = self.scheme
        elif self.objective == "entlm":
            out["label_ids"] = self.label_ids
        else:
            out.update(markers=self.markers, max_width=self.max_width)
        return out


def _start(cfg: NerConfig) -> str:
    if not cfg.init:
        return cfg.model
    p = Path(cfg.init)
    for q in (p / "best", p / "final", p / "model", p):
        if (q / "config.json").is_file() or (q / "encoder" / "config.json").is_file():
            return str(q)
    raise GentuneError(f"--init {cfg.init}: not a finished gentune run (no best/ or model/) nor a model folder")


def _options(cfg: NerConfig) -> dict:
    return dict(cfg.objective_options.get(cfg.objective, {}))


def _label_map(cfg: NerConfig, option: str | None) -> Path:
    if option:
        return Path(option)
    train_file, _ = _files(cfg)
    here = Path(train_file).resolve().parent
    for folder in (here, here.parent):
        found = sorted(folder.glob("label_map*.json"))
        if found:
            return found[0]
    raise GentuneError(f"entlm: no label_map*.json beside {train_file} or one folder up; give one with --set "
                       "entlm.label_map=FILE")


def new_model(cfg: NerConfig, types: list[str], objective) -> NerModel:
    """The model a run starts from: a saved NER model of the same objective trains on; otherwise ``cfg.model``
    (or ``--init``) with the objective's new parts. ``objective``: the objective's instance (its options)."""
    from ..models.checkpoint import NER_KINDS, load_ner_model, read_meta

    start = _start(cfg)
    saved = read_meta(start) or {}
    if saved.get("kind") in NER_KINDS.values():
        if saved.get("objective") != cfg.objective or saved.get("types") != types:
            raise GentuneError(f"--init {start}: a NER model of objective {saved.get('objective')} over types "
                               f"{saved.get('types')}; this run is {cfg.objective} over {types}")
        model, tokenizer, meta = load_ner_model(start)
        bundle = _bundle(model.train(), tokenizer, meta, cfg.max_length)
        if cfg.objective == "fffner":
            bundle.sampling = {"multiplier": objective.negative_multiplier, "per_entity": objective.per_entity}
        return bundle
    tokenizer = load_tokenizer(start)
    path = resolve_model_path(start)
    from ..models.hf import load_error, load_errors, quiet_transformers

    try:
        if cfg.objective == "token-classification":
            from transformers import AutoModelForTokenClassification

            tags = nerdata.tag_labels(types, objective.scheme)
            with quiet_transformers():
                model = AutoModelForTokenClassification.from_pretrained(
                    path, num_labels=len(tags), id2label=dict(enumerate(tags)),
                    label2id={t: i for i, t in enumerate(tags)}, ignore_mismatched_sizes=True)
            return NerModel(model, tokenizer, cfg.objective, types, cfg.max_length, scheme=objective.scheme)
        if cfg.objective == "fffner":
            from ..models.ner import SpanNer, add_markers, load_encoder

            encoder = load_encoder(path)
            markers = add_markers(encoder, tokenizer, objective.markers)
            return NerModel(SpanNer(encoder, len(types)), tokenizer, cfg.objective, types, cfg.max_length,
                            markers=markers, max_width=objective.max_width,
                            sampling={"multiplier": objective.negative_multiplier,
                                      "per_entity": objective.per_entity})
    except load_errors() as e:
        raise load_error(f"cannot load model {start!r}", e) from None
    from ..models.hf import load_masked_lm
    from ..models.ner import add_label_tokens, read_label_words

    mlm, head = load_masked_lm(start)
    if head != "pretrained":
        print(f"note: {start} has no masked-LM head: EntLM's label words are read through a new one (pretrain it "
              "first: gentune pretrain --objective mlm)", file=sys.stderr)
    where = _label_map(cfg, objective.label_map)
    ids = add_label_tokens(mlm, tokenizer, types, read_label_words(where), objective.virtual, str(where))
    return NerModel(mlm, tokenizer, cfg.objective, types, cfg.max_length, label_ids=ids)


def _bundle(model, tokenizer, meta: dict, max_length: int | None = None) -> NerModel:
    return NerModel(model, tokenizer, meta["objective"], list(meta["types"]), max_length or meta.get("max_length", 128),
                    scheme=meta.get("scheme", "bio"), label_ids=list(meta.get("label_ids", [])),
                    markers=dict(meta.get("markers", {})), max_width=int(meta.get("max_width", 8)))


# ----------------------------------------------------------------------------------------------- examples


def examples(bundle: NerModel, sentences: list, train: bool, seed: int = 0) -> list[dict]:
    """The encoded examples of ``sentences``: one per sentence (token-classification, entlm), or one per span
    (fffner: sampled gold and negative spans in training, every candidate span otherwise, sorted by length so
    that batches pad little)."""
    tok = bundle.tokenizer
    pieces = nerdata.word_pieces(tok, sentences)
    out = []
    if bundle.objective == "fffner":
        import numpy as np

        from ..models.ner import span_tokens

        ids = span_tokens(tok, bundle.markers)
        # the brackets mark the span: the text's own [ and ] are read as ( and ), as FFF-NER's data code does
        swap = {ids.left: _one_id(tok, "("), ids.right: _one_id(tok, ")")}
        pieces = [[[swap.get(t, t) for t in w] for w in words] for words in pieces]
        index = {t: i for i, t in enumerate(bundle.types)}
        rng = np.random.default_rng(seed)
        for k, (s, words) in enumerate(zip(sentences, pieces)):
            gold = {(a, b): t for a, b, t in s.spans}
            spans = (nerdata.sample_spans(s, rng, bundle.max_width, **bundle.sampling) if train else
                     [(a, b, gold.get((a, b))) for a, b in nerdata.candidate_spans(len(words), bundle.max_width)])
            for a, b, kind in spans:
                if not nerdata.span_fits(words, a, b, bundle.max_length):
                    continue
                input_ids, entity_at, type_at = nerdata.encode_span(words, a, b, ids, bundle.max_length)
                out.append({"input_ids": input_ids, "entity_at": entity_at, "type_at": type_at,
                            "is_entity": int(kind is not None), "type_label": index[kind] if kind else -100,
                            "sentence": k, "start": a, "end": b})
        if not train:
            out.sort(key=lambda e: len(e["input_ids"]))
        return out
    tags = {t: i for i, t in enumerate(bundle.tags)}
    label = dict(zip(bundle.types, bundle.label_ids))
    for s, words in zip(sentences, pieces):
        input_ids, firsts = nerdata.encode_words(words, tok.cls_token_id, tok.sep_token_id, bundle.max_length)
        first = [0] * len(input_ids)
        for p in firsts:
            first[p] = 1
        if bundle.objective == "token-classification":
            labels = [-100] * len(input_ids)
            for p, tag in zip(firsts, s.tags):
                labels[p] = tags[tag if bundle.scheme == "bio" else "O" if tag == "O" else "I-" + tag[2:]]
        else:  # entlm: every token predicts itself, an entity word's first subword its type's label word
            labels = [-100] + input_ids[1:-1] + [-100]
            for w, (p, tag) in enumerate(zip(firsts, s.tags)):
                if tag != "O":
                    labels[p] = label[tag[2:]]
                    for q in range(p + 1, p + len(words[w])):
                        labels[q] = -100
        out.append({"input_ids": input_ids, "labels": labels, "first": first})
    return out


def _one_id(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else tokenizer.unk_token_id


def collate(bundle: NerModel):
    pad = bundle.tokenizer.pad_token_id if bundle.tokenizer.pad_token_id is not None else 0

    def fn(features: list[dict]) -> dict:
        return nerdata.pad_batch(features, pad)

    return fn


# ----------------------------------------------------------------------------------------------- decoding


def _forward(model, batch: dict, objective: str):
    keys = ("input_ids", "attention_mask", "entity_at", "type_at") if objective == "fffner" else \
        ("input_ids", "attention_mask")
    return model(**{k: batch[k] for k in keys})


def predict(bundle: NerModel, model, dataloader, accelerator, sentences: list, progress: bool = False):
    """Scored entities of every sentence, [(start, end, type, score), ...] each, non-overlapping; for fffner also
    the raw entity spans before overlap resolution. Gathered across processes."""
    from ..progress import WorkProgress

    model.eval()
    bar = WorkProgress(len(dataloader), progress and accelerator.is_main_process, "ner", "batch", sys.stderr)
    rows = []
    with torch.inference_mode():
        for batch in dataloader:
            out = _forward(model, batch, bundle.objective)
            if bundle.objective == "fffner":
                p_entity = out.entity_logits.float().softmax(-1)[:, 1]
                p_type, kind = out.type_logits.float().softmax(-1).max(-1)
                got = accelerator.gather_for_metrics((p_entity, kind, p_type, batch["sentence"], batch["start"],
                                                      batch["end"]))
                rows.append(torch.stack([g.float().cpu() for g in got], -1))
            else:
                logits = out.logits.float()
                if bundle.objective == "entlm":  # the vocabulary's argmax, and its probability
                    best, top = logits.max(-1)
                    score = (best - logits.logsumexp(-1)).exp()
                    which = torch.zeros_like(top)
                    for t, i in enumerate(bundle.label_ids):
                        which[top == i] = t + 1  # 0: O
                else:
                    score, which = logits.softmax(-1).max(-1)
                which = accelerator.pad_across_processes(which, dim=1, pad_index=0)
                score = accelerator.pad_across_processes(score, dim=1, pad_index=0)
                first = accelerator.pad_across_processes(batch["first"], dim=1, pad_index=0)
                which, score, first = accelerator.gather_for_metrics((which, score, first))
                for w, s, f in zip(which.cpu(), score.cpu(), first.cpu()):
                    keep = f.bool()
                    rows.append((w[keep].tolist(), s[keep].tolist()))
            bar.update()
    bar.close()
    if bundle.objective == "fffner":
        bundle.scores = torch.cat(rows) if rows else torch.zeros(0, 6)
        return _decode_spans(bundle, bundle.scores, len(sentences))
    return _decode_tags(bundle, rows, sentences), None


def _decode_spans(bundle: NerModel, table: torch.Tensor, n: int):
    raw: list[list] = [[] for _ in range(n)]
    for p_entity, kind, _p_type, k, a, b in table.tolist():
        if p_entity > 0.5:  # the is-entity logit wins
            raw[int(k)].append((int(a), int(b), bundle.types[int(kind)], float(p_entity)))
    return [nerdata.resolve_overlaps(r) for r in raw], raw


def _decode_tags(bundle: NerModel, rows: list, sentences: list) -> list[list]:
    names = bundle.tags if bundle.objective == "token-classification" else ["O", *[f"I-{t}" for t in bundle.types]]
    out = []
    for (which, score), s in zip(rows, sentences):
        tags = [names[w] for w in which] + ["O"] * (len(s.tokens) - len(which))  # words past max_length: O
        probs = list(score) + [1.0] * (len(s.tokens) - len(which))
        spans = nerdata.tags_to_spans(nerdata.to_iob2(tags))
        out.append([(a, b, t, float(sum(probs[a:b]) / (b - a))) for a, b, t in spans])
    return out


def metrics_of(sentences: list, entities: list[list], raw: list[list] | None = None) -> dict[str, float]:
    """Entity micro P/R/F1 (seqeval strict IOB2) and F1 per type; with ``raw`` (FFF-NER's spans before overlap
    resolution) the span micro-F1 raw and resolved."""
    gold = [list(s.tags) for s in sentences]
    pred = [list(nerdata.spans_to_tags([e[:3] for e in ents], len(s.tokens))) for s, ents in zip(sentences, entities)]
    scores = entity_scores(gold, pred)
    out = {k: scores[k] for k in ("f1", "precision", "recall")}
    out.update({f"f1_{t}": v["f1"] for t, v in scores["per_type"].items()})
    if raw is not None:
        gold_spans = [set(s.spans) for s in sentences]
        out["span_f1_raw"] = span_scores(gold_spans, [{r[:3] for r in rs} for rs in raw])["f1"]
        out["span_f1_resolved"] = span_scores(gold_spans, [{e[:3] for e in es} for es in entities])["f1"]
    return out


def evaluate_model(bundle: NerModel, model, dataloader, accelerator, sentences: list,
                   precision: str = "fp32") -> dict[str, float]:
    dtype = _precision(precision, accelerator.device)
    with torch.autocast(accelerator.device.type, dtype=dtype, enabled=dtype is not None):
        entities, raw = predict(bundle, model, dataloader, accelerator, sentences, progress=len(dataloader) > 20)
    return metrics_of(sentences, entities, raw)


# ----------------------------------------------------------------------------------------------- the run


def check(cfg: NerConfig) -> None:
    create("objective", cfg.objective, **_options(cfg))  # bad options fail before any work
    resolve_model_path(_start(cfg))
    train_file, dev_file = _files(cfg)
    for f in (train_file, dev_file, cfg.test):
        if f and not Path(f).is_file():
            raise GentuneError(f"{f}: no such file")


def build(cfg: NerConfig) -> Job:
    from ..models.checkpoint import save_ner_model

    data = datasets(cfg)
    types = data.info["types"]
    objective = create("objective", cfg.objective, **_options(cfg))
    bundle = new_model(cfg, types, objective)
    train_set = examples(bundle, data.train, train=True, seed=cfg.seed)
    dev_set = examples(bundle, data.heldout, train=False)
    gold = [(b - a) for s in data.train + data.heldout for a, b, _ in s.spans]
    summary = {"task": "ner", "model": cfg.model, "objective": cfg.objective, "types": types,
               "train_sentences": len(data.train), "dev_sentences": len(data.heldout),
               "train_examples": len(train_set)}
    if bundle.objective == "fffner":
        summary["gold_wider_than_max_width"] = sum(w > bundle.max_width for w in gold) / max(len(gold), 1)
        summary["dev_spans"] = len(dev_set)

    def save(unwrapped, directory: Path, meta: dict) -> None:
        save_ner_model(unwrapped, bundle.tokenizer, directory, {**bundle.meta(), **meta,
                                                                "base_model": cfg.model})

    def on_end(final, out: Path) -> None:
        from ..fs import write_json_atomic

        scored = evaluate(str(out / "best"), cfg.test, cfg.eval_batch_size, cfg.precision)
        write_json_atomic(out / "test.json", scored)
        print(f"test {cfg.test}: f1 {scored['f1']:.4f}")

    return Job(model=bundle.model, objective=objective, train_set=train_set, collate=collate(bundle),
               dev_set=dev_set,
               evaluate=lambda m, dl, acc: evaluate_model(bundle, m, dl, acc, data.heldout, cfg.precision),
               main_metric="f1", save=save, meta=bundle.meta(), summary=summary,
               on_end=on_end if cfg.test else None)


# ----------------------------------------------------------------------------------------------- evaluate, predict


def load(checkpoint: str, name: str = "ner") -> NerModel:
    from ..models.checkpoint import load_ner_model

    model, tokenizer, meta = load_ner_model(checkpoint)
    return _bundle(model, tokenizer, meta)


def read(path: str, bundle: NerModel) -> list:
    """A labelled NER file; a type the model does not know is a one-line error naming the file and line."""
    return nerdata.read(path, types=set(bundle.types))


def _precision(precision: str, device: torch.device) -> torch.dtype | None:
    if precision not in PRECISIONS:
        raise GentuneError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return None


def entities_of(bundle: NerModel, sentences: list, batch_size: int = 64, precision: str = "auto",
                progress: bool = False):
    """(entities, raw spans or None) of ``sentences`` with no gradient, the examples batched by length with
    dynamic padding (bf16 with ``precision`` bf16, or auto on a GPU that has it); the throughput goes to
    ``bundle.speed``."""
    from accelerate import Accelerator

    if batch_size < 1:
        raise GentuneError(f"batch_size must be positive, got {batch_size}")
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    dtype = _precision(precision, accelerator.device)
    started = time.perf_counter()
    data = examples(bundle, sentences, train=False)
    dl = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate(bundle))
    model, dl = accelerator.prepare(bundle.model, dl)
    with torch.autocast(accelerator.device.type, dtype=dtype, enabled=dtype is not None):
        found = predict(bundle, model, dl, accelerator, sentences, progress)
    seconds = time.perf_counter() - started
    accelerator.free_memory()
    bundle.speed = {"seconds": seconds, "sentences": len(sentences), "sentences_per_second": len(sentences) / seconds,
                    "inputs": len(data), "inputs_per_second": len(data) / seconds,
                    "precision": "bf16" if dtype is not None else "fp32"}
    return found


def score(bundle: NerModel, sentences: list, batch_size: int = 64, precision: str = "auto") -> dict:
    """The metrics of :func:`metrics_of` on every sentence of a labelled file."""
    entities, raw = entities_of(bundle, sentences, batch_size, precision, progress=len(sentences) > 200)
    return metrics_of(sentences, entities, raw)


def evaluate(checkpoint: str, data: str, batch_size: int = 64, precision: str = "auto") -> dict:
    bundle = load(checkpoint)
    sentences = read(data, bundle)
    metrics = score(bundle, sentences, batch_size, precision)
    return {"task": "ner", "file": str(data), "examples": len(sentences), **metrics, "speed": bundle.speed}


WORD = re.compile(r"(?:[A-Za-z]\.){2,}|\d+(?:[,.]\d+)+|\w+(?:[-']\w+)*|[^\w\s]")


def split_words(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Raw text as CoNLL-style words and their character offsets: abbreviations (U.S.), numbers (3,000 and 1.5),
    words with inner hyphens or apostrophes, and each other character alone."""
    found = list(WORD.finditer(text))
    return [m.group() for m in found], [m.span() for m in found]


def predict_entities(bundle: NerModel, texts: list[str] | None = None, sentences: list | None = None,
                     batch_size: int = 64, precision: str = "auto", progress: bool = False) -> list[dict]:
    """The entities of raw ``texts`` (split by :func:`split_words`) or tokenized ``sentences``, one dict each:
    ``sentence`` (its index), ``text``, ``type``, ``start`` and ``end`` (character offsets into the text; for
    tokenized sentences into their words joined by single spaces), ``token_start``, ``token_end`` (words, end
    exclusive) and ``score`` (FFF-NER: p(is-entity); a tagger: the mean probability of its words' tags)."""
    if (texts is None) == (sentences is None):
        raise GentuneError("predict: give texts or sentences")
    if texts is not None:
        split = [split_words(t) for t in texts]
        sentences = [nerdata.Sentence(tuple(w), ("O",) * len(w)) for w, _ in split]
        offsets = [o for _, o in split]
        sources = list(texts)
    else:
        sentences = [nerdata.Sentence(s.tokens, ("O",) * len(s.tokens)) for s in sentences]  # tags are not read
        sources, offsets = [], []
        for s in sentences:
            starts = [0]
            for w in s.tokens[:-1]:
                starts.append(starts[-1] + len(w) + 1)
            sources.append(" ".join(s.tokens))
            offsets.append([(a, a + len(w)) for a, w in zip(starts, s.tokens)])
    keep = [k for k, s in enumerate(sentences) if s.tokens]
    found, _ = entities_of(bundle, [sentences[k] for k in keep], batch_size, precision, progress)
    out = []
    for k, entities in zip(keep, found):
        for a, b, kind, p in entities:
            start, end = offsets[k][a][0], offsets[k][b - 1][1]
            out.append({"sentence": k, "text": sources[k][start:end], "type": kind, "start": start, "end": end,
                        "token_start": a, "token_end": b, "score": round(p, 6)})
    return out


def describe() -> tuple[list[str], list[str]]:
    return ([f"ner    few-shot named entities from CoNLL or EntLM JSON files; --objective {' | '.join(OBJECTIVES)}"],
            ["any Hugging Face encoder (entlm: with a masked-LM head, e.g. splade_tiny_bert_mlm)"])


TASK = register_task(Task(
    name="ner",
    config=NerConfig,
    build=build,
    datasets=datasets,
    summary="few-shot named-entity recognition: token classification, FFF-NER spans or EntLM label words",
    check=check,
    load=load,
    read=read,
    score=score,
    describe=describe,
))

__all__ = ["NerConfig", "NerModel", "TASK", "build", "datasets", "entities_of", "evaluate", "examples", "load",
           "metrics_of", "predict", "predict_entities", "score", "split_words"]
