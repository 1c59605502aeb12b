"""The LM-BFF data tree the few-shot grids read: where it is, a task's spec, a split seed's k-shot files."""

from __future__ import annotations

import os
from pathlib import Path


def glue() -> Path:
    """GENTUNE_DATA, which the grids need (they never guess a path)."""
    if not os.environ.get("GENTUNE_DATA"):
        raise SystemExit("error: set GENTUNE_DATA to a GLUE/LM-BFF data tree (../shared/data/glue)")
    return Path(os.environ["GENTUNE_DATA"])


def spec(task: str):
    from gentune.data import get_task

    return get_task(task)


def kshot(task: str, seed: int) -> tuple[Path, Path]:
    """The 16-shot train and dev files of split ``seed``."""
    folder = glue() / "k-shot" / spec(task).dirname / f"16-{seed}"
    return tuple(sorted(folder.glob(f"{name}.*"))[0] for name in ("train", "dev"))
