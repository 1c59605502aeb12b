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
