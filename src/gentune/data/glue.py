"""Readers for GLUE-family text-classification files, and where to find them.

Formats (every one is also what held-out test files of the same task look like):

- ``*.json``: ``{"0": {"text_a": ..., "text_b": ... or null, "label": ...}, ...}`` (or a list of such objects).
- ``*.tsv``: the task's GLUE column layout (see :data:`gentune.data.text_tasks.TASKS`), with or without a header,
  an optional UTF-8 BOM (MRPC), and a variable number of annotator labels before the last column (MNLI/SNLI).
- ``*.csv``: LM-BFF ``label,sentence`` with no header.

Every reader returns a :class:`datasets.Dataset` with columns ``text_a``, ``text_b`` and ``label`` (a class index,
or a float score for regression). Malformed input raises :class:`GentuneError` naming the file and line.
With ``labelled=False`` the label column of the file is neither needed nor read (GLUE's unlabelled ``test.tsv``,
a JSON file without ``label``, a one-column CSV) and every ``label`` is -1 (NaN for regression).
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import numpy as np

from ..errors import GentuneError
from .text_tasks import TaskSpec

ENV_VAR = "GENTUNE_DATA"
SPLIT_ALIASES = {"train": ("train",), "dev": ("dev", "dev_matched", "validation")}


def _label_value(task: TaskSpec, raw, where: str):
    """Map a raw label to a class index (classification) or a float (regression)."""
    text = str(raw).strip()
    if task.is_regression:
        try:
            value = float(text)
        except ValueError:
            raise GentuneError(f"{where}: label {text!r} is not a number (task {task.name} is regression)") from None
        if not np.isfinite(value):
            raise GentuneError(f"{where}: label {text!r} is not a finite number")
        return value
    if text in task.labels:
        return task.labels.index(text)
    # Numeric labels written as 1.0 or as integers of a string label set are the same label.
    try:
        as_int = str(int(float(text)))
        if as_int in task.labels:
            return task.labels.index(as_int)
    except ValueError:
        pass
    raise GentuneError(f"{where}: label {text!r} is not in the label set of {task.name} ({', '.join(task.labels)})")


def _finish(task: TaskSpec, rows: list[dict], path: Path):
    import datasets

    if not rows:
        raise GentuneError(f"{path}: no examples")
    features = datasets.Features(
        {
            "text_a": datasets.Value("string"),
            "text_b": datasets.Value("string"),
            "label": datasets.Value("float32" if task.is_regression else "int64"),
        }
    )
    return datasets.Dataset.from_list(rows, features=features)


_UNLABELLED = object()  # the label of a row read with labelled=False


def _example(task: TaskSpec, text_a, text_b, label, where: str) -> dict:
    if text_a is None or not isinstance(text_a, str):
        raise GentuneError(f"{where}: missing text")
    if text_b is not None and not isinstance(text_b, str):
        raise GentuneError(f"{where}: text_b is not a string")
    if label is _UNLABELLED:
        value = float("nan") if task.is_regression else -1
    else:
        value = _label_value(task, label, where)
    return {"text_a": text_a, "text_b": text_b, "label": value}


def read_json(task: TaskSpec, path: Path, labelled: bool = True):
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise GentuneError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    items = list(data.items()) if isinstance(data, dict) else list(enumerate(data)) if isinstance(data, list) else None
    if items is None:
        raise GentuneError(f"{path}: expected a JSON object or list of examples")
    rows = []
    for key, obj in items:
        where = f"{path}: example {key}"
        if not isinstance(obj, dict) or "text_a" not in obj or (labelled and "label" not in obj):
            raise GentuneError(f"{where}: expected an object with text_a, text_b and label")
        if task.text_pair and obj.get("text_b") is None:
            raise GentuneError(f"{where}: task {task.name} needs text_b")
        if labelled and str(obj["label"]).strip() in task.skip_labels:
            continue
        rows.append(_example(task, obj["text_a"], obj.get("text_b"), obj["label"] if labelled else _UNLABELLED, where))
    return _finish(task, rows, path)


def read_tsv(task: TaskSpec, path: Path, labelled: bool = True):
    layout = task.tsv
    if layout is None:
        raise GentuneError(f"{path}: task {task.name} has no TSV layout")
    with open(path, encoding="utf-8-sig", newline="") as f:
        # rows end at \n (or \r\n) only: str.splitlines would also split at U+2028, U+0085 or a form feed inside
        # a sentence and reject the row's field count
        lines = [line.removesuffix("\r") for line in f.read().split("\n")]
    rows: list[dict] = []
    start = 0
    if layout.header:
        if not lines:
            raise GentuneError(f"{path}: empty file")
        header = lines[0].split("\t")
        cols = {}
        for role in ("text_a", "text_b", "label"):
            name = getattr(layout, role)
            if name is None or (role == "label" and not labelled):
                continue
            if name not in header:
                raise GentuneError(
                    f"{path}:1: header has no column {name!r} for task {task.name} (header: {' | '.join(header)})"
                )
            cols[role] = header.index(name)
        width = len(header)
        start = 1
    else:
        roles = ("text_a", "text_b", "label") if labelled else ("text_a", "text_b")
        cols = {r: getattr(layout, r) for r in roles if getattr(layout, r) is not None}
        width = max(cols.values()) + 1
    for lineno, line in enumerate(lines[start:], start=start + 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        where = f"{path}:{lineno}"
        too_few = len(fields) < width
        too_many = len(fields) > width and not layout.label_last and labelled
        if too_few or too_many:
            raise GentuneError(f"{where}: expected {width} tab-separated fields, found {len(fields)}")
        if labelled:
            label = fields[-1] if layout.label_last else fields[cols["label"]]
            if label.strip() in task.skip_labels:
                continue
        else:
            label = _UNLABELLED
        text_b = fields[cols["text_b"]] if "text_b" in cols else None
        rows.append(_example(task, fields[cols["text_a"]], text_b, label, where))
    return _finish(task, rows, path)


CSV_LIMIT_ENV = "GENTUNE_CSV_FIELD_LIMIT"


def read_csv(task: TaskSpec, path: Path, labelled: bool = True):
    rows = []
    if os.environ.get(CSV_LIMIT_ENV):
        try:
            csv.field_size_limit(int(os.environ[CSV_LIMIT_ENV]))
        except ValueError:
            raise GentuneError(f"${CSV_LIMIT_ENV}: expected a number of characters, got "
                               f"{os.environ[CSV_LIMIT_ENV]!r}") from None
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        try:
            for record in reader:
                where = f"{path}:{reader.line_num}"
                if not record:
                    continue
                if not labelled and len(record) == 1:  # a bare sentence
                    rows.append(_example(task, record[0], None, _UNLABELLED, where))
                    continue
                if len(record) != 2:
                    raise GentuneError(f"{where}: expected 2 comma-separated fields (label,sentence), found {len(record)}")
                rows.append(_example(task, record[1], None, record[0] if labelled else _UNLABELLED, where))
        except csv.Error as e:
            if "field larger than field limit" in str(e):
                raise GentuneError(f"{path}:{reader.line_num}: a field longer than the CSV reader's limit of "
                                   f"{csv.field_size_limit():,} characters (set ${CSV_LIMIT_ENV} to raise it)") from None
            raise GentuneError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
    return _finish(task, rows, path)


def read_file(task: TaskSpec, path: str | os.PathLike, labelled: bool = True):
    """Read any supported file of ``task`` (format by extension) into a Dataset; ``labelled=False`` reads the
    texts only (labels -1, or NaN for regression), so a file without its label column works too.

    Raises:
        GentuneError: missing, empty or malformed file, a bad row (with its line) or a label outside the task.
    """
    path = Path(path)
    if path.is_dir():
        raise GentuneError(f"{path}: a folder, not a data file (give a .json, .tsv or .csv file; a folder of them is "
                           "--data-dir)")
    if not path.is_file():
        raise GentuneError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise GentuneError(f"{path}: empty file")
    suffix = path.suffix.lower()
    readers = {".json": read_json, ".jsonl": read_json, ".tsv": read_tsv, ".csv": read_csv}
    if suffix not in readers:
        raise GentuneError(f"{path}: unknown file type {suffix!r} (expected .json, .tsv or .csv)")
    try:
        return readers[suffix](task, path, labelled)
    except UnicodeDecodeError as e:
        raise GentuneError(f"{path}: not UTF-8 text (byte {e.start})") from None


def _split_file(task: TaskSpec, root: Path, split: str) -> Path | None:
    """The first file of ``split`` found under ``root`` in a GLUE/LM-BFF tree (``full/``) or a task folder."""
    for folder in (root / "full" / task.dirname, root / task.dirname, root):
        for stem in SPLIT_ALIASES[split]:
            for ext in (".json", ".tsv", ".csv"):
                p = folder / f"{stem}{ext}"
                if p.is_file():
                    return p
    return None


def _from_hub(task: TaskSpec, split: str):
    import datasets
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()  # offline retries would print a warning each; the caller reports once

    repo, config, a, b, label, dev_split = task.hub
    hf_split = "train" if split == "train" else dev_split
    ds = datasets.load_dataset(repo, config, split=hf_split)
    rows = []
    for i, ex in enumerate(ds):
        raw = ex[label]
        if not task.is_regression:
            if int(raw) < 0:  # SNLI's -1: no gold label
                continue
            raw = task.labels[int(raw)]
        rows.append(_example(task, ex[a], ex[b] if b else None, raw, f"{repo}[{hf_split}] row {i}"))
    return _finish(task, rows, Path(repo))


def load_splits(task: TaskSpec, data_dir: str | None = None, train_file: str | None = None,
                dev_file: str | None = None):
    """The (train, dev) Datasets of ``task``.

    Explicit files win. Otherwise the data directory comes from ``data_dir``, else ``$GENTUNE_DATA``, else the
    Hugging Face Hub; if none has the task, one error lists every place tried.
    """
    if train_file or dev_file:
        if not (train_file and dev_file):
            raise GentuneError("give both --train and --dev (or neither, to use --data-dir)")
        if data_dir:
            raise GentuneError(f"--data-dir {data_dir} and --train/--dev both name the data; give one of them")
        return read_file(task, train_file), read_file(task, dev_file)
    if data_dir and not Path(data_dir).is_dir():
        raise GentuneError(f"--data-dir {data_dir}: no such folder")
    tried = []
    for source, root in (("--data-dir", data_dir), (f"${ENV_VAR}", os.environ.get(ENV_VAR))):
        if not root:
            tried.append(f"{source} (not set)")
            continue
        found = [_split_file(task, Path(root), s) for s in ("train", "dev")]
        if all(found):
            return read_file(task, found[0]), read_file(task, found[1])
        tried.append(f"{source}={root} (no {task.dirname} train/dev files)")
        if source == "--data-dir":
            break  # an explicit directory that lacks the task is an error, not a reason to look elsewhere
    else:
        if task.hub is None:
            tried.append("Hugging Face Hub (no hub source known for this task)")
        else:
            try:
                return _from_hub(task, "train"), _from_hub(task, "dev")
            except GentuneError:
                raise
            except Exception as e:  # offline, missing dataset, ...: reported with the other places below
                tried.append(f"Hugging Face Hub {task.hub[0]} ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
    raise GentuneError(f"no data for task {task.name}: tried " + "; ".join(tried))


def stratified_subsample(ds, n: int, seed: int, regression: bool = False):
    """A seeded, label-stratified subsample of ``n`` examples (regression: stratified by score quintile).

    Each label keeps its share of ``n`` (largest-remainder rounding, at least one example per label when n
    allows), and the result is shuffled with the same seed.
    """
    if n <= 0:
        raise GentuneError(f"--train-size must be positive, got {n}")
    if n >= len(ds):
        if n > len(ds):
            print(f"warning: --train-size {n} is more than the {len(ds)} training examples; all of them are used",
                  file=sys.stderr)
        return ds
    return ds.select(_stratified(ds, n, seed, regression).tolist())


def stratified_split(ds, n: int, seed: int, regression: bool = False):
    """(rest, carved): ``n`` seeded, label-stratified examples carved out of ``ds`` (a dev set the training never
    sees) and the others, in their order."""
    if not 0 < n < len(ds):
        raise GentuneError(f"dev_from_train must be between 1 and {len(ds) - 1} (the training examples), got {n}")
    carved = _stratified(ds, n, seed, regression)
    keep = np.setdiff1d(np.arange(len(ds)), carved)
    return ds.select(keep.tolist()), ds.select(carved.tolist())


def _stratified(ds, n: int, seed: int, regression: bool) -> np.ndarray:
    """The indices of a seeded, label-stratified sample of ``n`` < len(ds) examples, shuffled."""
    labels = np.asarray(ds["label"])
    if regression:
        edges = np.quantile(labels, [0.2, 0.4, 0.6, 0.8])
        strata = np.searchsorted(edges, labels, side="right")
    else:
        strata = labels.astype(np.int64)
    rng = np.random.default_rng(seed)
    groups = {s: rng.permutation(np.flatnonzero(strata == s)) for s in np.unique(strata)}
    exact = {s: n * len(idx) / len(labels) for s, idx in groups.items()}
    take = {s: min(len(groups[s]), max(1 if n >= len(groups) else 0, int(np.floor(q)))) for s, q in exact.items()}
    # Hand the remaining slots to the strata with the largest rounding remainders that still have room.
    order = sorted(groups, key=lambda s: exact[s] - np.floor(exact[s]), reverse=True)
    while sum(take.values()) < n:
        for s in order:
            if sum(take.values()) < n and take[s] < len(groups[s]):
                take[s] += 1
    while sum(take.values()) > n:  # the at-least-one floor can overshoot for tiny n
        s = max(take, key=lambda s: take[s] - exact[s])
        take[s] -= 1
    chosen = np.concatenate([groups[s][: take[s]] for s in groups])
    return rng.permutation(chosen)
