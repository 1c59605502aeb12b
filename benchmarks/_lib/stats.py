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


class TwoLevel(NamedTuple):
    """A two-level summary (pretraining seeds x fine-tuning seeds): the grand mean, its standard error with the
    pretraining seed as the unit (the spread of the per-pretraining-seed means over sqrt of their number), the
    fine-tuning seeds' pooled within-checkpoint standard deviation, and the counts."""

    mean: float
    se: float
    within_sd: float
    pretrain_seeds: int
    finetune_seeds: int


def two_level(values: dict, scale: float = 100.0) -> TwoLevel | None:
    """``values[p][s]``: the score of fine-tuning seed ``s`` from pretraining seed ``p``. Each pretraining seed's
    mean over its fine-tuning seeds is one unit; the grand mean is their mean (each checkpoint weighs the same);
    the standard error is theirs (nan for one pretraining seed). None when empty."""
    means = [statistics.fmean(v.values()) for v in values.values() if v]
    if not means:
        return None
    se = statistics.stdev(means) / len(means) ** 0.5 if len(means) > 1 else math.nan
    within = [statistics.variance(v.values()) for v in values.values() if len(v) > 1]
    sd = statistics.fmean(within) ** 0.5 if within else math.nan
    return TwoLevel(scale * statistics.fmean(means), scale * se, scale * sd, len(means),
                    min(len(v) for v in values.values() if v))


def paired_two_level(values: dict, baseline: dict, scale: float = 100.0) -> Paired | None:
    """The paired difference per pretraining seed: for each ``p`` both arms have, the mean over its fine-tuning
    seeds of ``values[p][s] - baseline[p][s]`` (the seeds both have); then mean and standard error over ``p``."""
    per_seed = {}
    for p, runs in values.items():
        shared = [s for s in runs if s in baseline.get(p, {})]
        if shared:
            per_seed[p] = statistics.fmean(runs[s] - baseline[p][s] for s in shared)
    return paired(per_seed, {p: 0.0 for p in per_seed}, scale)


def fmt_two_level(t: TwoLevel | None) -> str:
    """``68.4 ± 0.6`` (mean ± two-level standard error), ``68.4 (one checkpoint)``, or ``-``."""
    if t is None:
        return "-"
    if t.pretrain_seeds == 1:
        return f"{t.mean:.1f} (one checkpoint)"
    return f"{t.mean:.1f} ± {t.se:.1f}"
