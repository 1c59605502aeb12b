"""Fine-tuning grid: (task, method, seed) cells, each a `gentune finetune` run, each written to its own JSON.

A finished cell is skipped on rerun, and an interrupted cell resumes from its run's checkpoint, so the grid can
span sessions. After every run (and with `--render` alone) benchmarks/render_results.py rebuilds docs/results.md
from all cell files; this script's part of the page is `sections()`.

    # the vanilla baseline of issue 2 (5 tasks x 5 seeds, 1,000 training examples)
    python benchmarks/finetune_grid.py
    # a regularizer, reusing the same protocol (a method name keeps variants apart)
    python benchmarks/finetune_grid.py --regularizer l2sp --set l2sp.alpha=0.01 --name l2sp-a0.01
    python benchmarks/finetune_grid.py --render          # only rebuild docs/results.md
    # a method's own option, chosen on dev with a seed that is not reported (cells kept apart from the grid)
    python benchmarks/finetune_grid.py --tune --regularizer smart --set smart.adv_weight=3 --name smart-ls3

Not run by CI. Needs GENTUNE_DATA (or --data-dir) pointing at a GLUE/LM-BFF data tree.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import statistics
import sys
import time
from pathlib import Path

import yaml

from _lib import cells, runner, stats, tables
from _lib.baselines import trivial_baseline
from _lib.paths import RESULTS as ALL_RESULTS
from _lib.paths import ROOT
from _lib.provenance import commit, machine

RESULTS = ALL_RESULTS / "finetune"  # the grid docs/results.md shows
RUNS = ROOT / "runs" / "grid"
TUNE_RESULTS = ALL_RESULTS / "finetune_tune"  # --tune: choosing a method's own options
TUNE_RUNS = ROOT / "runs" / "grid_tune"
TUNE_SEEDS = [7]  # not a reported seed
HPARAMS = ("model", "epochs", "batch_size", "lr", "warmup_ratio", "weight_decay", "max_length")
TASKS = ["rte", "mrpc", "cola", "stsb", "sst2"]
SEEDS = [13, 21, 42, 87, 100]
SMART_ARMS = ("smart", "smart-ls3", "smart-adv", "r3f")  # the comparison table's arms, in its column order


def run_cell(task: str, seed: int, method: str, args, results: Path = RESULTS, runs: Path = RUNS) -> bool:
    """One cell, ``results/METHOD/TASK_seedS.json``; whether it ran (False: finished before)."""
    cell = results / method / f"{task}_seed{seed}.json"
    out = runs / method / task / f"seed{seed}"
    cmd = ["gentune", "finetune", "--task", task, "--out", str(out.relative_to(ROOT)), "--seed", str(seed),
           "--train-size", str(args.train_size)]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    if args.regularizer:
        cmd += ["--regularizer", *args.regularizer]
    for item in ["save_model=false", *args.set]:
        cmd += ["--set", item]
    if cell.exists():
        # a finished cell counts only for the command that made it: a variant (other --set, --train-size) under
        # the same method name would otherwise be reported, and paired, as this one
        recorded = cells.read_json(cell).get("command")
        if recorded is not None and recorded != shlex.join(cmd):
            print(f"error: {cell.relative_to(ROOT)} was made by `{recorded}`, not `{shlex.join(cmd)}`: give the "
                  "variant its own --name", file=sys.stderr)
            raise SystemExit(2)
    if cells.finished(cell, f"{method} {task} seed {seed}: {cell.relative_to(ROOT)}"):
        return False
    t0 = time.time()
    runner.gentune(cmd[1:], label=f"{method} {task} seed {seed}")
    summary = cells.read_json(out / "summary.json")
    cells.write_json(cell, {
        # the resolved config, so a cell stays reproducible when the CLI defaults change later
        "config": yaml.safe_load((out / "config.yaml").read_text()),
        "task": task, "method": method, "seed": seed, "train_size": args.train_size,
        "command": shlex.join(cmd), "machine": machine(), "commit": commit(),
        "date": dt.date.today().isoformat(), "wall_seconds": time.time() - t0, "summary": summary,
    })
    return True


def _main(cell: dict) -> float:
    s = cell["summary"]
    return s["final_dev"][s["main_metric"]]


def _protocol(cell: dict) -> tuple:
    """What must match for two cells to be a pair: the subsample size and the number of processes (N > 1
    completes an epoch's last batch with repeated examples)."""
    return cell["train_size"], cell["summary"].get("num_processes", 1)


def paired(cells: list[dict], method: str, task: str, baseline: str = "vanilla") -> stats.Paired | None:
    """Method - baseline on the final main metric (x100) over the seeds both have (:func:`stats.paired`), which
    must share the protocol (training-set size, process count)."""
    by = {(c["method"], c["seed"], _protocol(c)): _main(c) for c in cells if c["task"] == task}
    if len({k[2] for k in by if k[0] in (method, baseline)}) > 1:
        raise SystemExit(f"error: {method} and {baseline} cells of {task} mix training-set sizes or process counts")
    return stats.paired({s: v for (m, s, _), v in by.items() if m == method},
                        {s: v for (m, s, _), v in by.items() if m == baseline})


def render_comparison(cells: list[dict], methods: list[str]) -> str:
    """Per task: each method's final main metric and its paired difference to vanilla; the task average last."""
    lines = tables.header(["task", "metric", "vanilla", *[x for m in methods for x in (m, f"{m} - vanilla")]])
    avg = {m: [] for m in ["vanilla", *methods]}
    avg_diff = {m: [] for m in methods}
    for task in TASKS:
        tc = [c for c in cells if c["task"] == task]
        base = [_main(c) for c in tc if c["method"] == "vanilla"]
        if not base:
            continue
        row = [task, tc[0]["summary"]["main_metric"], stats.fmt(base)]
        avg["vanilla"].append(statistics.fmean(base))
        for m in methods:
            vals = [_main(c) for c in tc if c["method"] == m]
            d = paired(cells, m, task)
            row += [stats.fmt(vals) + (f" (n={len(vals)})" if vals and len(vals) != len(base) else ""),
                    stats.fmt_paired(d)]
            if vals and d is not None:
                avg[m].append(statistics.fmean(vals))
                avg_diff[m].append(d)
        lines.append(tables.row(row))
    tasks_done = [t for t in TASKS if any(c["task"] == t and c["method"] == "vanilla" for c in cells)]
    for label, keep in (("average", tasks_done), ("average without stsb", [t for t in tasks_done if t != "stsb"])):
        idx = [tasks_done.index(t) for t in keep]
        n = len(idx)
        row = [label, "", f"{100 * statistics.fmean(avg['vanilla'][i] for i in idx):.1f}" if n else "-"]
        for m in methods:
            if len(avg[m]) == len(tasks_done) and n:
                d = stats.mean_of([avg_diff[m][i] for i in idx])
                partial = f" ({d.n} seeds so far)" if d.n < 5 else ""
                row += [f"{100 * statistics.fmean(avg[m][i] for i in idx):.1f}{partial}", stats.fmt_paired(d)]
            else:
                row += ["(not every task yet)", "-"]
        lines.append(tables.row(row))
    return "\n".join(lines)


def render_regression_scale(cells: list[dict], methods: list[str], trivial: dict) -> str:
    """STS-B's dev MSE per arm beside the constant predictor's and the MSE that predictions shrunk to half the
    gold score would have: what Pearson cannot show."""
    tc = [c for c in cells if c["task"] == "stsb"]
    base = {c["seed"]: c["summary"]["final_dev"]["loss"] for c in tc if c["method"] == "vanilla"}
    if not base:
        return ""
    lines = tables.header(["arm", "dev MSE", "MSE - vanilla's", "Pearson x100"])
    for m in ["vanilla", *methods]:
        mc = [c for c in tc if c["method"] == m]
        if not mc:
            continue
        mse = {c["seed"]: c["summary"]["final_dev"]["loss"] for c in mc}
        d = stats.paired(mse, base, scale=1) if m != "vanilla" else None
        lines.append(tables.row([m, stats.fmt(list(mse.values()), scale=1, digits=2),
                                 f"{d.mean:+.2f} ± {d.se:.2f}" if d else "-",
                                 stats.fmt([c["summary"]["final_dev"]["pearson"] for c in mc])]))
    t = trivial.get("stsb") or {}
    if t:
        lines.append(tables.row(["the training mean, everywhere", f"{t['mse']:.2f}", "", "undefined"]))
        lines.append(tables.row(["gold / 2 (half the scale, perfect correlation)", f"{t['mse_half']:.2f}", "",
                                 "100.0"]))
    return "\n".join(lines)


def render_table(cells: list[dict], method: str, majority: dict[str, dict]) -> str:
    """A method's table: per task and metric, final and best dev (mean ± std; STS-B's MSE unscaled), the trivial
    predictor on the same dev set, speed.

    Args:
        cells: the grid's cells.
        method: the method shown.
        majority: task -> :func:`trivial_baseline`.
    """
    mc = [c for c in cells if c["method"] == method]
    lines = tables.header(["task", "metric", "final dev", "best dev", "trivial (dev)", "seeds", "s/step",
                           "train min/run"])
    for task in TASKS + sorted({c["task"] for c in mc} - set(TASKS)):
        tc = [c for c in mc if c["task"] == task]
        if not tc:
            continue
        s0 = tc[0]["summary"]
        base = majority[task]
        metrics = [s0["main_metric"]] + [m for m in s0["final_dev"] if m not in (s0["main_metric"], "loss")]
        if task == "stsb":
            metrics.append("mse")  # the loss of a regression: Pearson and Spearman cannot see a shrunken scale
        for i, metric in enumerate(metrics):
            key = "loss" if metric == "mse" else metric
            scale = 1 if metric == "mse" else 100
            digits = 2 if metric == "mse" else 1
            final = stats.fmt([c["summary"]["final_dev"][key] for c in tc], scale=scale, digits=digits)
            best = stats.fmt([c["summary"]["best_dev"][key] for c in tc], scale=scale, digits=digits)
            maj = (f"{scale * base[metric]:.{2 if metric == 'mse' else 1}f}" if metric in base else "-")
            if i:
                lines.append(tables.row(["", metric, final, best, maj, "", "", ""]))
                continue
            sps = statistics.fmean(c["summary"]["seconds_per_step"] for c in tc)
            mins = statistics.fmean(c["summary"]["train_seconds"] for c in tc) / 60
            lines.append(tables.row([task, metric, final, best, maj, str(len(tc)), f"{sps:.2f}", f"{mins:.1f}"]))
    return "\n".join(lines)


def render_about(cells: list[dict], method: str) -> str:
    """A method's protocol under its table: sizes, seeds, one cell's command, hyper-parameters, machine, dates."""
    mc = [c for c in cells if c["method"] == method]
    c0 = mc[0]
    example = (c0["command"].replace(f"--seed {c0['seed']}", "--seed SEED")
               .replace(f"/{c0['task']}/seed{c0['seed']}", "/TASK/seedSEED")
               .replace(f"--task {c0['task']}", "--task TASK"))
    lines = [f"- training examples: {', '.join(map(str, sorted({c['train_size'] for c in mc})))}; "
             f"seeds: {', '.join(map(str, sorted({c['seed'] for c in mc})))}",
             f"- one cell: `{example}`",
             *([f"- hyper-parameters: " + ", ".join(f"{k} {c0['config'][k]}" for k in HPARAMS)]
               if "config" in c0 else []),
             "- grid: `python benchmarks/finetune_grid.py"
             + ("" if method == "vanilla" else f" --name {method} ...") + "`",
             f"- machine: {c0['machine']}; dates: {', '.join(sorted({c['date'] for c in mc}))}"]
    return "\n".join(lines)


def render_tuning(cells: list[dict]) -> str:
    """The --tune cells: each variant's final dev main metric per task and the task average."""
    lines = tables.header(["variant", *TASKS, "average", "command"])
    for m in sorted({c["method"] for c in cells}):
        mc = [c for c in cells if c["method"] == m]
        vals = {t: [_main(c) for c in mc if c["task"] == t] for t in TASKS}
        full = all(vals[t] for t in TASKS)
        avg = f"{100 * statistics.fmean(statistics.fmean(vals[t]) for t in TASKS):.1f}" if full else "-"
        example = mc[0]["command"].split(" --out ")[1].split(" ", 1)[1] if " --out " in mc[0]["command"] else ""
        lines.append(tables.row([m, *[f"{100 * statistics.fmean(vals[t]):.1f}" if vals[t] else "-" for t in TASKS],
                                 avg, f"`{example}`"]))
    return "\n".join(lines)


def load() -> dict:
    """The grid's cells and the --tune cells."""
    return {"grid": cells.read_cells(RESULTS, "*/*.json"), "tune": cells.read_cells(TUNE_RESULTS, "*/*.json")}


def sections(data: dict) -> dict[str, str]:
    """This script's blocks of docs/results.md by template key (``finetune/...``), for those that have cells."""
    grid, tune = data["grid"], data["tune"]
    methods = sorted({c["method"] for c in grid}, key=lambda m: (m != "vanilla", m))
    out = {}
    smart_arms = [m for m in SMART_ARMS if m in methods]
    majority = {t: trivial_baseline(t) for t in sorted({c["task"] for c in grid})}
    if smart_arms:
        out["finetune/comparison"] = render_comparison(grid, smart_arms)
        out["finetune/stsb-scale"] = render_regression_scale(grid, smart_arms, majority)
    for m in methods:
        out[f"finetune/{m}/table"] = render_table(grid, m, majority)
        out[f"finetune/{m}/about"] = render_about(grid, m)
    if tune:
        out["finetune/tuning-seeds"] = ", ".join(map(str, sorted({c["seed"] for c in tune})))
        out["finetune/tuning"] = render_tuning(tune)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=TASKS)
    p.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    p.add_argument("--train-size", type=int, default=1000)
    p.add_argument("--regularizer", nargs="+", default=[])
    p.add_argument("--set", action="append", default=[], help="passed to gentune finetune --set")
    p.add_argument("--name", help="method name for the cells (default: vanilla, or the regularizers joined by +)")
    p.add_argument("--data-dir")
    p.add_argument("--render", action="store_true", help="only rebuild docs/results.md from the cell files")
    p.add_argument("--tune", action="store_true",
                   help=f"tuning cells (default seeds {TUNE_SEEDS}, not reported ones) into {TUNE_RESULTS.name}/, "
                        "shown apart from the grid; give each option value its own --name")
    args = p.parse_args()
    results, runs = (TUNE_RESULTS, TUNE_RUNS) if args.tune else (RESULTS, RUNS)
    if args.tune and args.seeds == SEEDS:
        args.seeds = TUNE_SEEDS
    if not args.render:
        method = args.name or ("+".join(args.regularizer) if args.regularizer else "vanilla")
        # seeds outer, tasks inner: an interrupted grid still covers every task with some seeds
        for seed in args.seeds:
            for task in args.tasks:
                if run_cell(task, seed, method, args, results, runs):
                    runner.render_results()
    runner.render_results()
    return 0


if __name__ == "__main__":
    sys.exit(main())
