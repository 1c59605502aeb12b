"""Your own text data: CSV, TSV, JSON or JSONL files with a header, a ``datasets`` name (the Hub, a local dataset
folder) or a ``save_to_disk`` folder, read with Hugging Face ``datasets`` and brought to the columns the rest of
gentune reads (``text_a``, ``text_b``, ``label``).

Columns are named (``text_column``, ``text_pair_column``, ``label_column``); the label set is the training file's
labels (sorted) unless given; a label of another file outside it, a missing column or an empty file is a one-line
error naming the file and the column.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import GentuneError

FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}
SPLITS = {"train": ("train",), "dev": ("validation", "dev", "valid"), "test": ("test",)}


@dataclass(frozen=True)
class Columns:
    """Which columns hold the text, the optional second text, and the label."""

    text: str = "text"
    text_pair: str | None = "text_pair"
    label: str = "label"


def _quiet():
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def read_table(path: str | os.PathLike):
    """A file or a ``save_to_disk`` folder as a :class:`datasets.Dataset`, columns as they are."""
    import datasets

    _quiet()
    p = Path(path)
    if p.is_dir():
        try:
            loaded = datasets.load_from_disk(str(p))
        except (FileNotFoundError, ValueError) as e:
            raise GentuneError(f"{p}: a folder, but not a saved dataset ({str(e).splitlines()[0]})") from None
        if isinstance(loaded, datasets.DatasetDict):
            raise GentuneError(f"{p}: a saved DatasetDict ({', '.join(loaded)}); give it as --dataset")
        return loaded
    if not p.is_file():
        raise GentuneError(f"{p}: no such file")
    if p.stat().st_size == 0:
        raise GentuneError(f"{p}: empty file")
    kind = FORMATS.get(p.suffix.lower())
    if kind is None:
        raise GentuneError(f"{p}: unknown file type {p.suffix!r} (expected .csv, .tsv, .json or .jsonl)")
    extra = {"delimiter": "\t"} if p.suffix.lower() == ".tsv" else {}
    try:
        return datasets.load_dataset(kind, data_files=str(p), split="train", **extra)
    except Exception as e:  # pyarrow's parse errors, mixed types, a JSON that is not records
        raise GentuneError(f"{p}: cannot read it as {p.suffix.lstrip('.').upper()} with a header "
                           f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def load_named(name: str, config: str | None = None) -> dict:
    """The splits of a ``datasets`` name (the Hub, a local dataset folder) or a ``save_to_disk`` DatasetDict
    folder: {"train": ..., "dev": ..., "test": ...} as present."""
    import datasets

    _quiet()
    p = Path(name)
    try:
        if p.is_dir() and (p / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(str(p))
        else:
            loaded = datasets.load_dataset(name, config)
    except GentuneError:
        raise
    except Exception as e:  # offline, no such dataset, a config it does not have
        raise GentuneError(f"--dataset {name}{' ' + config if config else ''}: cannot load it "
                           f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(loaded, datasets.DatasetDict):
        raise GentuneError(f"--dataset {name}: expected splits (a DatasetDict), got one dataset")
    found = {}
    for ours, names in SPLITS.items():
        split = next((s for s in names if s in loaded), None)
        if split is not None:
            found[ours] = loaded[split]
    if "train" not in found:
        raise GentuneError(f"--dataset {name}: no train split (splits: {', '.join(loaded)})")
    return found


def _column(ds, name: str, where: str) -> None:
    if name not in ds.column_names:
        raise GentuneError(f"{where}: no column {name!r} (columns: {', '.join(ds.column_names)}); name it with "
                           "--text-column, --text-pair-column or --label-column")


def labels_of(ds, columns: Columns, where: str) -> list[str]:
    """The training labels as text, sorted (numbers numerically)."""
    _column(ds, columns.label, where)
    values = {str(v) for v in ds[columns.label] if v is not None}
    if not values:
        raise GentuneError(f"{where}: column {columns.label!r} has no labels")

    def key(v: str):
        try:
            return (0, float(v), v)
        except ValueError:
            return (1, 0.0, v)

    return sorted(values, key=key)


def standardize(ds, columns: Columns, labels: list[str] | None, where: str, labelled: bool = True):
    """``ds`` with the columns ``text_a``, ``text_b`` (None without a pair column) and ``label`` (an index into
    ``labels``, or a float score when ``labels`` is None: regression)."""
    import datasets

    _column(ds, columns.text, where)
    pair = columns.text_pair if columns.text_pair and columns.text_pair in ds.column_names else None
    if labelled:
        _column(ds, columns.label, where)
    index = {label: i for i, label in enumerate(labels)} if labels is not None else None
    rows = []
    for i, row in enumerate(ds):
        text = row[columns.text]
        if not isinstance(text, str):
            raise GentuneError(f"{where}: row {i + 1}: column {columns.text!r} is not text ({text!r})")
        label = -1 if labels is not None else math.nan
        if labelled:
            raw = row[columns.label]
            if index is not None:
                if str(raw) not in index:
                    raise GentuneError(f"{where}: row {i + 1}: label {raw!r} in column {columns.label!r} is not one of "
                                       f"the labels ({', '.join(labels)})")
                label = index[str(raw)]
            else:
                try:
                    label = float(raw)
                except (TypeError, ValueError):
                    raise GentuneError(f"{where}: row {i + 1}: label {raw!r} in column {columns.label!r} is not a "
                                       "number (regression)") from None
        rows.append({"text_a": text, "text_b": row[pair] if pair else None, "label": label})
    if not rows:
        raise GentuneError(f"{where}: no examples")
    features = datasets.Features({"text_a": datasets.Value("string"), "text_b": datasets.Value("string"),
                                  "label": datasets.Value("int64" if labels is not None else "float32")})
    return datasets.Dataset.from_list(rows, features=features), pair is not None


def read_texts(paths: list[str], text_column: str = "text", text_pair_column: str | None = None,
               task=None):
    """Unlabeled text for pretraining, as a :class:`datasets.Dataset` of ``text_a`` (and ``text_b``): plain-text
    files (``.txt``, one example per non-empty line), CSV/TSV/JSON/JSONL files with a header (``text_column``, and
    ``text_pair_column`` when present), or, with ``task`` (a :class:`gentune.data.text_tasks.TaskSpec`), that
    task's own files with their labels dropped. Several files are concatenated."""
    import datasets

    _quiet()
    parts = []
    for path in paths:
        p = Path(path)
        if task is not None:
            from .glue import read_file

            ds = read_file(task, p, labelled=False).remove_columns(["label"])
        elif p.suffix.lower() == ".txt":
            if not p.is_file():
                raise GentuneError(f"{p}: no such file")
            try:
                lines = [line.strip() for line in p.read_text(encoding="utf-8").split("\n")]
            except UnicodeDecodeError as e:
                raise GentuneError(f"{p}: not UTF-8 text (byte {e.start})") from None
            lines = [line for line in lines if line]
            if not lines:
                raise GentuneError(f"{p}: no text (every line is empty)")
            ds = datasets.Dataset.from_dict({"text_a": lines, "text_b": [None] * len(lines)},
                                            features=datasets.Features({"text_a": datasets.Value("string"),
                                                                        "text_b": datasets.Value("string")}))
        else:
            table = read_table(p)
            _column(table, text_column, str(p))
            pair = text_pair_column if text_pair_column and text_pair_column in table.column_names else None
            bad = next((i for i, t in enumerate(table[text_column]) if not isinstance(t, str)), None)
            if bad is not None:
                raise GentuneError(f"{p}: row {bad + 1}: column {text_column!r} is not text")
            ds = datasets.Dataset.from_dict(
                {"text_a": table[text_column], "text_b": table[pair] if pair else [None] * len(table)},
                features=datasets.Features({"text_a": datasets.Value("string"), "text_b": datasets.Value("string")}))
        parts.append(ds)
    if not parts:
        raise GentuneError("no text given (--data FILE ...)")
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def cache_dir() -> Path:
    """Where in-memory datasets given to the Python API are saved: ``$GENTUNE_CACHE`` or ~/.cache/gentune."""
    return Path(os.environ.get("GENTUNE_CACHE") or Path.home() / ".cache" / "gentune")


def to_disk(data) -> str:
    """A :class:`datasets.Dataset` or :class:`datasets.DatasetDict` saved (once, by its fingerprint) under
    :func:`cache_dir`, as the folder a config names: a run given the same data again resumes."""
    import hashlib

    import datasets

    if isinstance(data, datasets.DatasetDict):
        key = hashlib.sha256("|".join(f"{k}:{v._fingerprint}" for k, v in sorted(data.items())).encode())
        key = key.hexdigest()[:16]
    elif isinstance(data, datasets.Dataset):
        key = data._fingerprint
    else:
        raise GentuneError(f"expected a datasets.Dataset or DatasetDict, got {type(data).__name__}")
    target = cache_dir() / "datasets" / key
    if not (target / "state.json").is_file() and not (target / "dataset_dict.json").is_file():
        from ..fs import atomic_dir

        with atomic_dir(target) as tmp:
            data.save_to_disk(str(tmp))
    return str(target)


__all__ = ["Columns", "cache_dir", "labels_of", "load_named", "read_table", "read_texts", "standardize", "to_disk"]
