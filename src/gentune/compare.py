"""``gentune compare RUN_DIR...``: the runs' summaries side by side, and their dev curves in one plot.

Reads each run folder's ``summary.json`` (a finished run), ``config.yaml`` and ``metrics.jsonl`` (an unfinished one
shows its progress so far); writes ``OUT/compare.md`` (the table and the plot) and ``OUT/compare.png``.
"""

from __future__ import annotations

from pathlib import Path

from .errors import GentuneError
from .fs import read_json, write_text_atomic
from .report import integer_steps, pyplot, read_log


def read_run(folder: Path) -> dict:
    """What the table and the plot need of one run folder."""
    if not folder.is_dir():
        raise GentuneError(f"{folder}: no such run folder")
    summary_file, config_file = folder / "summary.json", folder / "config.yaml"
    if not summary_file.is_file() and not config_file.is_file():
        raise GentuneError(f"{folder}: not a gentune run folder (no summary.json or config.yaml)")
    summary = read_json(summary_file, what="run summary") if summary_file.is_file() else {}
    config = {}
    if config_file.is_file():
        import yaml

        try:
            config = yaml.safe_load(config_file.read_text()) or {}
        except yaml.YAMLError as e:
            raise GentuneError(f"{config_file}: not YAML ({str(e).splitlines()[0]})") from None
    evals = [r for r in read_log(folder / "metrics.jsonl") if r.get("type") == "eval"] \
        if (folder / "metrics.jsonl").is_file() else []
    main = summary.get("main_metric") or ("loss" if config.get("objective") else None)
    if main is None and evals:
        main = next(k for k in evals[-1] if k not in ("type", "step", "epoch"))
    return {"folder": folder, "summary": summary, "config": config, "evals": evals, "main": main}


def _regularizers(run: dict) -> str:
    config = run["config"]
    names = run["summary"].get("regularizers", config.get("regularizer") or [])
    options = config.get("regularizer_options") or {}
    parts = []
    for name in names:
        opts = options.get(name) or {}
        parts.append(name + (" (" + ", ".join(f"{k}={v}" for k, v in opts.items()) + ")" if opts else ""))
    if config.get("peft"):
        parts.append(f"{config['peft']} adapter")
    return "; ".join(parts) or "none"


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("-" if value is None else str(value))


def rows(runs: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The table: one row per run."""
    header = ["run", "task", "model", "regularizers", "seed", "steps", "best dev (step)", "final dev", "other dev",
              "train time"]
    table = []
    for run in runs:
        s, c, main = run["summary"], run["config"], run["main"]
        best, final = s.get("best_dev") or {}, s.get("final_dev") or {}
        if not s and run["evals"]:  # unfinished: its last evaluation
            final = run["evals"][-1]
        best_cell = f"{main} {_fmt(best.get(main))} ({s.get('best_step')})" if best else "-"
        others = ", ".join(f"{k} {_fmt(v)}" for k, v in final.items()
                           if k not in (main, "type", "step", "epoch") and isinstance(v, (int, float)))
        steps = s.get("train_steps") if s else (f"{run['evals'][-1]['step']} so far" if run["evals"] else "0")
        time = f"{s['train_seconds']:.0f} s" if isinstance(s.get("train_seconds"), (int, float)) else "unfinished"
        table.append([str(run["folder"]), str(s.get("task") or s.get("objective") or c.get("task")
                                             or c.get("objective") or "-"),
                      str(s.get("model") or c.get("model") or "-"), _regularizers(run), str(s.get("seed", c.get("seed"))),
                      str(steps), best_cell, f"{main} {_fmt(final.get(main))}" if final else "-", others or "-", time])
    return header, table


def _markdown(header: list[str], table: list[list[str]]) -> list[str]:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|")

    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(esc(c) for c in row) + " |" for row in table)]


def _text(header: list[str], table: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *table]]


def plot(runs: list[dict], path: Path) -> Path | None:
    """One panel per dev metric the runs select by (usually one), every run's dev curve overlaid."""
    metrics = list(dict.fromkeys(r["main"] for r in runs if r["evals"] and r["main"]))
    if not metrics:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.5 * len(metrics), 4.2), squeeze=False)
    names = [r["folder"].name for r in runs]
    labels = names if len(set(names)) == len(names) else [str(r["folder"]) for r in runs]
    for ax, metric in zip(axes[0], metrics):
        for k, (run, label) in enumerate(zip(runs, labels)):
            if run["main"] != metric or not run["evals"]:
                continue
            points = [(r["step"], r[metric]) for r in run["evals"] if isinstance(r.get(metric), (int, float))]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3.5, lw=1.6,
                    color=f"C{k % 10}", ls=("-", "--", ":", "-.")[(k // 10) % 4], label=label)
            best = run["summary"].get("best_step")
            if best is not None and metric in (run["summary"].get("best_dev") or {}):
                ax.plot([best], [run["summary"]["best_dev"][metric]], marker="*", ms=12, color=f"C{k % 10}",
                        ls="none")
        ax.set(xlabel="optimizer step", ylabel=f"dev {metric}", title=f"dev {metric} (star: the kept checkpoint)")
        integer_steps(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def compare(folders: list[str], out: str | None = None) -> str:
    """The comparison table as text; with ``out``, OUT/compare.md (table + plot) and OUT/compare.png."""
    if not folders:
        raise GentuneError("compare: give one or more run folders")
    runs = [read_run(Path(f)) for f in folders]
    header, table = rows(runs)
    text = _text(header, table)
    if out:
        target = Path(out)
        if target.exists() and not target.is_dir():
            raise GentuneError(f"--out {target}: exists and is not a folder")
        png = plot(runs, target / "compare.png")
        md = ["# gentune compare", "", *_markdown(header, table), ""]
        if png is not None:
            md += ["![dev curves](compare.png)", ""]
        target.mkdir(parents=True, exist_ok=True)
        write_text_atomic(target / "compare.md", "\n".join(md))
        text += ["", f"-> {target / 'compare.md'}" + (f", {png}" if png else "")]
    return "\n".join(text)


__all__ = ["compare", "plot", "rows"]
