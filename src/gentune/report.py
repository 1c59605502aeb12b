"""Run reports: PNG plots of the training loss and the dev metric, from OUT/metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path


def read_log(path: Path) -> list[dict]:
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def split_terms(train: list[dict]) -> tuple[list[str], list[str], list[str]]:
    """The extra values of the training log, split for plotting: counts (whole numbers at every step, such as
    RadReg's revived units or skipped steps: their own linear panel), values positive at every step (regularizer
    terms, orders of magnitude below the task loss: a log scale), and the rest (signed estimates such as RadReg's
    complexity: a linear scale, where dropping the values <= 0 would bias the curve)."""
    names = sorted({k for r in train for k in r} - {"type", "step", "epoch", "lr", "loss", "grad_norm", "task"})
    values = {n: [float(r[n]) for r in train if n in r] for n in names}
    counts = [n for n in names if all(v.is_integer() for v in values[n])]
    positive = [n for n in names if n not in counts and all(v > 0 for v in values[n])]
    return positive, [n for n in names if n not in counts + positive], counts


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def integer_steps(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _window(n: int) -> int:
    """The moving-average window of a curve of ``n`` points: about 5% of it, none under 10 points."""
    return max(1, n // 20) if n >= 10 else 1


def _curve(ax, steps, values, label: str, color: str) -> None:
    """The raw values, clearly visible, and their moving average over it when there are enough of them."""
    window = _window(len(values))
    ax.plot(steps, values, color=color, alpha=0.45 if window > 1 else 1.0, lw=1.0,
            marker="o" if len(values) < 10 else None, ms=3, label=label if window == 1 else f"{label} (raw)")
    if window > 1:
        ax.plot(steps, _smooth(values, window), color=color, lw=2.0, label=f"{label} ({window}-step mean)")


def _finish(fig, axes):
    """Every panel: whole-number steps, a light grid, a legend; then the layout."""
    for ax in axes:
        integer_steps(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    # fixed margins in inches (tight_layout measured every tick label and took a quarter of a tiny run's time)
    width, height = fig.get_size_inches()
    left, right, gap, n = 0.75, 0.2, 0.95, len(axes)
    panel = (width - left - right - (n - 1) * gap) / n
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=0.55 / height, top=1 - 0.35 / height,
                        wspace=gap / panel)
    return fig


def loss_figure(train: list[dict], title: str):
    """The training loss, raw and moving average; beside it the regularizer terms on a log scale, the logged values
    that can be 0 or negative on a linear one, and counts. A value constant over the run gets no panel."""
    plt = pyplot()
    positive, signed, counts = split_terms(train)
    varying = {n for n in positive + signed + counts if len({r[n] for r in train if n in r}) > 1}
    titles = {"log": "regularizer terms, positive values (log scale)", "linear": "other logged values", "counts": "counts"}
    panels = [(kind, [n for n in names if n in varying]) for kind, names in zip(titles, (positive, signed, counts))]
    panels = [(kind, names) for kind, names in panels if names]
    fig, axes = plt.subplots(1, 1 + len(panels), figsize=(6 + 5 * len(panels), 3.8), squeeze=False)
    ax = axes[0][0]
    _curve(ax, [r["step"] for r in train], [r["loss"] for r in train], "loss", "C0")
    ax.set(xlabel="optimizer step", ylabel="training loss", title=f"{title}: training loss")
    for ax, (kind, names) in zip(axes[0][1:], panels):
        for k, name in enumerate(names):
            pts = [(r["step"], r[name]) for r in train if name in r]
            _curve(ax, [s for s, _ in pts], [float(v) for _, v in pts], name, f"C{k + 1}")
        ax.set(xlabel="optimizer step", ylabel="value", yscale="log" if kind == "log" else "linear",
               title=titles[kind])
        if kind == "linear":
            ax.axhline(0, color="0.6", lw=0.8)
    return _finish(fig, axes[0])


def dev_figure(evals: list[dict], main_metric: str, title: str):
    """The dev metrics per evaluation in one panel (the main one, which picks the best checkpoint, drawn
    heavier), the dev loss in its own panel."""
    plt = pyplot()
    metrics = [main_metric] + sorted({k for r in evals for k in r} - {"type", "step", "epoch", "loss", main_metric})
    metrics = [m for m in metrics if all(isinstance(r.get(m), (int, float)) for r in evals)]
    has_loss = all(isinstance(r.get("loss"), (int, float)) for r in evals) and main_metric != "loss"
    fig, axes = plt.subplots(1, 1 + has_loss, figsize=(5.5 * (1 + has_loss), 3.8), squeeze=False)
    steps = [r["step"] for r in evals]
    ax = axes[0][0]
    for k, m in enumerate(metrics):
        ax.plot(steps, [r[m] for r in evals], marker="o", ms=4, color=f"C{k}", lw=2.0 if m == main_metric else 1.2,
                label=f"{m} (selects the best)" if m == main_metric and len(metrics) > 1 else m)
    ax.set(xlabel="optimizer step", ylabel="dev metric", title=f"{title}: dev {main_metric}")
    if has_loss:
        axes[0][1].plot(steps, [r["loss"] for r in evals], marker="s", ms=4, color="C3", label="dev loss")
        axes[0][1].set(xlabel="optimizer step", ylabel="dev loss",
                       title="dev loss (rising while the metric stalls: over-fitting)")
    return _finish(fig, axes[0])


def plot_run(out: Path, main_metric: str) -> list[Path]:
    """Write OUT/loss.png (:func:`loss_figure`) and OUT/dev.png (:func:`dev_figure`) from OUT/metrics.jsonl."""
    out = Path(out)
    log = out / "metrics.jsonl"
    if not log.exists():
        return []
    plt = pyplot()
    records = read_log(log)
    train = [r for r in records if r.get("type") == "train"]
    evals = [r for r in records if r.get("type") == "eval"]
    written = []
    for name, fig in (("loss.png", loss_figure(train, out.name) if train else None),
                      ("dev.png", dev_figure(evals, main_metric, out.name) if evals else None)):
        if fig is not None:
            fig.savefig(out / name, dpi=110)
            plt.close(fig)
            written.append(out / name)
    return written
