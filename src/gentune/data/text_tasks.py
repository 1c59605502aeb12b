"""The text-classification tasks gentune knows: label sets, metrics and the layouts of their files."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import GentuneError


@dataclass(frozen=True)
class TsvLayout:
    """Where a task's fields sit in a GLUE-style TSV file.

    Columns are header names when ``header`` is true, else 0-based indices. ``label_last`` takes the label
    from the last field of each row (MNLI/SNLI rows carry a variable number of annotator labels before
    ``gold_label``).
    """

    text_a: str | int
    text_b: str | int | None
    label: str | int
    header: bool = True
    label_last: bool = False


@dataclass(frozen=True)
class TaskSpec:
    """One task: its names, label set (``None`` for regression), metrics and file layouts.

    Attributes:
        name: the CLI name (``rte``).
        dirname: the folder name in GLUE/LM-BFF data trees (``RTE``).
        labels: label strings in index order; ``None`` for regression (STS-B).
        metrics: metric names reported; the first of ``main_metric`` picks the best checkpoint.
        main_metric: the metric that selects the best checkpoint.
        tsv: layout of the task's GLUE TSV files, ``None`` when the task has only csv/json.
        csv: whether the task's k-shot files are LM-BFF ``label,sentence`` csv files.
        hub: (dataset, config, text_a, text_b, label, dev split) on the Hugging Face Hub, or ``None``.
        skip_labels: gold labels that mean "no consensus" and are dropped, as is standard (SNLI/MNLI ``-``).
        names: what each label means, in index order (a model's ``id2label``, what ``pipeline()`` answers);
            default: the labels themselves.
    """

    name: str
    dirname: str
    labels: tuple[str, ...] | None
    metrics: tuple[str, ...]
    main_metric: str
    tsv: TsvLayout | None = None
    csv: bool = False
    hub: tuple | None = None
    skip_labels: tuple[str, ...] = ()
    names: tuple[str, ...] | None = None

    @property
    def label_names(self) -> tuple[str, ...]:
        """The label names a model reports (``negative``/``positive`` for SST-2's 0/1); ``("score",)`` for
        regression."""
        return self.names or self.labels or ("score",)

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def text_pair(self) -> bool:
        return self.tsv is not None and self.tsv.text_b is not None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)


_BIN = ("0", "1")
_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")
_ACC = ("accuracy",)

TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec("rte", "RTE", _NLI2, _ACC, "accuracy", TsvLayout("sentence1", "sentence2", "label"),
                 hub=("nyu-mll/glue", "rte", "sentence1", "sentence2", "label", "validation")),
        TaskSpec("mrpc", "MRPC", _BIN, ("accuracy", "f1"), "f1", TsvLayout("#1 String", "#2 String", "Quality"),
                 hub=("nyu-mll/glue", "mrpc", "sentence1", "sentence2", "label", "validation"),
                 names=("not_equivalent", "equivalent")),
        TaskSpec("cola", "CoLA", _BIN, ("accuracy", "mcc"), "mcc", TsvLayout(3, None, 1, header=False),
                 hub=("nyu-mll/glue", "cola", "sentence", None, "label", "validation"),
                 names=("unacceptable", "acceptable")),
        TaskSpec("sst2", "SST-2", _BIN, _ACC, "accuracy", TsvLayout("sentence", None, "label"),
                 hub=("nyu-mll/glue", "sst2", "sentence", None, "label", "validation"), names=("negative", "positive")),
        TaskSpec("stsb", "STS-B", None, ("pearson", "spearman"), "pearson",
                 TsvLayout("sentence1", "sentence2", "score"),
                 hub=("nyu-mll/glue", "stsb", "sentence1", "sentence2", "label", "validation")),
        TaskSpec("qnli", "QNLI", _NLI2, _ACC, "accuracy", TsvLayout("question", "sentence", "label"),
                 hub=("nyu-mll/glue", "qnli", "question", "sentence", "label", "validation")),
        TaskSpec("mnli", "MNLI", _NLI3, _ACC, "accuracy",
                 TsvLayout("sentence1", "sentence2", "gold_label", label_last=True),
                 hub=("nyu-mll/glue", "mnli", "premise", "hypothesis", "label", "validation_matched"),
                 skip_labels=("-",)),
        TaskSpec("snli", "SNLI", _NLI3, _ACC, "accuracy",
                 TsvLayout("sentence1", "sentence2", "gold_label", label_last=True),
                 hub=("stanfordnlp/snli", None, "premise", "hypothesis", "label", "validation"),
                 skip_labels=("-",)),
        TaskSpec("qqp", "QQP", _BIN, ("accuracy", "f1"), "f1", TsvLayout("question1", "question2", "is_duplicate"),
                 hub=("nyu-mll/glue", "qqp", "question1", "question2", "label", "validation"),
                 names=("not_duplicate", "duplicate")),
        TaskSpec("mr", "mr", _BIN, _ACC, "accuracy", TsvLayout("sentence", None, "label"), csv=True,
                 hub=("cornell-movie-review-data/rotten_tomatoes", None, "text", None, "label", "validation"),
                 names=("negative", "positive")),
        TaskSpec("cr", "cr", _BIN, _ACC, "accuracy", TsvLayout("sentence", None, "label"), csv=True,
                 hub=("SetFit/CR", None, "text", None, "label", "test"), names=("negative", "positive")),
        TaskSpec("mpqa", "mpqa", _BIN, _ACC, "accuracy", TsvLayout("sentence", None, "label"), csv=True,
                 names=("negative", "positive")),
        TaskSpec("subj", "subj", _BIN, _ACC, "accuracy", TsvLayout("sentence", None, "label"), csv=True,
                 hub=("SetFit/subj", None, "text", None, "label", "test"), names=("subjective", "objective")),
        TaskSpec("trec", "trec", tuple(str(i) for i in range(6)), _ACC, "accuracy",
                 TsvLayout("sentence", None, "label"), csv=True,
                 hub=("CogComp/trec", None, "text", None, "coarse_label", "test"),
                 names=("description", "entity", "abbreviation", "human", "location", "number")),
        TaskSpec("sst5", "sst-5", tuple(str(i) for i in range(5)), _ACC, "accuracy",
                 TsvLayout("sentence", None, "label"), csv=True,
                 hub=("SetFit/sst5", None, "text", None, "label", "validation"),
                 names=("very negative", "negative", "neutral", "positive", "very positive")),
    ]
}


def get_task(name: str) -> TaskSpec:
    """The task named ``name`` (case-insensitive; ``sst-2``/``sts-b``/``sst-5`` spellings accepted)."""
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise GentuneError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return TASKS[key]
