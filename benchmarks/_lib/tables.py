"""Markdown tables, one row at a time."""

from __future__ import annotations

from typing import Iterable


def row(cells: Iterable[str]) -> str:
    """``| a | b |``; an empty cell stays empty (``|  |``)."""
    return "| " + " | ".join(cells) + " |"


def header(columns: list[str], align: list[str] | None = None) -> list[str]:
    """The header row and the separator row (``---`` per column unless ``align`` gives them, e.g. ``---:``)."""
    return [row(columns), row(align or ["---"] * len(columns))]
