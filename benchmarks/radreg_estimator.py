"""Which RadReg estimate of the MLP heads' complexity reaches the supremum it stands for (issue 24, item 1).

RadReg's penalty for two-layer ReLU heads is, per sign vector, a sup over the head class on the downstream batch;
the running estimate may fall short of it. Each candidate estimator pretrains for a short run (``STEPS`` optimizer
steps) with ``radreg.supremum_every``, which logs every ``EVERY`` steps the sup on the current downstream batch
with the signs the estimate used (a long single-unit search off the training graph: 32 starts x 300 steps, see
gentune.diagnostics.rademacher.unit_supremum) beside the running estimate. Reported: the estimate's share of the
sup over the second half of the run (mean ± std over the logged steps), the sup itself, and RadReg's step-time
ratio against plain pretraining with that estimator (both kinds of step interleaved in one process).

The setting is the heterogeneous one of the seed paper (item 2 of the issue): the encoder pretrains on the
CIFAR-10 images of 8 classes (``exclude_classes=cat,dog``; the shared held-out split removed), RadReg's unlabeled
stream is the cat and dog images of the training part (benchmarks/_lib/images.py ``downstream_pool``: the
held-out images of split seed 0 removed), 16 a step, so that in 300 steps each image comes back at most once: the
case where the per-image sign pool of the old default cannot help. lambda is each objective's tuned weight
(benchmarks/results/radreg/choice*.json). No labels are used, and nothing is evaluated on a validation split:
the choice is made on pretraining data only.

    python benchmarks/radreg_estimator.py                       # both objectives: about 45 min on 2 cores
    python benchmarks/radreg_estimator.py --objectives context-encoder
    python benchmarks/radreg_estimator.py --stage overhead      # only the step times (minutes)
    python benchmarks/radreg_estimator.py --smoke               # 6-step runs into /tmp, a printed preview

Cells: benchmarks/results/radreg_estimator/OBJECTIVE/CANDIDATE.json (the run's logged supremum trace) and
overhead-OBJECTIVE.json; finished cells are skipped. benchmarks/render_results.py renders them
(``sections()``, ``plots()``). Not run by CI.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _lib import cells, images, runner, tables, template
from _lib.paths import IMG, RESULTS, ROOT, RUNS
from _lib.provenance import commit, machine

OUT_RESULTS, OUT_RUNS = RESULTS / "radreg_estimator", RUNS / "radreg_estimator"
STEPS, EVERY, BATCH = 300, 20, 16
# name -> (radreg options, what it is); "heads-pool-T1" was the default before this study
CANDIDATES = {
    "heads-pool-T1": ({}, "m heads, one sign per pool image and head, 1 ascent step a step (the old default)"),
    "heads-pool-T10": ({"ascent_steps": 10}, "the same with 10 ascent steps"),
    "heads-pool512-T10": ({"pool_size": 512, "ascent_steps": 10},
                          "a pool of 512 images (each back every 32 steps), 10 ascent steps"),
    "heads-fresh-T30": ({"signs": "fresh", "ascent_steps": 30, "ascent_lr": 0.1},
                        "fresh signs every step, warm-started heads, 30 ascent steps"),
    "unit-T20": ({"estimator": "unit"}, "fresh signs, the single-unit ascent on the batch: 20 steps from 8 starts"),
    "unit-T5-R2": ({"estimator": "unit", "ascent_steps": 5, "restarts": 2}, "the same, 5 steps from 2 starts"),
}


def command(objective: str, name: str, args, pool: Path, out: Path) -> list[str]:
    """``gentune pretrain`` for one candidate: the grid's encoder and objective options, ``args.steps`` steps."""
    encoder, flags = images.PRETRAIN[objective]
    flags = [f for i, f in enumerate(flags) if f != "--epochs" and (i == 0 or flags[i - 1] != "--epochs")]
    options = {"data": os.path.relpath(pool, ROOT), "head": "mlp", "weight": images.radreg_weight(objective),
               "batch_size": BATCH, "supremum_every": args.every, **CANDIDATES[name][0]}
    return ["pretrain", "--objective", objective, "--model", encoder, "--data", args.data,
            "--out", os.path.relpath(out, ROOT), *flags, "--max-steps", str(args.steps),
            "--set", "exclude_classes=cat,dog", "--set", "save_steps=0", "--regularizer", "radreg",
            "--set", *[f"radreg.{k}={v}" for k, v in options.items()]]


def trace(out: Path) -> list[dict]:
    """The logged supremum records of a run: step, running estimate, supremum, their ratio."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{"step": r["step"], "estimate": r["radreg_complexity"], "supremum": r["radreg_supremum"],
             "ratio": r.get("radreg_supremum_ratio")} for r in rows
            if r.get("type") == "train" and "radreg_supremum" in r]


def run(objective: str, name: str, args) -> Path:
    """One candidate's short pretraining as a cell (skipped once written)."""
    results = Path(args.results) / objective
    cell = results / f"{name}.json"
    if cells.finished(cell, f"{objective} {name}"):
        return cell
    pool = images.downstream_pool("cat-dog", args.data, images.RADREG_RUNS)  # radreg_grid.py's, written once
    out = Path(args.runs) / objective / name
    argv = command(objective, name, args, pool, out)
    t0 = time.time()
    runner.gentune(argv, label=f"{objective} {name}")
    cells.write_json(cell, {"objective": objective, "candidate": name, "options": CANDIDATES[name][0],
                            "what": CANDIDATES[name][1], "weight": images.radreg_weight(objective),
                            "steps": args.steps,
                            "command": shlex.join(["gentune", *argv]), "machine": machine(), "commit": commit(),
                            "date": dt.date.today().isoformat(), "wall_seconds": time.time() - t0,
                            "summary": cells.read_json(out / "summary.json"), "trace": trace(out)})
    return cell


def overhead(objective: str, args) -> Path:
    """Every candidate's step-time ratio against plain pretraining (:func:`images.step_time_ratio`), one cell."""
    cell = Path(args.results) / f"overhead-{objective}.json"
    if cells.finished(cell, f"{objective} step times"):
        return cell
    ratios = {}
    for name, (options, _) in CANDIDATES.items():
        print(f"[time] {objective} {name}", flush=True)
        radreg = {"head": "mlp", "weight": images.radreg_weight(objective), "batch_size": BATCH, **options}
        ratios[name] = images.step_time_ratio(args.data, objective, radreg, steps=args.time_steps)
    cells.write_json(cell, {"objective": objective, "date": dt.date.today().isoformat(), "commit": commit(),
                            "candidates": ratios})
    return cell


def second_half(cell: dict) -> list[float]:
    """The ratios logged over the second half of the run."""
    half = cell["steps"] / 2
    return [r["ratio"] for r in cell["trace"] if r["step"] > half and r["ratio"] is not None]


def load(results: Path = OUT_RESULTS) -> dict:
    return {"runs": {o: {c["candidate"]: c for c in cells.read_cells(results / o)} for o in images.PRETRAIN},
            "overhead": {o: cells.read_json(results / f"overhead-{o}.json") for o in images.PRETRAIN
                         if (results / f"overhead-{o}.json").exists()}}


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def table(data: dict, objective: str) -> str | None:
    runs = data["runs"][objective]
    if not runs:
        return None
    times = data["overhead"].get(objective, {}).get("candidates", {})
    lines = tables.header(["estimator", "what", "estimate / sup (2nd half)", "sup (2nd half)", "estimate",
                           "step time vs plain"], ["---", "---", "---:", "---:", "---:", "---:"])
    for name in CANDIDATES:
        if name not in runs:
            continue
        c = runs[name]
        late = [r for r in c["trace"] if r["step"] > c["steps"] / 2]
        ratio = times.get(name, {}).get("ratio")
        lines.append(tables.row([f"`{name}`", c["what"], _mean_std(second_half(c)),
                                 _mean_std([r["supremum"] for r in late]), _mean_std([r["estimate"] for r in late]),
                                 f"{ratio:.2f}x" if ratio else "-"]))
    any_cell = next(iter(runs.values()))
    lines += ["", f"{len(runs)} runs of {any_cell['steps']} steps ({objective}, lambda {any_cell['weight']}); "
                  f"{any_cell['date']}, {any_cell['machine']}; command of one: `{any_cell['command']}`"]
    return "\n".join(lines)


def chosen(data: dict) -> str | None:
    """The candidate whose ratio over the second half, averaged over the objectives run, is highest; among those
    within 0.01 of it, the one with the smallest mean step-time ratio (when measured)."""
    ran = [o for o in data["runs"] if data["runs"][o]]
    names = [n for n in CANDIDATES if all(n in data["runs"][o] for o in ran)]
    if not ran or not names:
        return None
    scored = {n: statistics.mean(statistics.mean(second_half(data["runs"][o][n]) or [0.0]) for o in ran)
              for n in names}
    best = max(scored.values())
    near = [n for n in names if scored[n] >= best - 0.01]

    def cost(name: str) -> float:
        ratios = [data["overhead"][o]["candidates"][name]["ratio"] for o in ran
                  if name in data["overhead"].get(o, {}).get("candidates", {})]
        return statistics.mean(ratios) if ratios else float("inf")

    return min(near, key=lambda n: (cost(n), -scored[n]))


def sections(data: dict | None = None) -> dict[str, str]:
    data = load() if data is None else data
    out = {f"radreg_estimator/{o}": t for o in images.PRETRAIN if (t := table(data, o))}
    if any(data["runs"].values()):
        out["radreg_estimator/plot"] = "![running estimate / supremum against the step](img/radreg_supremum.png)"
    best = chosen(data)
    if best:
        out["radreg_estimator/choice"] = (f"Chosen by the ratio over the second half, averaged over the "
                                          f"objectives (ties within 0.01 broken by the step time): `{best}` "
                                          f"({CANDIDATES[best][1]}).")
    return out


def plots(data: dict, folder: Path = IMG) -> list[Path]:
    """docs/img/radreg_supremum.png: the estimate's share of the supremum against the step, one panel per
    objective, one line per candidate."""
    objectives = [o for o in images.PRETRAIN if data["runs"][o]]
    if not objectives:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(objectives), figsize=(6 * len(objectives), 4), squeeze=False)
    for ax, objective in zip(axes[0], objectives):
        for name in CANDIDATES:
            c = data["runs"][objective].get(name)
            if c:
                points = [(r["step"], r["ratio"]) for r in c["trace"] if r["ratio"] is not None]
                ax.plot(*zip(*points), marker=".", label=name)
        ax.axhline(0.8, color="grey", linestyle=":", linewidth=1)
        ax.set(title=f"{objective}: running estimate / supremum on the batch", xlabel="pretraining step",
               ylabel="ratio", ylim=(0, 1.05))
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = folder / "radreg_supremum.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return [path]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=["all", "ratio", "overhead"], default="all")
    p.add_argument("--objectives", nargs="+", choices=list(images.PRETRAIN), default=list(images.PRETRAIN))
    p.add_argument("--candidates", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    p.add_argument("--data", default=os.environ.get("GENTUNE_IMAGES", images.DEFAULT_DATA),
                   help="the CIFAR-10 training archive (default: GENTUNE_IMAGES or ../shared/...)")
    p.add_argument("--smoke", action="store_true", help="6-step runs into a temporary folder; print the blocks")
    args = p.parse_args(argv)
    args.data = str(Path(args.data).resolve())
    args.steps, args.every, args.time_steps = STEPS, EVERY, 12
    args.results, args.runs = OUT_RESULTS, OUT_RUNS
    if args.smoke:
        tmp = Path(tempfile.mkdtemp(prefix="radreg_estimator_"))
        args.steps, args.every, args.time_steps = 6, 2, 1
        args.results, args.runs = tmp / "results", tmp / "runs"
    for objective in args.objectives:
        if args.stage in ("all", "ratio"):
            for name in args.candidates:
                run(objective, name, args)
        if args.stage in ("all", "overhead"):
            overhead(objective, args)
    if args.smoke:
        data = load(Path(args.results))
        print(template.preview(sections(data)))
        print("plots:", plots(data, Path(args.results)))
        return 0
    runner.render_results()
    return 0


if __name__ == "__main__":
    sys.exit(main())
