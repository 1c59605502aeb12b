"""The placeholders of benchmarks/results_template.md.

The template is the results page as a reader sees it, prose included; ``{{key}}`` stands where a benchmark's
rendered block goes (a table, a list of commands, one number). Each benchmark script's ``sections()`` returns
its blocks by key. A placeholder alone on its line whose block is missing (nothing run yet) takes its line with
it. A leading ``<!-- ... -->`` comment is the template's own note and is not copied.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Callable

PLACEHOLDER = re.compile(r"\{\{([^{}\n]+)\}\}")


def fill(template: str, blocks: dict[str, str]) -> str:
    """The page: ``template`` with every placeholder replaced by its block.

    Args:
        template: the template's text.
        blocks: key -> block text (no trailing newline).

    Returns:
        The page. Missing blocks, and blocks no placeholder asks for, are named on stderr (results on disk
        that the page does not show yet: add their placeholders to the template).
    """
    if template.startswith("<!--"):
        template = template[template.index("-->") + 3:].lstrip("\n")
    used, missing = set(), []

    def block(match: re.Match) -> str:
        key = match.group(1).strip()
        used.add(key)
        if key not in blocks:
            missing.append(key)
        return blocks.get(key, "")

    lines = []
    for line in template.split("\n"):
        alone = PLACEHOLDER.fullmatch(line)
        if alone and alone.group(1).strip() not in blocks:
            block(alone)
            continue
        lines.append(PLACEHOLDER.sub(block, line))
    for key in missing:
        print(f"note: no results for {{{{{key}}}}} yet", file=sys.stderr)
    for key in blocks:
        if key not in used:
            print(f"warning: {{{{{key}}}}} has results but no place in the template", file=sys.stderr)
    return "\n".join(lines)


def preview(blocks: dict[str, str]) -> str:
    """Every block under its key, for a script's ``--smoke`` output (no template)."""
    return "\n\n".join(f"{{{{{key}}}}}\n{text}" for key, text in blocks.items()) + "\n"


def smoke_report(data: dict, sections: Callable[[dict], dict[str, str]], plots: Callable[[dict, Path], list],
                 folder: Path) -> str:
    """What a script's ``--smoke`` run shows of its scratch cells: its plots, written to ``folder``, and its
    blocks (:func:`preview`).

    Args:
        data: the script's ``load()`` of the scratch cells.
        sections, plots: the script's ``sections`` and ``plots``.
        folder: the scratch folder for the plots.
    """
    plots(data, folder)
    return preview(sections(data))
