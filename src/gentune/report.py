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


def plot_run(out: Path, main_metric: str) -> list[Path]:
    """Write OUT/loss.png (training loss, raw and moving average; regularizer terms on a log scale beside it) and
    OUT/dev.png (dev metric and loss per eval)."""
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
        # regularizer terms are orders of magnitude below the task loss: their own panel, log scale
        terms = sorted({k for r in train for k in r} - {"type", "step", "epoch", "lr", "loss", "grad_norm", "task"})
        fig, axes = plt.subplots(1, 2 if terms else 1, figsize=(11 if terms else 6, 3.5), squeeze=False)
        ax = axes[0][0]
        steps = [r["step"] for r in train]
        loss = [r["loss"] for r in train]
        ax.plot(steps, loss, alpha=0.3, lw=0.8, label="loss")
        ax.plot(steps, _smooth(loss, max(1, len(loss) // 20)), lw=1.6, label="moving average")
        ax.set(xlabel="optimizer step", ylabel="training loss", title=f"{out.name}: training loss")
        ax.legend()
        if terms:
            ax = axes[0][1]
            for name in terms:
                pts = [(r["step"], r[name]) for r in train if name in r and r[name] > 0]
                if pts:
                    values = [v for _, v in pts]
                    ax.plot([s for s, _ in pts], _smooth(values, max(1, len(values) // 20)), lw=1.4, label=name)
            ax.set(xlabel="optimizer step", ylabel="term (moving average)", yscale="log",
                   title="regularizer terms")
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
