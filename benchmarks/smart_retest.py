"""SMART re-tested (issue 18): a vanilla baseline tuned to learn each task, each regularizer's own options chosen
on a tuning split, then every arm on the dev set with 5 seeds, paired with vanilla.

Phases, in order (each writes one JSON cell per run under benchmarks/results/retest/ and skips finished cells, so
the grid spans sessions; `all` runs them in order, each phase using the choices of the one before):

    python benchmarks/smart_retest.py tune        # vanilla: lr x epochs x pooling per task, on the tuning split
    python benchmarks/smart_retest.py tune-arms   # each arm's own options, at the task's tuned vanilla settings
    python benchmarks/smart_retest.py arms        # vanilla and every arm x 5 seeds x 5 tasks, on dev
    python benchmarks/smart_retest.py full        # vanilla and SMART on the full RTE and MRPC training sets
    python benchmarks/smart_retest.py all
    python benchmarks/smart_retest.py --render    # only rebuild docs/results.md

The tuning split is 500 examples carved out of each task's training set (`--set dev_from_train=500`, seeded,
label-stratified), with 1,000 training examples drawn from the rest and seed 1, which is not reported. The reported
runs draw their 1,000 training examples from the whole training set and are scored on `full/<TASK>/dev.json`,
which no choice ever sees. Not run by CI. Needs GENTUNE_DATA pointing at a GLUE/LM-BFF data tree.
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

RESULTS = ALL_RESULTS / "retest"
RUNS = ROOT / "runs" / "retest"
TASKS = ["rte", "mrpc", "cola", "stsb", "sst2"]  # the tables' order
RUN_ORDER = ["cola", "sst2", "stsb", "mrpc", "rte"]  # the cheapest first: complete choices arrive sooner
SEEDS = [13, 21, 42, 87, 100]
FULL_TASKS, FULL_SEEDS = ["rte", "mrpc"], [13, 21, 42]
TUNE_SEED = 1  # not a reported seed
TRAIN_SIZE = 1000
TUNE_SPLIT = 500
LRS = ["2e-5", "5e-5", "1e-4"]
EPOCHS = ["3", "10"]
POOLINGS = ["cls", "mean"]


def _eps(e: str) -> list[str]:
    return ["smart-adv.dropout=shared", f"smart-adv.eps={e}", f"smart-adv.eta={float(e) * 10:g}"]


# arm -> (regularizers, {variant: --set items}): the variants are tried on the tuning split, the best is reported
ARMS = {
    "smart": (["smart"], {"hl0.05": ["smart.half_life=0.05"], "hl0.2": ["smart.half_life=0.2"], "paper": []}),
    "smart-adv-shared": (["smart-adv"], {f"eps{e}": _eps(e) for e in ("1e-5", "1e-4", "1e-3")}),
    "bregman": (["bregman"], {"hl0.05": ["bregman.half_life=0.05"], "hl0.2": ["bregman.half_life=0.2"],
                              "prox10": ["bregman.momentum=false", "bregman.inner_steps=10"]}),
    "r3f": (["r3f"], {"default": []}),
    "rdrop": (["rdrop"], {f"a{a}": [f"rdrop.alpha={a}"] for a in ("0.5", "1", "5")}),
    "l2sp": (["l2sp"], {f"a{a}": [f"l2sp.alpha={a}"] for a in ("0.001", "0.01", "0.1")}),
}


def _main(cell: dict) -> float:
    s = cell["summary"]
    return s["final_dev"][s["main_metric"]]


def run_cell(cell: Path, out: Path, argv: list[str], record: dict) -> bool:
    """One `gentune finetune ARGV` run into ``out``, its summary written to ``cell``; whether it ran."""
    argv = [*argv, "--out", str(out.relative_to(ROOT)), "--set", "save_model=false"]
    command = shlex.join(["gentune", "finetune", *argv])
    if cell.exists() and cells.read_json(cell).get("command") != command:
        print(f"error: {cell.relative_to(ROOT)} was made by another command; move it away to rerun", file=sys.stderr)
        raise SystemExit(2)
    if cells.finished(cell, f"{record} -> {cell.relative_to(ROOT)}"):
        return False
    t0 = time.time()
    runner.gentune(["finetune", *argv], label=" ".join(f"{k}={v}" for k, v in record.items()))
    cells.write_json(cell, {
        **record, "command": command, "config": yaml.safe_load((out / "config.yaml").read_text()),
        "machine": machine(), "commit": commit(), "date": dt.date.today().isoformat(),
        "wall_seconds": time.time() - t0, "summary": cells.read_json(out / "summary.json")})
    return True


def _vanilla_args(task: str, lr: str, epochs: str, pooling: str, seed: int, tune: bool, full: bool = False) -> list[str]:
    """The run's flags: the tuning split carved out (``tune``), the whole training set (``full``) or 1,000 of it."""
    argv = ["--task", task, "--seed", str(seed), "--lr", lr, "--epochs", epochs, "--set", f"pooling={pooling}"]
    argv += [] if full else ["--train-size", str(TRAIN_SIZE)]
    return argv + (["--set", f"dev_from_train={TUNE_SPLIT}"] if tune else [])


def tune_vanilla(tasks: list[str]) -> None:
    for task in tasks:
        for lr in LRS:
            for ep in EPOCHS:
                for pool in POOLINGS:
                    name = f"lr{lr}_ep{ep}_{pool}"
                    run_cell(RESULTS / "tune" / "vanilla" / task / f"{name}.json",
                             RUNS / "tune" / "vanilla" / task / name,
                             _vanilla_args(task, lr, ep, pool, TUNE_SEED, True),
                             {"phase": "tune", "arm": "vanilla", "task": task, "variant": name, "seed": TUNE_SEED,
                              "lr": lr, "epochs": ep, "pooling": pool})


def vanilla_choice(task: str) -> dict | None:
    """The tuned vanilla settings of ``task``: the tuning cell with the best final main metric, once all are in."""
    found = cells.read_cells(RESULTS / "tune" / "vanilla" / task, "*.json")
    if len(found) < len(LRS) * len(EPOCHS) * len(POOLINGS):
        return None
    best = max(found, key=_main)
    return {k: best[k] for k in ("lr", "epochs", "pooling")}


def tune_arms(tasks: list[str], arms: list[str]) -> None:
    for task in tasks:
        base = vanilla_choice(task)
        if base is None:
            print(f"[wait] {task}: vanilla's tuning is not complete")
            continue
        for arm in arms:
            regs, variants = ARMS[arm]
            for variant, sets in variants.items():
                argv = _vanilla_args(task, base["lr"], base["epochs"], base["pooling"], TUNE_SEED, True)
                argv += ["--regularizer", *regs] + [x for item in sets for x in ("--set", item)]
                run_cell(RESULTS / "tune" / arm / task / f"{variant}.json", RUNS / "tune" / arm / task / variant,
                         argv, {"phase": "tune", "arm": arm, "task": task, "variant": variant, "seed": TUNE_SEED,
                                **base})


def arm_choice(arm: str, task: str) -> str | None:
    """The arm's variant with the best final main metric on the tuning split, once all its variants are in."""
    variants = ARMS[arm][1]
    found = cells.read_cells(RESULTS / "tune" / arm / task, "*.json")
    if len(found) < len(variants):
        return None
    return max(found, key=_main)["variant"]


def run_arms(tasks: list[str], arms: list[str], seeds: list[int], phase: str = "arms") -> None:
    for seed in seeds:  # seed-major: every arm's first seeds come before any arm's last
        for task in tasks:
            base = vanilla_choice(task)
            if base is None:
                print(f"[wait] {task}: vanilla's tuning is not complete")
                continue
            for arm in ["vanilla", *arms]:
                argv = _vanilla_args(task, base["lr"], base["epochs"], base["pooling"], seed, False, phase == "full")
                variant = "tuned"
                if arm != "vanilla":
                    variant = arm_choice(arm, task)
                    if variant is None:
                        print(f"[wait] {arm} {task}: its options are not chosen yet")
                        continue
                    regs, variants = ARMS[arm]
                    argv += ["--regularizer", *regs] + [x for item in variants[variant] for x in ("--set", item)]
                run_cell(RESULTS / phase / arm / f"{task}_seed{seed}.json", RUNS / phase / arm / task / f"seed{seed}",
                         argv, {"phase": phase, "arm": arm, "task": task, "variant": variant, "seed": seed, **base})


# ------------------------------------------------------------------------------------------------- the page


def load() -> dict:
    return {p: cells.read_cells(RESULTS / p, "**/*.json") for p in ("tune", "arms", "full")}


def render_tuning(data: dict) -> str:
    """Vanilla on the tuning split: each task's lr x epochs x pooling, the chosen one in bold."""
    rows = [c for c in data["tune"] if c["arm"] == "vanilla"]
    if not rows:
        return ""
    variants = [f"lr{lr}_ep{ep}_{pool}" for pool in POOLINGS for ep in EPOCHS for lr in LRS]
    lines = tables.header(["lr, epochs, pooling", *TASKS])
    for v in variants:
        row = [v.replace("lr", "").replace("_ep", ", ").replace("_", ", ")]
        for task in TASKS:
            cell = next((c for c in rows if c["task"] == task and c["variant"] == v), None)
            chosen = vanilla_choice(task)
            mark = chosen is not None and cell is not None and v == f"lr{chosen['lr']}_ep{chosen['epochs']}_{chosen['pooling']}"
            value = f"{100 * _main(cell):.1f}" if cell else "-"
            row.append(f"**{value}**" if mark else value)
        lines.append(tables.row(row))
    return "\n".join(lines)


def render_arm_tuning(data: dict) -> str:
    rows = [c for c in data["tune"] if c["arm"] != "vanilla"]
    if not rows:
        return ""
    lines = tables.header(["arm", "variant", *TASKS])
    for arm, (_, variants) in ARMS.items():
        for v in variants:
            row = [arm, v]
            for task in TASKS:
                cell = next((c for c in rows if c["arm"] == arm and c["task"] == task and c["variant"] == v), None)
                value = f"{100 * _main(cell):.1f}" if cell else "-"
                row.append(f"**{value}**" if cell and arm_choice(arm, task) == v else value)
            lines.append(tables.row(row))
    return "\n".join(lines)


def render_vanilla(data: dict, phase: str = "arms") -> str:
    """Tuned vanilla on dev beside the trivial predictor on the same dev set: has it learned the task?"""
    lines = tables.header(["task", "metric", "settings", "vanilla (dev)", "trivial (dev)", "vanilla - trivial",
                           "learned (> 2 se)", "seeds"])
    any_row = False
    for task in TASKS:
        tc = [c for c in data[phase] if c["task"] == task and c["arm"] == "vanilla"]
        if not tc:
            continue
        any_row = True
        metric = tc[0]["summary"]["main_metric"]
        values = [_main(c) for c in tc]
        trivial = trivial_baseline(task)
        base = trivial.get(metric, 0.0 if metric in ("pearson", "spearman") else None)
        diff = [v - base for v in values] if base is not None else []
        se = statistics.stdev(diff) / len(diff) ** 0.5 if len(diff) > 1 else float("nan")
        mean = statistics.fmean(diff) if diff else float("nan")
        c0 = tc[0]
        lines.append(tables.row([task, metric, f"lr {c0['lr']}, {c0['epochs']} ep, {c0['pooling']}", stats.fmt(values),
                                 f"{100 * base:.1f}" if base is not None else "-",
                                 f"{100 * mean:+.1f} ± {100 * se:.1f}" if diff else "-",
                                 "yes" if diff and mean > 2 * se else "no", str(len(tc))]))
    return "\n".join(lines) if any_row else ""


def render_arms(data: dict, phase: str = "arms") -> str:
    """Each arm's paired difference to tuned vanilla per task (x100, mean ± se over seeds), the averages."""
    cs = data[phase]
    arms = [a for a in ARMS if any(c["arm"] == a for c in cs)]
    if not arms or not any(c["arm"] == "vanilla" for c in cs):
        return ""
    tasks = [t for t in TASKS if any(c["task"] == t and c["arm"] == "vanilla" for c in cs)]
    lines = tables.header(["task", "metric", "vanilla", *[f"{a} - vanilla" for a in arms]])
    diffs = {a: {} for a in arms}
    for task in tasks:
        by = {(c["arm"], c["seed"]): _main(c) for c in cs if c["task"] == task}
        base = {s: v for (a, s), v in by.items() if a == "vanilla"}
        metric = next(c for c in cs if c["task"] == task)["summary"]["main_metric"]
        row = [task, metric, stats.fmt(list(base.values()))]
        for a in arms:
            d = stats.paired({s: v for (x, s), v in by.items() if x == a}, base)
            if d is not None:
                diffs[a][task] = d
            row.append(stats.fmt_paired(d) + (f" (n={d.n})" if d and d.n != len(base) else ""))
        lines.append(tables.row(row))
    for label, keep in (("average", tasks), ("average without stsb", [t for t in tasks if t != "stsb"])):
        row = [label, "", ""]
        for a in arms:
            if all(t in diffs[a] for t in keep) and keep:
                row.append(stats.fmt_paired(stats.mean_of([diffs[a][t] for t in keep])))
            else:
                row.append("(not every task yet)")
        lines.append(tables.row(row))
    return "\n".join(lines)


def render_scale(data: dict, phase: str = "arms") -> str:
    """STS-B per arm: Pearson beside the MSE and the slope of prediction on gold, which a shrunken scale moves."""
    cs = [c for c in data[phase] if c["task"] == "stsb"]
    if not cs:
        return ""
    lines = tables.header(["arm", "Pearson x100", "dev MSE", "slope (pred on gold)", "seeds"])
    for arm in ["vanilla", *ARMS]:
        ac = [c for c in cs if c["arm"] == arm]
        if not ac:
            continue
        dev = [c["summary"]["final_dev"] for c in ac]
        lines.append(tables.row([arm, stats.fmt([d["pearson"] for d in dev]),
                                 stats.fmt([d["mse"] for d in dev], scale=1, digits=2),
                                 stats.fmt([d["slope"] for d in dev], scale=1, digits=2), str(len(ac))]))
    t = trivial_baseline("stsb")
    if t:
        lines.append(tables.row(["the training mean, everywhere", "undefined", f"{t['mse']:.2f}", "0.00", ""]))
    return "\n".join(lines)


def render_progress(data: dict) -> str:
    done = {p: len(v) for p, v in data.items()}
    planned = {"tune": len(TASKS) * (len(LRS) * len(EPOCHS) * len(POOLINGS) + sum(len(v) for _, v in ARMS.values())),
               "arms": len(TASKS) * len(SEEDS) * (1 + len(ARMS)), "full": len(FULL_TASKS) * len(FULL_SEEDS) * 2}
    return ", ".join(f"{p} {done[p]} of {planned[p]} cells" for p in planned)


def sections(data: dict) -> dict[str, str]:
    out = {"retest/progress": render_progress(data)}
    for key, text in (("retest/tuning", render_tuning(data)), ("retest/arm-tuning", render_arm_tuning(data)),
                      ("retest/vanilla", render_vanilla(data)), ("retest/arms", render_arms(data)),
                      ("retest/scale", render_scale(data)), ("retest/full", render_arms(data, "full"))):
        if text:
            out[key] = text
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", nargs="?", choices=["tune", "tune-arms", "arms", "full", "all"])
    p.add_argument("--tasks", nargs="+", default=RUN_ORDER, choices=TASKS)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    p.add_argument("--render", action="store_true", help="only rebuild docs/results.md from the cells")
    args = p.parse_args()
    if args.render or args.phase is None:
        runner.render_results()
        return 0
    phases = ["tune", "tune-arms", "arms", "full"] if args.phase == "all" else [args.phase]
    for phase in phases:
        if phase == "tune":
            tune_vanilla(args.tasks)
        elif phase == "tune-arms":
            tune_arms(args.tasks, args.arms)
        elif phase == "arms":
            run_arms(args.tasks, args.arms, args.seeds)
        else:
            run_arms([t for t in FULL_TASKS if t in args.tasks], ["smart"], FULL_SEEDS, "full")
        runner.render_results()
    return 0


if __name__ == "__main__":
    sys.exit(main())
