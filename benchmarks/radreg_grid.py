"""The RadReg experiment of Deng, Hong, Zhou, Mahdavi (AISTATS 2024) at our scale: MAE and context-encoder
pretraining with and without RadReg at the same budget, then the few-label fine-tuning protocol of
benchmarks/pretrain_grid.py (its constants and cell runners: benchmarks/_lib/images.py).

- RadReg's unlabeled downstream data for a task are the task's training pool without labels: the training images
  of the task's classes, the held-out validation images excluded (the labelled fine-tuning images of every seed
  are drawn from this pool). One OBJECTIVE+RadReg pretraining per task; the plain runs are pretrain_grid.py's,
  unless those ran under another (device, mixed precision) than the RadReg arm (bf16 on a GPU against float32 on
  a CPU): then this script pretrains and fine-tunes the plain arm again under the RadReg arm's setting and pairs
  with that one, so that a pair differs only in RadReg.
- lambda and the head class are chosen per objective on a validation split only (``--stage tune``): for each
  candidate, a shortened OBJECTIVE+RadReg pretraining (``TUNE_EPOCHS``) and a shortened cat-dog fine-tuning with a
  seed that is not reported (7), scored on a *tuning* split: the reported held-out images (split seed 0) are
  removed first (``exclude_split_seed=0``) and 5,000 of the rest are held out with split seed 1. Tuning never sees
  a reported validation image, and its own validation images are kept out of its pretraining and of RadReg's
  unlabeled pool. The best wins, compared with the plain objective under the same shortened protocol. The choice
  is written to benchmarks/results/radreg/choice.json (MAE) or choice-context-encoder.json and used by the full
  runs. Each pair fine-tunes with the plain arm's tuned learning rate: it differs only in the pretraining.
- Reported: accuracy mean ± std over seeds 13, 21, 42, 87, 100, the paired difference to the plain objective with
  its standard error, the fine-tuning curves of both arms in one plot per task with a convergence table, and
  RadReg's pretraining step-time overhead measured in one process with the two step kinds interleaved.
- An ablation of the tuning task (``--stage per-task``, not part of ``all``): lambda and the head class tuned on
  each other task's own tuning split the same way; where that choice differs from cat-dog's, the task's RadReg arm
  again with it (arm OBJECTIVE+radreg-own), paired with the same plain arm.

benchmarks/render_results.py puts the cells in docs/results.md (this script's part: `sections()`, `plots()`); it
runs after every cell and at the end.

    python benchmarks/radreg_grid.py --stage tune        # 10 min (context encoder) to 40 min (MAE) on 2 cores
    python benchmarks/radreg_grid.py                     # the full runs (needs pretrain_grid.py's plain runs)
    python benchmarks/radreg_grid.py --objectives mae    # one objective only
    python benchmarks/radreg_grid.py --stage overhead    # only the step-time measurement (minutes)
    python benchmarks/radreg_grid.py --stage per-task    # tuning-task ablation: MAE 4 min (H200), CE 25 min (2 cores)
    python benchmarks/radreg_grid.py --render            # only rebuild docs/results.md and the plots
    python benchmarks/radreg_grid.py --smoke             # minutes: tuning, pretraining, fine-tuning with 3-step runs
    python benchmarks/radreg_grid.py --jobs 6            # 6 runs at once (a GPU machine with many cores)

Not run by CI. Cells are resumable like the other grids.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from _lib import cells, curves, images, runner, stats, tables, template
from _lib.images import PRETRAIN, SEEDS, SHORT, TASKS, TUNE_EPOCHS, TUNE_SEED, TUNE_SPLIT
from _lib.paths import IMG, ROOT

RESULTS = images.RADREG_RESULTS
RUNS = images.RADREG_RUNS
CANDIDATES = [{"weight": w, "head": h} for h in ("linear", "mlp") for w in (0.01, 0.1, 1.0)]
TUNE_FINETUNE = ("--set", "eval_every_epochs=10", "--epochs", "10", *TUNE_SPLIT)
TUNE_TASK = "cat-dog"  # the reported protocol's tuning task; ``--stage per-task`` tunes on each other task too
OWN = "+radreg-own"  # the per-task ablation's arm suffix: lambda and head tuned on the task's own tuning split
OBJECTIVES = ["mae", "context-encoder"]  # the seed paper's two pretraining schemes; plain runs: pretrain_grid.py


def _tag(objective: str) -> str:
    """Prefix of an objective's tuning runs and choice file (none for MAE, whose names came first)."""
    return "" if objective == "mae" else "ce-"


def choice_path(objective: str = "mae", task: str = TUNE_TASK, results: Path | None = None) -> Path:
    """The reported choice (tuned on cat-dog), or the ablation's choice tuned on another task's own tuning split."""
    results = RESULTS if results is None else results
    if task != TUNE_TASK:
        return results / f"choice-{objective}-{task}.json"
    return results / ("choice.json" if objective == "mae" else f"choice-{objective}.json")


def overhead_path(objective: str = "mae", results: Path | None = None) -> Path:
    results = RESULTS if results is None else results
    return results / ("overhead.json" if objective == "mae" else f"overhead-{objective}.json")


def short_run(args, need_encoder: bool = False, objective: str = "mae") -> Path:
    """The plain objective pretrained for TUNE_EPOCHS on the tuning split: the tuning reference."""
    return images.short_pretrain(objective, args, RESULTS, RUNS, need_encoder)


def radreg_pretrain(task: str, choice: dict, args, need_encoder: bool = False, objective: str = "mae") -> Path:
    """OBJECTIVE + RadReg at the full budget, the task's training pool as RadReg's unlabeled data."""
    return images.radreg_pretrain(task, choice, objective, args, RESULTS, RUNS, need_encoder)


def tune(args, objective: str = "mae", task: str = TUNE_TASK) -> dict:
    """lambda and the head class for OBJECTIVE + RadReg, chosen on ``task``'s tuning split (the reported protocol:
    cat-dog; another task: the per-task ablation, whose RadReg pool is that task's tuning pool)."""
    path = choice_path(objective, task)
    if path.exists():
        return cells.read_json(path)
    encoder = PRETRAIN[objective][0]
    images.downstream_pool(task, args.data, RUNS, tuning=True)  # written once, before runs start in parallel
    prefix = _tag(objective) + ("" if task == TUNE_TASK else f"{task}-")
    names = {f"{prefix}radreg-{c['head']}-{c['weight']}": c for c in CANDIDATES}
    # the reference (the plain objective under the same shortened protocol) and every candidate: pretrain, then
    # fine-tune
    runner.parallel([lambda: short_run(args, objective=objective)] + [
        lambda n=n, c=c: images.run_pretrain(n, objective, encoder,
                                             images.radreg_flags(c, task, objective, args, RUNS, tuning=True), args,
                                             RESULTS / "tune", RUNS / "tune") for n, c in names.items()], args.jobs)
    protocol = (*TUNE_FINETUNE, "--lr", images.chosen_lr(task, objective))  # the plain arm's tuned rate, if chosen

    def finetune(name: str) -> float:
        # the reference's encoder may be gone (runs/ is not committed) when a new task needs it: pretrained again
        remake = (lambda: short_run(args, True, objective)) if name == SHORT[objective] else None
        cell = images.run_finetune(task, name, TUNE_SEED, RUNS / "tune" / "pretrain" / name / "encoder", encoder,
                                   args, RESULTS / "tune", RUNS / "tune", protocol, make_init=remake)
        return cells.read_json(cell)["summary"]["final_dev"]["accuracy"]

    scores = runner.parallel([lambda n=n: finetune(n) for n in [SHORT[objective], *names]], args.jobs)
    reference = scores[0]
    rows = [{**c, "accuracy": a} for c, a in zip(names.values(), scores[1:])]
    best = max(rows, key=lambda r: r["accuracy"])
    choice = {"weight": best["weight"], "head": best["head"], "candidates": rows, "plain": reference,
              "objective": objective, "task": task,
              "protocol": f"{objective}+RadReg pretraining {TUNE_EPOCHS} epochs, {task} fine-tuning seed {TUNE_SEED}, "
                          f"{' '.join(protocol)}: the tuning split, not the reported one"}
    cells.write_json(path, choice)
    return choice


def per_task(objective: str, args) -> None:
    """The ablation of the tuning task: lambda and the head chosen on each other task's own tuning split. Where the
    choice differs from the reported (cat-dog) one, that task's RadReg arm again with it (arm OBJECTIVE+radreg-own),
    paired with the same plain arm; where it is the same, the reported arm is the ablation's too."""
    reported = tune(args, objective)
    encoder, arm = PRETRAIN[objective][0], objective + OWN
    for task in [t for t in args.tasks if t != TUNE_TASK]:
        choice = tune(args, objective, task)
        if (choice["weight"], choice["head"]) == (reported["weight"], reported["head"]):
            continue
        images.downstream_pool(task, args.data, RUNS)
        missing = [s for s in args.seeds if not (RESULTS / "finetune" / task / f"{arm}_seed{s}.json").exists()]
        images.run_pretrain(f"{arm}-{task}", objective, encoder,
                            images.radreg_flags(choice, task, objective, args, RUNS), args, RESULTS, RUNS,
                            need_encoder=bool(missing))
        init = RUNS / "pretrain" / f"{arm}-{task}" / "encoder"
        runner.parallel([lambda s=s: images.run_finetune(task, arm, s, init, encoder, args, RESULTS, RUNS,
                                                         extra=("--lr", images.chosen_lr(task, objective)))
                         for s in missing], args.jobs)


def overhead(args, steps: int = 12, objective: str = "mae") -> dict:
    """RadReg's extra pretraining step time at the tuned settings (:func:`images.step_time_ratio`)."""
    path = overhead_path(objective)
    chosen = choice_path(objective)
    choice = cells.read_json(chosen) if chosen.exists() else {"weight": 0.1, "head": "mlp"}
    choice = {"weight": choice["weight"], "head": choice["head"]}
    if path.exists() and cells.read_json(path).get("radreg") == choice:
        return cells.read_json(path)  # measured with the chosen settings already
    result = images.step_time_ratio(args.data, objective, choice, steps)
    cells.write_json(path, result)
    return result


def setting(cell: dict) -> tuple:
    """(device, mixed precision) of a cell's run: the two arms of a pair must share it (bf16 on a GPU and float32
    on a CPU do not train alike)."""
    return cell["summary"].get("device"), cell["summary"].get("mixed_precision")


def load(results: Path | None = None, plain_results: Path = images.PLAIN_RESULTS) -> dict:
    """Everything this script's part of the page reads: its fine-tuning and pretraining cells, pretrain_grid.py's
    fine-tuning cells (the plain arms), the tuning choices and the step-time measurements."""
    results = RESULTS if results is None else results
    return {"finetune": cells.read_cells(results / "finetune", "*/*.json"),
            "plain": cells.read_cells(plain_results / "finetune", "*/*.json"),
            "pretrain": {p.stem: cells.read_json(p) for p in sorted((results / "pretrain").glob("*.json"))},
            "choice": {(o, t): cells.read_json(choice_path(o, t, results)) for o in OBJECTIVES for t in TASKS
                       if choice_path(o, t, results).exists()},
            "overhead": {o: cells.read_json(overhead_path(o, results)) for o in OBJECTIVES
                         if overhead_path(o, results).exists()}}


def arm_cells(data: dict, source: str, arm: str, task: str) -> list[dict]:
    """The cells of ``arm`` on ``task`` in ``data[source]`` ("finetune": this script's, "plain": pretrain_grid.py's)."""
    return [c for c in data[source] if c["task"] == task and c["arm"] == arm]


def plain_sources(data: dict, objective: str, task: str) -> list[list[dict]]:
    """The plain arm's fine-tuning cells on ``task``: this script's own (same-setting reruns), pretrain_grid.py's."""
    return [arm_cells(data, "finetune", objective, task), arm_cells(data, "plain", objective, task)]


def plain_cells(data: dict, objective: str, task: str, like: set | None = None) -> tuple[list[dict], bool]:
    """The plain arm RadReg is paired with on ``task``, and whether it is this script's own: its own cells when it
    ran them (because pretrain_grid.py's ran under another setting than the RadReg arm), else pretrain_grid.py's.
    ``like``: the settings of the arm to pair with; the first of the two whose cells ran under them wins."""
    sources = plain_sources(data, objective, task)
    match = next((i for i, cs in enumerate(sources) if cs and {setting(c) for c in cs} == like), None)
    if like is not None and match is not None:
        return sources[match], match == 0
    return sources[0] or sources[1], bool(sources[0])


def _accuracy(cell: dict) -> float:
    return cell["summary"]["final_dev"]["accuracy"]


def _pair(arm_cells: list[dict], plain: list[dict]) -> str:
    """Arm - plain in final accuracy over the seeds both have, as ``+1.5 ± 0.5 (n=5)``."""
    return stats.fmt_paired(stats.paired({c["seed"]: _accuracy(c) for c in arm_cells},
                                         {c["seed"]: _accuracy(c) for c in plain}), with_n=True)


def _candidates(choice: dict, task: str) -> str:
    """A tuning choice's candidates and their accuracy on ``task``'s tuning split, as a table."""
    return "\n".join([*tables.header(["head", "lambda", f"{task} accuracy"]),
                      *[tables.row([r["head"], str(r["weight"]), f"{100 * r['accuracy']:.1f}"])
                        for r in choice["candidates"]]])


def render_choice(data: dict, objective: str) -> str:
    """The reported choice of lambda and head for OBJECTIVE + RadReg, with every candidate's score."""
    c = data["choice"][(objective, TUNE_TASK)]
    return (f"Choice on the validation split ({c['protocol']}): lambda {c['weight']}, {c['head']} heads "
            f"(plain {objective} under the same protocol: {100 * c['plain']:.1f}).\n\n" + _candidates(c, TUNE_TASK))


def render_pair(data: dict, objective: str, task: str) -> str:
    """The pair (plain, plain + RadReg) on ``task``: accuracies, paired difference, convergence, plot, sources."""
    arm = f"{objective}+radreg"
    rc = {c["seed"]: c for c in arm_cells(data, "finetune", arm, task)}
    plain, own = plain_cells(data, objective, task)
    pc = {c["seed"]: c for c in plain}
    lines = [*tables.header(["arm", "accuracy", "seeds"]),
             tables.row([objective, stats.fmt([_accuracy(c) for c in pc.values()]), str(len(pc))]),
             tables.row([arm, stats.fmt([_accuracy(c) for c in rc.values()]), str(len(rc))]), "",
             f"Paired difference ({arm} - {objective}, same seeds): {_pair(list(rc.values()), list(pc.values()))}", ""]
    lines += convergence(list(pc.values()), list(rc.values()), objective)
    name, both = _plot_arms(task, objective)
    if curves.plotted([*rc.values(), *pc.values()], both):
        lines += [f"![{task}: fine-tuning curves, {objective} with and without RadReg](img/{curves.image_name(name)})",
                  ""]
    settings = {setting(c) for c in [*rc.values(), *pc.values()]}
    if len(settings) > 1:
        lines += [f"- **the two arms ran under different settings** ({', '.join(map(str, sorted(settings)))}): "
                  "rerun this script on one machine kind to pair them", ""]
    for pre in filter(None, [data["pretrain"].get(f"{arm}-{task}"), own and data["pretrain"].get(objective)]):
        lines += [f"- pretraining: `{pre['command']}` ({pre['date']}; {pre.get('machine', '-')}; validation loss "
                  f"{pre['summary']['final_dev']['loss']:.4f})"]
    source = ("run by this script under the RadReg arm's setting (pretrain_grid.py's ran under another)" if own
              else "pretrain_grid.py's cells")
    first = next(iter(rc.values()))
    lines += [f"- plain arm: {source}", f"- one cell: `{first['command']}`", f"- machine: {first.get('machine', '-')}"]
    return "\n".join(lines)


def render_own(data: dict, objective: str, task: str) -> str:
    """The tuning-task ablation on ``task``: its choice on the task's own tuning split and, where that differs from
    the reported choice, its arm against the same plain arm."""
    c, reported = data["choice"][(objective, task)], data["choice"][(objective, TUNE_TASK)]
    lines = [f"Ablation, lambda and head tuned on {task}'s own tuning split (`--stage per-task`; {c['protocol']}): "
             f"lambda {c['weight']}, {c['head']} heads (plain {objective} under the same protocol: "
             f"{100 * c['plain']:.1f}).", "", _candidates(c, task)]
    if (c["weight"], c["head"]) == (reported["weight"], reported["head"]):
        return "\n".join([*lines, "", f"The same choice as on {TUNE_TASK}: the pair above is this ablation's too."])
    arm = objective + OWN
    own = arm_cells(data, "finetune", arm, task)
    if not own:
        return "\n".join(lines)
    plain = plain_cells(data, objective, task, like={setting(x) for x in own})[0]  # under the ablation's setting
    pre = data["pretrain"].get(f"{arm}-{task}")
    return "\n".join([
        *lines, "", *tables.header(["arm", "accuracy", "seeds", f"paired difference to {objective}"]),
        tables.row([arm, stats.fmt([_accuracy(x) for x in own]), str(len(own)), _pair(own, plain)]), "",
        *([f"- pretraining: `{pre['command']}`"] if pre else []),
        f"- machine: {own[0].get('machine', '-')}",
        *(["- **the two arms ran under different settings**: rerun on one machine kind to pair them"]
          if {setting(x) for x in own} != {setting(x) for x in plain} else [])])


def render_overhead(data: dict, objective: str) -> str:
    """RadReg's pretraining step-time overhead, one sentence."""
    o = data["overhead"][objective]
    name = {"mae": "MAE", "context-encoder": "context encoder"}[objective]
    return (f"Pretraining step time ({name} {PRETRAIN[objective][0]}, batch 256, {o['steps']} alternating steps, "
            f"{o['threads']} threads): {o['seconds_per_step'][objective]:.2f} s without RadReg, "
            f"{o['seconds_per_step'][objective + '+radreg']:.2f} s with it ({100 * (o['ratio'] - 1):+.0f}%).")


def convergence(plain: list[dict], radreg: list[dict], objective: str = "mae") -> list[str]:
    """Mean held-out accuracy of both arms at each evaluation, and the first one where each arm reaches the plain
    arm's final mean accuracy (the paper's faster-convergence claim, at our evaluation grain)."""
    arms = {objective: curves.mean_curve(plain), f"{objective}+radreg": curves.mean_curve(radreg)}
    epochs = sorted(set.intersection(*(set(c) for c in arms.values())))
    if not epochs:
        return []
    target = arms[objective][epochs[-1]]
    reach = {a: next((f"{ep:g}" for ep in epochs if c[ep] >= target), "never") for a, c in arms.items()}
    return [*tables.header(["fine-tuning epoch", *[f"{ep:g}" for ep in epochs], f"reaches plain {objective}'s final"]),
            *[tables.row([a, *[f"{c[ep]:.1f}" for ep in epochs], reach[a]]) for a, c in arms.items()],
            "", "Mean held-out accuracy (x100) over the seeds at each evaluation.", ""]


def _plot_arms(task: str, objective: str) -> tuple[str, dict]:
    """A pair's plot: its name (MAE's plots came first, without the objective) and its two arms."""
    both = (objective, PRETRAIN[objective][0])
    name = f"radreg_{task}" if objective == "mae" else f"radreg_{objective}_{task}"
    return name, {objective: both, f"{objective}+radreg": both}


def sections(data: dict) -> dict[str, str]:
    """This script's blocks of docs/results.md by template key (``radreg/...``), for those that have results."""
    out = {}
    for objective in OBJECTIVES:
        if (objective, TUNE_TASK) in data["choice"]:
            out[f"radreg/{objective}/choice"] = render_choice(data, objective)
        for task in TASKS:
            if arm_cells(data, "finetune", f"{objective}+radreg", task):
                out[f"radreg/{objective}/{task}"] = render_pair(data, objective, task)
            if task != TUNE_TASK and (objective, task) in data["choice"]:
                out[f"radreg/{objective}/{task}/own"] = render_own(data, objective, task)
    for objective in data["overhead"]:
        out[f"radreg/{objective}/overhead"] = render_overhead(data, objective)
    return out


def plots(data: dict, folder: Path = IMG) -> list[Path]:
    """Each pair's fine-tuning curves, both arms in one plot (:func:`curves.plot`), written to ``folder``."""
    drawn = []
    for objective in OBJECTIVES:
        for task in TASKS:
            rc = arm_cells(data, "finetune", f"{objective}+radreg", task)
            if rc:
                name, arms = _plot_arms(task, objective)
                drawn.append(curves.plot(name, rc + plain_cells(data, objective, task)[0], arms, folder))
    return [p for p in drawn if p]


def run_objective(objective: str, args) -> None:
    """The tuning, pretraining and fine-tuning stages for one objective (as --stage asks)."""
    if args.stage not in ("all", "tune", "pretrain", "finetune"):
        return
    choice = tune(args, objective)
    if args.stage == "tune":
        return
    encoder, arm = PRETRAIN[objective][0], f"{objective}+radreg"
    missing = [(seed, task) for seed in args.seeds for task in args.tasks
               if not (RESULTS / "finetune" / task / f"{arm}_seed{seed}.json").exists()]
    for task in args.tasks:
        images.downstream_pool(task, args.data, RUNS)  # written once, before runs start in parallel
    # an encoder lost with runs/ is pretrained again here when cells still need it (not by each cell)
    runner.parallel([lambda t=t: radreg_pretrain(t, choice, args, args.stage != "pretrain"
                                                 and any(t == m[1] for m in missing), objective)
                     for t in args.tasks], args.jobs)

    def cell(seed: int, task: str) -> None:
        init = RUNS / "pretrain" / f"{arm}-{task}" / "encoder"
        # the plain arm's tuned learning rate: the pair differs only in the pretraining
        images.run_finetune(task, arm, seed, init, encoder, args, RESULTS, RUNS,
                            extra=("--lr", images.chosen_lr(task, objective)))
        if args.jobs == 1 and not args.smoke:
            runner.render_results()

    if args.stage != "pretrain":
        runner.parallel([lambda m=m: cell(*m) for m in missing], args.jobs)
        same_setting_plain(objective, args)


def same_setting_plain(objective: str, args) -> None:
    """Where pretrain_grid.py's plain cells ran under another (device, precision) than the RadReg arm's, the plain
    arm again here, with pretrain_grid.py's flags and fine-tuning rate, so that the pair differs only in RadReg."""
    encoder = PRETRAIN[objective][0]
    data = load()
    for task in args.tasks:
        radreg = arm_cells(data, "finetune", f"{objective}+radreg", task)
        theirs = plain_sources(data, objective, task)[1]
        if not radreg or not theirs or {setting(c) for c in radreg} == {setting(c) for c in theirs}:
            continue
        init = RUNS / "pretrain" / objective / "encoder"
        todo = [s for s in args.seeds if not (RESULTS / "finetune" / task / f"{objective}_seed{s}.json").exists()]
        images.plain_pretrain(objective, args, RESULTS, RUNS, need_encoder=bool(todo))
        for seed in todo:
            images.run_finetune(task, objective, seed, init, encoder, args, RESULTS, RUNS,
                                extra=("--lr", images.chosen_lr(task, objective)))
            if args.jobs == 1 and not args.smoke:
                runner.render_results()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.environ.get("GENTUNE_IMAGES", images.DEFAULT_DATA),
                   help="the same images as pretrain_grid.py's runs (relative paths: to the repository root)")
    p.add_argument("--stage", choices=["all", "tune", "pretrain", "finetune", "overhead", "per-task"],
                   default="all", help="per-task: the tuning-task ablation (lambda and head tuned on each task's "
                   "own tuning split; not part of all)")
    p.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    p.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    p.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=OBJECTIVES,
                   help="pretraining objectives to pair with RadReg (default: both)")
    p.add_argument("--render", action="store_true", help="only rebuild docs/results.md and the plots")
    p.add_argument("--smoke", action="store_true",
                   help="every stage but the step-time one in minutes (3-step runs) into runs/radreg_smoke, "
                        "to check the pipeline")
    images.add_jobs_flag(p)
    args = p.parse_args()
    args.pretrain_extra, args.finetune_extra = [], []
    plots_folder = IMG
    if args.smoke:
        global RESULTS, RUNS
        RUNS = ROOT / "runs" / "radreg_smoke"
        RESULTS, plots_folder = RUNS / "results", RUNS / "img"
        args.pretrain_extra = ["--max-steps", "3", "--batch-size", "32"]
        args.finetune_extra = ["--max-steps", "3"]
        if args.stage == "all":
            args.stage = "finetune"  # the step-time measurement is not a smoke check
    # read here (downstream pool, overhead) and by the subprocesses (cwd ROOT): one absolute path for both
    args.data = str((ROOT / args.data).resolve()) if not Path(args.data).is_absolute() else args.data
    if not args.render:
        for objective in args.objectives:
            run_objective(objective, args)
            if args.stage == "per-task":
                per_task(objective, args)
        if args.stage in ("all", "overhead"):
            for objective in args.objectives:
                overhead(args, objective=objective)
    if args.smoke:  # scratch cells, not results: shown here, not on the results page
        print(template.smoke_report(load(), sections, plots, plots_folder), end="")
    else:
        runner.render_results()
    return 0


if __name__ == "__main__":
    sys.exit(main())
