"""Where the benchmarks read and write (absolute paths from the repository root)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"  # the result cells, committed
RUNS = ROOT / "runs"  # the run folders behind them, not committed
DOC = ROOT / "docs" / "results.md"
IMG = ROOT / "docs" / "img"  # the plots docs/results.md shows
TEMPLATE = ROOT / "benchmarks" / "results_template.md"
