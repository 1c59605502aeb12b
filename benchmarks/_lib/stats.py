"""The statistics of the results page: mean ± standard deviation over seeds, and paired differences.

One rule for a paired difference over a single seed: its mean is the difference, its standard error is nan (one
seed has no spread to estimate it from); renderers show it as ``(one seed)``.
"""

from __future__ import annotations

import math
import statistics
from typing import Iterable, NamedTuple


def fmt(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± std`` of ``values`` times ``scale``, ``digits`` decimals; std 0 for one value, ``-`` for none."""
    if not values:
        return "-"
    mean = statistics.fmean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


class Paired(NamedTuple):
    """A paired difference: mean and standard error (scaled) over ``n`` seeds."""

    mean: float
    se: float
    n: int


def paired(values: dict, baseline: dict, scale: float = 100.0) -> Paired | None:
    """``values[s] - baseline[s]`` over the seeds ``s`` both have, in the order of ``values``.

    Args:
        values: seed -> score of the arm.
        baseline: seed -> score of the arm it is compared with.
        scale: multiplies the mean and the standard error (100: scores in [0, 1] shown as points).

    Returns:
        Mean, standard error of the mean (nan for one seed) and the number of seeds; None when no seed is shared.
    """
    diffs = [v - baseline[s] for s, v in values.items() if s in baseline]
    if not diffs:
        return None
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else math.nan
    return Paired(scale * statistics.fmean(diffs), scale * se, len(diffs))


def mean_of(pairs: Iterable[Paired]) -> Paired:
    """The mean of independent paired differences (over tasks): the mean of their means, the standard error
    combining theirs (sqrt of the sum of squares, over their number), and the fewest seeds any of them has."""
    pairs = list(pairs)
    return Paired(statistics.fmean(p.mean for p in pairs), sum(p.se ** 2 for p in pairs) ** 0.5 / len(pairs),
                  min(p.n for p in pairs))


def fmt_paired(d: Paired | None, with_n: bool = False) -> str:
    """``+1.4 ± 0.7`` (with ``with_n``: ``+1.4 ± 0.7 (n=5)``), ``+1.4 (one seed)``, or ``-`` for no pair."""
    if d is None:
        return "-"
    if d.n == 1:
        return f"{d.mean:+.1f} (one seed)"
    return f"{d.mean:+.1f} ± {d.se:.1f}" + (f" (n={d.n})" if with_n else "")
