"""Rebuild docs/results.md and its plots (docs/img/) from the result cells under benchmarks/results/.

The page is benchmarks/results_template.md, which holds all its prose, with each ``{{key}}`` replaced by a block
that a benchmark script renders from its cells (each script's ``sections()``; the placeholder rules are in
benchmarks/_lib/template.py). The grids run this script after their cells; it runs no benchmark itself and is
deterministic: rerun on the same cells it writes the same bytes.

    GENTUNE_DATA=../shared/data/glue python benchmarks/render_results.py

GENTUNE_DATA (default ../shared/data/glue beside the repository) is read for the fine-tuning tables' trivial
predictor column; without the data that column shows "-".
"""

from __future__ import annotations

import argparse
import sys

import diagnostics_study
import fewshot_grid
import finetune_grid
import kernel_speed
import kshot_grid
import mlm_throughput
import ner_grid
import point_grid
import pretrain_grid
import radreg_estimator
import radreg_diagnostics
import radreg_grid
import radreg_retest
import smart_cost
import smart_retest
from _lib import cells, template
from _lib.paths import DOC, IMG, ROOT, TEMPLATE


def blocks() -> dict[str, str]:
    """Every script's blocks, by template key."""
    pretrain, radreg = pretrain_grid.load(), radreg_grid.load()
    pretrain_grid.plots(pretrain, IMG)
    radreg_grid.plots(radreg, IMG)
    kshot = kshot_grid.load()
    kshot_grid.plots(kshot, IMG)
    estimator = radreg_estimator.load()
    radreg_estimator.plots(estimator, IMG)
    retest = radreg_retest.load()
    radreg_retest.plots(retest, IMG)
    return {**finetune_grid.sections(finetune_grid.load()), **smart_cost.sections(),
            **pretrain_grid.sections(pretrain), **radreg_grid.sections(radreg),
            **diagnostics_study.sections(diagnostics_study.load()), **smart_retest.sections(smart_retest.load()),
            **kernel_speed.sections(), **mlm_throughput.sections(),
            **fewshot_grid.sections(fewshot_grid.load()), **ner_grid.sections(ner_grid.load()),
            **point_grid.sections(point_grid.load()), **kshot_grid.sections(kshot),
            **radreg_estimator.sections(estimator), **radreg_retest.sections(retest),
            **radreg_diagnostics.sections(radreg_diagnostics.load())}


def main() -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    cells.write_text(DOC, template.fill(TEMPLATE.read_text(), blocks()))
    print(f"wrote {DOC.relative_to(ROOT)} and the plots in {IMG.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
