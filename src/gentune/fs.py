"""Atomic writes: an interrupted run never corrupts what an earlier one wrote (shared by every layer)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path


@contextlib.contextmanager
def atomic_dir(path: Path):
    """Yield a temporary sibling directory; on success it replaces ``path`` (old copy kept until the swap)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    old = path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    swap_into(tmp, path)


def swap_into(tmp: Path, path: Path) -> None:
    """Replace ``path`` by the complete directory ``tmp``. At every instant either ``path`` or ``path.old`` is a
    complete copy (see :func:`recover_dir`)."""
    old = path.with_name(path.name + ".old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(path: Path) -> Path | None:
    """The complete copy of ``path``: itself, or the ``.old`` copy left by a kill between the two renames."""
    path = Path(path)
    if path.is_dir():
        return path
    old = path.with_name(path.name + ".old")
    return old if old.is_dir() else None


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
