"""Fine-tuning curves of image cells: the mean held-out accuracy at each evaluation, and their plot."""

from __future__ import annotations

import statistics
from pathlib import Path


def mean_curve(cells: list[dict]) -> dict[float, float]:
    """{epoch: mean held-out accuracy x100} over the cells' evaluations."""
    epochs = sorted({e["epoch"] for c in cells for e in c["evals"]})
    return {ep: 100 * statistics.fmean(e["accuracy"] for c in cells for e in c["evals"] if e["epoch"] == ep)
            for ep in epochs}


def spread_curve(cells: list[dict]) -> dict[float, tuple[float, float, int]]:
    """{epoch: (mean, sample standard deviation, seeds)} of the held-out accuracy x100 over the cells."""
    out = {}
    for ep in sorted({e["epoch"] for c in cells for e in c["evals"]}):
        values = [100 * e["accuracy"] for c in cells for e in c["evals"] if e["epoch"] == ep]
        out[ep] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values))
    return out


def image_name(name: str) -> str:
    """The file :func:`plot` writes for ``name`` (docs/results.md links it as ``img/FILE``)."""
    return f"pretrain_{name}.png"


def plotted(cells: list[dict], arms: dict) -> bool:
    """Whether :func:`plot` draws anything for these cells: some cell is of one of ``arms``."""
    return any(c["arm"] in arms for c in cells)


def plot(name: str, cells: list[dict], arms: dict, folder: Path) -> Path | None:
    """One line per arm (mean over seeds) with a band of one standard deviation over the seeds either side,
    pretrained arms solid, from-scratch arms dashed.

    Args:
        name: the plot's title and file name (:func:`image_name`).
        cells: fine-tuning cells with ``arm`` and ``evals``.
        arms: arm -> (objective or None for from scratch, encoder), in drawing order.
        folder: where the PNG goes.

    Returns:
        The PNG's path; None (nothing written) when no cell is of ``arms``.
    """
    if not plotted(cells, arms):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for i, arm in enumerate(arms):
        runs = [c for c in cells if c["arm"] == arm]
        if not runs:
            continue
        curve = spread_curve(runs)
        x = list(curve)
        mean = [m for m, _, _ in curve.values()]
        ax.plot(x, mean, marker="o", ms=3, color=f"C{i}", ls="-" if arms[arm][0] else "--",
                label=f"{arm} ({len(runs)} seeds)")
        ax.fill_between(x, [m - s for m, s, _ in curve.values()], [m + s for m, s, _ in curve.values()],
                        color=f"C{i}", alpha=0.15, lw=0)
    ax.set(xlabel="fine-tuning epoch", ylabel="validation accuracy (%)",
           title=f"{name}: fine-tuning curves (band: ±1 sd over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / image_name(name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
