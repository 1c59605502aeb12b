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


def plot_run(out: Path, main_metric: str) -> list[Path]:
    """Write OUT/loss.png (training loss, raw and moving average; beside it the regularizer terms on a log scale,
    the logged values that can be 0 or negative on a linear one, and counts) and OUT/dev.png (dev metric and loss
    per eval)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    log = out / "metrics.jsonl"
    if not log.exists():
        return []
    records = read_log(log)
    train = [r for r in records if r.get("type") == "train"]
    evals = [r for r in records if r.get("type") == "eval"]
    written = []
    if train:
        positive, signed, counts = split_terms(train)
        titles = {"log": "regularizer terms", "linear": "other logged values", "counts": "counts"}
        panels = [(kind, names) for kind, names in zip(titles, (positive, signed, counts)) if names]
        fig, axes = plt.subplots(1, 1 + len(panels), figsize=(6 + 5 * len(panels), 3.5), squeeze=False)
        ax = axes[0][0]
        steps = [r["step"] for r in train]
        loss = [r["loss"] for r in train]
        ax.plot(steps, loss, alpha=0.3, lw=0.8, label="loss")
        ax.plot(steps, _smooth(loss, max(1, len(loss) // 20)), lw=1.6, label="moving average")
        ax.set(xlabel="optimizer step", ylabel="training loss", title=f"{out.name}: training loss")
        ax.legend()
        for ax, (kind, names) in zip(axes[0][1:], panels):
            for name in names:
                pts = [(r["step"], r[name]) for r in train if name in r]
                values = [v for _, v in pts]
                ax.plot([s for s, _ in pts], _smooth(values, max(1, len(values) // 20)), lw=1.4, label=name)
            ax.set(xlabel="optimizer step", ylabel="moving average", yscale="log" if kind == "log" else "linear",
                   title=titles[kind])
            if kind == "linear":
                ax.axhline(0, color="0.6", lw=0.8)
            ax.legend()
        fig.tight_layout()
        fig.savefig(out / "loss.png", dpi=110)
        plt.close(fig)
        written.append(out / "loss.png")
    if evals:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        steps = [r["step"] for r in evals]
        ax.plot(steps, [r[main_metric] for r in evals], marker="o", color="C0", label=f"dev {main_metric}")
        ax.set(xlabel="optimizer step", ylabel=f"dev {main_metric}", title=f"{out.name}: dev {main_metric} and loss")
        ax.grid(alpha=0.3)
        # dev loss on a second axis: over-fitting shows as rising loss while the metric stalls
        ax2 = ax.twinx()
        ax2.plot(steps, [r["loss"] for r in evals], marker="s", ls="--", color="C1", label="dev loss")
        ax2.set_ylabel("dev loss")
        lines = ax.get_lines() + ax2.get_lines()
        ax.legend(lines, [l.get_label() for l in lines], loc="best")
        fig.tight_layout()
        fig.savefig(out / "dev.png", dpi=110)
        plt.close(fig)
        written.append(out / "dev.png")
    return written
