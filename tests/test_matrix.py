"""The registry-driven test matrix: every registered task, objective and regularizer has a row here, and each row
runs two optimizer steps of the real loop on a tiny model, a save/load round trip and an exact resume.

- objectives: a tiny model and a synthetic in-memory batch through :func:`gentune.train.fit`;
- regularizers: on the row of an objective they fit, through ``cfg.regularizer`` (the registry path): their named
  terms are logged, non-zero and finite, and add up to the loss; their ``state_dict`` restored into a fresh
  instance gives the same terms;
- tasks: tiny files through :func:`gentune.train.run`: a saved model scores what the run reported, and a run killed
  after a checkpoint and rerun ends with the same log and metrics as one that was not.

``test_every_registered_piece_has_a_row`` fails when a registered name has no row.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from gentune import registry
from gentune.config import RunConfig, apply_mapping
from gentune.regularizers.base import Context, Regularizer, build_regularizers
from gentune.train import Hooks, Job, fit
from gentune.train.run import save_resume_checkpoint
from gentune.train.state import make_accelerator

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
SIZE = 16
SENTENCES = ["a fine film", "dull , slow and far too long", "warm and funny", "a mess", "the best of the year",
             "nothing works", "lovely", "tedious and flat"]


# ------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """An image folder: 2 classes x 8 PNGs of 16x16, each class a different dominant colour."""
    from PIL import Image

    root = tmp_path_factory.mktemp("matrix-images") / "train"
    rng = np.random.default_rng(0)
    for ci, c in enumerate(["cat", "dog"]):
        (root / c).mkdir(parents=True)
        for i in range(8):
            base = np.zeros((SIZE, SIZE, 3))
            base[..., ci] = 170
            Image.fromarray((base + rng.normal(0, 35, (SIZE, SIZE, 3))).clip(0, 255).astype(np.uint8)).save(
                root / c / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def sst2_files(tmp_path_factory) -> tuple[Path, Path]:
    """Tiny SST-2 TSV files (the GLUE layout: sentence, label)."""
    root = tmp_path_factory.mktemp("matrix-sst2")
    for name, n in (("train", 16), ("dev", 8)):
        rows = [f"{SENTENCES[i % len(SENTENCES)]}\t{i % 2}" for i in range(n)]
        (root / f"{name}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    return root / "train.tsv", root / "dev.tsv"


@dataclass
class Env:
    text_model: str  # a tiny BERT folder
    folder: Path  # an image folder
    sst2: tuple[Path, Path]
    tmp: Path


@pytest.fixture()
def env(tiny_model, folder, sst2_files, tmp_path, monkeypatch) -> Env:
    monkeypatch.setenv("GENTUNE_CACHE", str(tmp_path / "cache"))
    return Env(tiny_model, folder, sst2_files, tmp_path)


# ------------------------------------------------------------------------------------------------- objective rows


def _images(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8))


def _mean_loss(objective) -> Callable:
    """``evaluate``: the objective's mean loss on the dev batches, masks and noise from a fixed seed."""

    def evaluate(model, dataloader, accelerator) -> dict:
        model.eval()
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(0)
            losses = [float(objective(model, b)["loss"]) for b in dataloader]
        return {"loss": sum(losses) / len(losses)}

    return evaluate


def _job(model, objective, train_set, collate, context: dict | None = None) -> Job:
    return Job(model=model, objective=objective, train_set=train_set, collate=collate, dev_set=train_set,
               evaluate=_mean_loss(objective), main_metric="loss", greater_is_better=False, context=context or {})


def _image_context(env: Env) -> dict:
    from gentune.data.images import image_stream

    return {"mean": MEAN, "std": STD, "image_size": SIZE, "unlabeled": image_stream}


def _image_data(labels: bool):
    from gentune.data.images import EvalTransform, ImageCollator

    images = _images()
    target = [i % 2 for i in range(len(images))] if labels else [-1] * len(images)
    return list(zip(images, target)), ImageCollator(EvalTransform(MEAN, STD))


def text_row(env: Env, seed: int = 0) -> Job:
    from gentune.data import get_task
    from gentune.models.hf import load_for_task, load_tokenizer
    from gentune.objectives.classification import Collator

    torch.manual_seed(seed)
    model = load_for_task(env.text_model, get_task("sst2"))
    tok = load_tokenizer(env.text_model)
    examples = [{**tok(s, truncation=True, max_length=32), "labels": i % 2} for i, s in enumerate(SENTENCES)]
    return _job(model, registry.create("objective", "sequence-classification"), examples, Collator(tok, False))


def image_classification_row(env: Env, seed: int = 0) -> Job:
    from gentune.models.vision import ImageClassifier, create_encoder

    torch.manual_seed(seed)
    model = ImageClassifier(create_encoder("vit-micro-p4", image_size=SIZE), 2, head="mlp")
    data, collate = _image_data(labels=True)
    context = {**_image_context(env), "train_inputs": lambda: collate(data)["pixel_values"]}  # as the task gives
    return _job(model, registry.create("objective", "image-classification", label_smoothing=0.1), data, collate,
                context)


def mae_row(env: Env, seed: int = 0) -> Job:
    from gentune.models.vision import create_encoder

    torch.manual_seed(seed)
    objective = registry.create("objective", "mae", decoder_dim=32, decoder_depth=1)
    model = objective.build(create_encoder("vit-micro-p4", image_size=SIZE), image_size=SIZE)
    data, collate = _image_data(labels=False)
    return _job(model, objective, data, collate, _image_context(env))


def context_encoder_row(env: Env, seed: int = 0) -> Job:
    from gentune.models.vision import create_encoder

    torch.manual_seed(seed)
    objective = registry.create("objective", "context-encoder", mask="regions", adv_weight=0.001)
    model = objective.build(create_encoder("conv-tiny"), image_size=SIZE)
    data, collate = _image_data(labels=False)
    return _job(model, objective, data, collate, _image_context(env))


def mlm_row(env: Env, seed: int = 0) -> Job:
    from gentune.models.hf import load_masked_lm, load_tokenizer
    from gentune.objectives.mlm import MaskedLMCollator

    torch.manual_seed(seed)
    model, _ = load_masked_lm(env.text_model)  # a BertModel without a head: the head is tied to the embeddings
    tok = load_tokenizer(env.text_model)
    examples = [tok(s, truncation=True, max_length=32, return_special_tokens_mask=True) for s in SENTENCES]
    objective = registry.create("objective", "mlm", mask_prob=0.3).bind(tok)
    return _job(model, objective, examples, MaskedLMCollator(tok))


def prompt_row(env: Env, seed: int = 0) -> Job:
    from gentune.data import get_task
    from gentune.data.prompts import packaged
    from gentune.models.hf import load_tokenizer
    from gentune.objectives.classification import Collator
    from gentune.objectives.prompt import tokenize_prompt
    from gentune.tasks.text_classification import prompt_model

    import datasets

    torch.manual_seed(seed)
    tok = load_tokenizer(env.text_model)
    prompt = packaged("sst2")
    model, _ = prompt_model(env.text_model, tok, prompt, note=False)
    rows = datasets.Dataset.from_dict({"text_a": SENTENCES, "text_b": [None] * len(SENTENCES),
                                       "label": [i % 2 for i in range(len(SENTENCES))]})
    examples = tokenize_prompt(rows, tok, prompt, 32)
    return _job(model, registry.create("objective", "prompt"), list(examples), Collator(tok, False))


NER_SENTENCES = [(("John", "Smith", "visited", "Paris", "."), ("B-PER", "I-PER", "O", "B-LOC", "O")),
                 (("Maria", "left", "Rome", "today"), ("B-PER", "O", "B-LOC", "O")),
                 (("Nothing", "happened", "."), ("O", "O", "O"))]


def ner_row(objective: str) -> Callable:
    """A NER objective's row: the tiny BERT with the objective's parts, three sentences encoded by the task."""

    def row(env: Env, seed: int = 0) -> Job:
        from transformers import AutoModel, AutoModelForTokenClassification

        from gentune.data.ner import Sentence
        from gentune.models.hf import load_masked_lm, load_tokenizer
        from gentune.models.ner import SpanNer, add_label_tokens, add_markers
        from gentune.tasks.ner import NerModel, collate, examples

        torch.manual_seed(seed)
        tok, types = load_tokenizer(env.text_model), ["LOC", "PER"]
        if objective == "token-classification":
            bundle = NerModel(AutoModelForTokenClassification.from_pretrained(env.text_model, num_labels=5), tok,
                              objective, types, 32)
        elif objective == "fffner":
            encoder = AutoModel.from_pretrained(env.text_model, add_pooling_layer=False)
            bundle = NerModel(None, tok, objective, types, 48, markers=add_markers(encoder, tok), max_width=2,
                              sampling={"multiplier": 1.0, "per_entity": 1})
            bundle.model = SpanNer(encoder, len(types))
        else:
            mlm, _ = load_masked_lm(env.text_model)
            ids = add_label_tokens(mlm, tok, types, {"PER": ["john"], "LOC": ["paris"]})
            bundle = NerModel(mlm, tok, objective, types, 32, label_ids=ids)
        data = examples(bundle, [Sentence(t, g) for t, g in NER_SENTENCES * 2], train=True, seed=0)  # 2 steps/epoch
        return _job(bundle.model, registry.create("objective", objective), data, collate(bundle))

    return row


def point_row(objective: str) -> Callable:
    """A point objective's row: a tiny PointNet on 8 random shapes of 64 points."""

    def row(env: Env, seed: int = 0) -> Job:
        from gentune.models.points import PointNet
        from gentune.tasks.point_pretraining import collate

        torch.manual_seed(seed)
        shapes = list(torch.from_numpy(np.random.default_rng(0).normal(size=(8, 64, 3)).astype(np.float32)))
        options = {"npos": 16} if objective == "point-contrast" else {"npos": 16, "candidates": 16}
        obj = registry.create("objective", objective, **options)
        return _job(obj.build(PointNet(widths=(8, 16))), obj, shapes, collate)

    return row


def point_classification_row(env: Env, seed: int = 0) -> Job:
    from gentune.models.points import PointClassifier, PointNet
    from gentune.tasks.point_classification import collate

    torch.manual_seed(seed)
    rng = np.random.default_rng(0)
    shapes = [(torch.from_numpy(rng.normal(size=(64, 3)).astype(np.float32)), torch.tensor(i % 2)) for i in range(8)]
    return _job(PointClassifier(PointNet(widths=(8, 16)), 2, head="mlp"),
                registry.create("objective", "point-classification"), shapes, collate)


OBJECTIVES = {
    "point-classification": point_classification_row,
    "point-contrast": point_row("point-contrast"),
    "hardest-contrastive": point_row("hardest-contrastive"),
    "token-classification": ner_row("token-classification"),
    "fffner": ner_row("fffner"),
    "entlm": ner_row("entlm"),
    "sequence-classification": text_row,
    "mlm": mlm_row,
    "prompt": prompt_row,
    "image-classification": image_classification_row,
    "mae": mae_row,
    "context-encoder": context_encoder_row,
}


# ------------------------------------------------------------------------------------------------- regularizer rows


@dataclass
class RegRow:
    objective: str  # the objective row it runs on
    terms: tuple[str, ...]  # the loss terms it must log, non-zero at the last step
    options: Callable[[Env], dict] = lambda env: {}


REGULARIZERS = {
    "l2sp": RegRow("sequence-classification", ("l2sp",), lambda env: {"alpha": 1.0}),
    "smart": RegRow("sequence-classification", ("smart_adv", "bregman")),
    "smart-adv": RegRow("sequence-classification", ("smart_adv",)),
    "bregman": RegRow("sequence-classification", ("bregman",)),
    "r3f": RegRow("sequence-classification", ("r3f",)),
    "rdrop": RegRow("sequence-classification", ("rdrop", "rdrop_nll")),
    "radreg": RegRow("mae", ("radreg",), lambda env: {"data": str(env.folder), "head": "mlp", "batch_size": 4}),
    # no loss term: it ties gradients (the ViT's patch embedding is the convolution it groups here)
    "neuron-grouping": RegRow("image-classification", (), lambda env: {"fraction": [0.25], "regroup_every": 2}),
}


# ------------------------------------------------------------------------------------------------- task rows


def text_task(env: Env, out: Path, **kw):
    from gentune.tasks.text_classification import TextClassificationConfig

    train, dev = env.sst2
    return apply_mapping(TextClassificationConfig(), dict(task="sst2", out=str(out), model=env.text_model,
                                                          train=str(train), dev=str(dev), batch_size=4, lr=1e-3,
                                                          max_length=32, **kw), "test")


def image_task(env: Env, out: Path, **kw):
    from gentune.tasks.image_classification import ImageClassificationConfig

    return apply_mapping(ImageClassificationConfig(), dict(data=str(env.folder), out=str(out), model="vit-micro-p4",
                                                           val_size=4, batch_size=4, lr=1e-3, eval_batch_size=4,
                                                           **kw), "test")


def pretrain_task(env: Env, out: Path, **kw):
    from gentune.tasks.image_pretraining import ImagePretrainingConfig

    return apply_mapping(ImagePretrainingConfig(), dict(data=str(env.folder), out=str(out), model="vit-micro-p4",
                                                        val_size=4, batch_size=4, eval_batch_size=4,
                                                        objective_options={"mae": {"decoder_dim": 32}}, **kw),
                         "test")


def text_pretrain_task(env: Env, out: Path, **kw):
    from gentune.tasks.text_pretraining import TextPretrainingConfig

    text = env.tmp / "text.txt"
    text.write_text("\n".join(SENTENCES * 5) + "\n")
    return apply_mapping(TextPretrainingConfig(), dict(data=str(text), out=str(out), model=env.text_model,
                                                       val_size=4, batch_size=4, eval_batch_size=4, max_length=32,
                                                       objective_options={"mlm": {"mask_prob": 0.3}}, **kw), "test")


def ner_task(env: Env, out: Path, **kw):
    from gentune.data.ner import Sentence, write_conll
    from gentune.tasks.ner import NerConfig

    sentences = [Sentence(t, g) for t, g in NER_SENTENCES]
    write_conll(sentences * 2, env.tmp / "ner-train.txt")
    write_conll(sentences, env.tmp / "ner-dev.txt")
    return apply_mapping(NerConfig(), dict(train=str(env.tmp / "ner-train.txt"), dev=str(env.tmp / "ner-dev.txt"),
                                           out=str(out), model=env.text_model, objective="fffner", batch_size=4,
                                           eval_batch_size=8, lr=1e-3, max_length=48,
                                           objective_options={"fffner": {"max_width": 2}}, **kw), "test")


def point_pretrain_task(env: Env, out: Path, **kw):
    from gentune.tasks.point_pretraining import PointPretrainingConfig

    data = env.tmp / "points.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x_train=rng.normal(size=(12, 64, 3)).astype(np.float16), y_train=np.arange(12) % 2,
             classes=np.array(["a", "b"]))
    return apply_mapping(PointPretrainingConfig(), dict(data=str(data), out=str(out), val_size=4, batch_size=4,
                                                        eval_batch_size=4, model_options={"widths": [8, 16]},
                                                        objective_options={"point-contrast": {"npos": 16}}, **kw),
                         "test")


def point_classification_task(env: Env, out: Path, **kw):
    from gentune.tasks.point_classification import PointClassificationConfig

    data = env.tmp / "labelled-points.npz"
    rng = np.random.default_rng(0)
    y = np.arange(16) % 2
    x = rng.normal(size=(16, 64, 3)) + y[:, None, None] * np.array([2.0, 0, 0])  # two classes apart on x
    np.savez(data, x_train=x.astype(np.float32), y_train=y, classes=np.array(["a", "b"]))
    return apply_mapping(PointClassificationConfig(), dict(data=str(data), out=str(out), val_size=4, batch_size=4,
                                                           eval_batch_size=4, model_options={"widths": [8, 16]},
                                                           **kw), "test")


TASKS = {"text-classification": text_task, "image-classification": image_task, "image-pretraining": pretrain_task,
         "text-pretraining": text_pretrain_task, "ner": ner_task, "point-pretraining": point_pretrain_task,
         "point-classification": point_classification_task}
ROWS = {"task": TASKS, "objective": OBJECTIVES, "regularizer": REGULARIZERS}


def missing_rows() -> list[str]:
    """Registered pieces without a row here, as "kind name"."""
    return [f"{kind} {name}" for kind, rows in ROWS.items() for name in registry.list_methods(kind) if name not in rows]


def test_every_registered_piece_has_a_row():
    assert missing_rows() == []


def test_a_registered_piece_without_a_row_is_caught():
    @registry.register("regularizer", "test-unlisted")
    class Unlisted(Regularizer):
        """A regularizer registered without a matrix row."""

        def __call__(self, model, batch, outputs):
            return {}

    try:
        assert missing_rows() == ["regularizer test-unlisted"]
    finally:
        registry.unregister("regularizer", "test-unlisted")
    assert missing_rows() == []


# ------------------------------------------------------------------------------------------------- the checks


class _Keep(Hooks):
    """Records every log line; saves a resume checkpoint at each resume point and keeps a copy of step 1's."""

    def __init__(self, accelerator, out: Path):
        self.acc, self.out, self.records = accelerator, out, []

    def log(self, record):
        self.records.append(record)

    def checkpoint(self, state, save):
        save_resume_checkpoint(self.acc, self.out, save)
        if state.step == 1 and not (self.out / "step1").exists():
            shutil.copytree(self.out / "checkpoint", self.out / "step1")


def _cfg(**kw) -> RunConfig:
    return apply_mapping(RunConfig(), {"out": "unused", "max_steps": 3, "batch_size": 4, "lr": 1e-3,
                                       "save_steps": 1, "eval_every_epochs": 1, **kw}, "test")


def _train(records: list[dict]) -> list[dict]:
    return [r for r in records if r["type"] == "train"]


def _fit_and_resume(make_job: Callable[[], Job], cfg: RunConfig, out: Path):
    """(Fit of an uninterrupted run, its records, the records of a run resumed from its step-1 checkpoint)."""
    acc = make_accelerator(cfg)
    keep = _Keep(acc, out)
    result = fit(make_job(), cfg, acc, keep)
    again = _Keep(acc, out / "again")
    fit(make_job(seed=1), cfg, acc, again, resume_from=out / "step1")  # other initial weights: the checkpoint's win
    return result, keep.records, again.records


def _same_records(resumed: list[dict], full: list[dict]) -> None:
    later = [r for r in full if r["step"] > 1]
    assert [(r["type"], r["step"]) for r in resumed] == [(r["type"], r["step"]) for r in later]
    for a, b in zip(resumed, later):
        for key, value in b.items():
            if isinstance(value, float):
                assert a[key] == pytest.approx(value, rel=1e-5, abs=1e-7), (key, a, b)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_objective_row(name, env):
    """Two (three) optimizer steps move the weights and log a finite loss; a run resumed from its step-1
    checkpoint logs exactly what the uninterrupted run logged after step 1."""
    make = lambda seed=0: OBJECTIVES[name](env, seed)  # noqa: E731
    start = {k: v.clone() for k, v in make().model.state_dict().items()}
    result, records, resumed = _fit_and_resume(make, _cfg(), env.tmp)
    train = _train(records)
    assert [r["step"] for r in train] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in train)
    assert all(r["loss"] == pytest.approx(r["task"]) for r in train)
    moved = [k for k, v in result.model.state_dict().items() if v.is_floating_point()
             and not torch.equal(v.cpu(), start[k])]
    assert moved, "no parameter moved"
    assert result.final_dev is not None and math.isfinite(result.final_dev["loss"])
    _same_records(resumed, records)


@pytest.mark.parametrize("name", sorted(REGULARIZERS))
def test_regularizer_row(name, env):
    """Through the registry (cfg.regularizer): its terms are logged at every step, finite, non-zero at the last
    one, and add up with the task loss to the loss; the step-1 resume reproduces the run; its state restored into
    a fresh instance gives the same terms on the next batch."""
    row = REGULARIZERS[name]
    options = row.options(env)
    cfg = _cfg(regularizer=[name], regularizer_options={name: options} if options else {})
    make = lambda seed=0: OBJECTIVES[row.objective](env, seed)  # noqa: E731
    result, records, resumed = _fit_and_resume(make, cfg, env.tmp)
    train = _train(records)
    assert len(train) == 3
    for r in train:
        assert set(row.terms) <= set(r), (row.terms, r)
        assert all(math.isfinite(r[t]) for t in row.terms)
        assert r["loss"] == pytest.approx(r["task"] + sum(r[t] for t in row.terms), rel=1e-5)
    assert all(train[-1][t] != 0 for t in row.terms), train[-1]
    _same_records(resumed, records)

    # the state round trip: a fresh instance, set up alike, restored from the trained one's state
    job = make()
    trained = result.regularizers[0]
    state = copy.deepcopy(trained.state_dict())
    fresh = build_regularizers([{name: options}], Context(result.total_steps, job.model, dict(job.context)))[0]
    fresh.load_state_dict(state)
    model = result.model.train()
    batch = job.collate([job.train_set[i] for i in range(4)])
    outputs = job.objective(model, batch)["output"]
    got = []
    for reg in (trained, fresh):
        torch.manual_seed(3)
        got.append({k: float(v.detach()) for k, v in reg(model, batch, outputs).items()})
    assert got[1] == pytest.approx(got[0], rel=1e-6)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_row(name, env, monkeypatch):
    """The task through run(): two steps, the saved model scores what the run reported (fine-tuning) or loads
    back with its weights (pretraining), and a run killed after a checkpoint, rerun, matches an uninterrupted one."""
    from gentune.tasks import tasks
    from gentune.train import run
    from gentune.train.run import _RunFolder

    task = next(t for t in tasks() if t.name == name)
    make = TASKS[name]
    full = env.tmp / "full"
    summary = run(make(env, full, max_steps=4, eval_steps=2, save_steps=1), task.build)
    assert summary["train_steps"] == 4 and summary["final_dev"] is not None
    if task.stage == "finetune":
        loaded = task.load(str(full / "best"), make(env, full).task)
        data = task.datasets(make(env, full))
        scored = task.score(loaded, data.heldout)
        assert scored == pytest.approx(summary["best_dev"], rel=1e-5)
    elif name == "text-pretraining":
        from transformers import AutoModelForMaskedLM

        from gentune.models.checkpoint import read_meta

        assert read_meta(full / "model")["kind"] == "text-mlm"
        loaded = AutoModelForMaskedLM.from_pretrained(full / "model")  # the standard way, with no gentune code
        trained = {k: v for k, v in loaded.state_dict().items()}
        assert trained and all(torch.isfinite(v).all() for v in trained.values() if v.is_floating_point())
    elif name == "point-pretraining":
        from gentune.models.checkpoint import load_point_encoder

        encoder, meta = load_point_encoder(full / "encoder")
        assert meta["kind"] == "point-encoder" and meta["points"] == 64
        assert encoder(torch.randn(2, 64, 3))[1].shape == (2, 16)
    else:
        from gentune.models.checkpoint import load_encoder, read_meta

        encoder, meta = load_encoder(full / "encoder")
        assert read_meta(full / "encoder")["kind"] == "image-encoder" and meta["mean"] and meta["image_size"] == SIZE
        x = torch.randn(2, 3, SIZE, SIZE)
        assert encoder.forward_features(x).shape[0] == 2

    # killed right after the step-2 checkpoint, then the same command again
    part = env.tmp / "part"
    real = _RunFolder.checkpoint

    def killed(self, state, save):
        real(self, state, save)
        if state.step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(_RunFolder, "checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        run(make(env, part, max_steps=4, eval_steps=2, save_steps=1), task.build)
    monkeypatch.setattr(_RunFolder, "checkpoint", real)
    assert not (part / "summary.json").exists()
    again = run(make(env, part, max_steps=4, eval_steps=2, save_steps=1), task.build)
    assert again["final_dev"] == pytest.approx(summary["final_dev"], rel=1e-5)
    logs = [[json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()] for d in (full, part)]
    assert [(r["type"], r["step"]) for r in logs[1]] == [(r["type"], r["step"]) for r in logs[0]]
    assert [r["loss"] for r in _train(logs[1])] == pytest.approx([r["loss"] for r in _train(logs[0])], rel=1e-5)
    if name == "text-pretraining":  # the resumed run saved the same weights
        from safetensors.torch import load_file

        a, b = (load_file(d / "model" / "model.safetensors") for d in (full, part))
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
