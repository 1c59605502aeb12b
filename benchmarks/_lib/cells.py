"""Result cells: one JSON file per unit of work (a run, a measurement, a choice), written atomically so that an
interrupted or parallel writer never leaves a half-written file, and skipped on rerun once written."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes (which weights a cell started from)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed into place.

    Args:
        path: the file; its folder is created.
        text: the whole content.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # one temporary name per process and thread: parallel writers of the same file never share one
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_json(path: Path, record: dict) -> None:
    """Write ``record`` as indented JSON (the format of every cell), atomically."""
    write_text(path, json.dumps(record, indent=2) + "\n")


def read_json(path: Path) -> dict:
    """One cell."""
    return json.loads(path.read_text())


def read_cells(folder: Path, pattern: str = "*.json") -> list[dict]:
    """Every cell under ``folder`` matching ``pattern``, in the sorted order of their paths (empty when none)."""
    return [read_json(p) for p in sorted(folder.glob(pattern))]


def finished(cell: Path, what: str) -> bool:
    """Whether ``cell`` is written already; then says that ``what`` is skipped.

    Args:
        cell: the cell's file.
        what: the work it stands for, for the log line ``[skip] WHAT``.
    """
    if not cell.exists():
        return False
    print(f"[skip] {what}")
    return True


def redo_record(old: dict) -> dict:
    """What a pretraining cell that is run again keeps of its first run (the downstream cells were computed from
    that encoder): its date, machine, final dev metrics and steps; ``reproduced`` then says whether the rerun's
    final dev metrics are the same numbers. With the same command and seed they often are not: on another machine
    or thread count the float sums differ, and the difference grows over a run."""
    if "redone_of" in old:  # redone twice: still compare with the run the downstream cells used
        return {k: v for k, v in old["redone_of"].items() if k != "reproduced"}
    summary = old.get("summary") or {}
    return {"date": old.get("date"), "machine": old.get("machine"), "final_dev": summary.get("final_dev"),
            "train_steps": summary.get("train_steps")}


def redone_of(original: dict | None, summary: dict) -> dict:
    """The ``redone_of`` field of a redone cell (empty for a first run): the first run's record and whether the
    rerun's final dev metrics are the same numbers (None when the first run recorded none)."""
    if original is None:
        return {}
    first = original["final_dev"]
    return {"redone_of": original | {"reproduced": None if first is None else first == summary.get("final_dev")}}
