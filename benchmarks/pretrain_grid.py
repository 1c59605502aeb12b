"""Does unsupervised pretraining help? MAE and context-encoder pretraining on CIFAR-10, then fine-tuning with few
labels against the same backbone trained from scratch.

Protocol (issue 4): 5,000 of the 50,000 CIFAR-10 training images are held out (split seed 0) for validation;
each objective pretrains on the other 45,000, labels ignored, with a budget of about 30 minutes of 2 CPU cores.
Then every arm fine-tunes, with seeds 13, 21, 42, 87, 100, on

- ``cat-dog``: cat vs dog, 500 labels per class;
- ``cifar10``: all 10 classes, 100 labels per class;

and is scored on the held-out images of those classes. Arms: ``mae`` (vit-tiny-p4 initialised from MAE),
``scratch-vit`` (vit-tiny-p4, random init), ``context-encoder`` (conv-small from the context encoder),
``scratch-conv`` (conv-small, random init). Every arm uses the same fine-tuning recipe except its learning
rate, which ``--stage tune`` chooses per arm and task from TUNE_LRS on a tuning split that never touches the
reported held-out images (``exclude_split_seed=0, split_seed=1``; seed 7, not a reported seed): a pretrained
encoder and a random one need not want the same rate, and one shared untuned rate could favour either. The
pretrained encoders saw the tuning split's images unlabeled (they hold out only the reported split): that
touches both candidates of an arm alike. The protocol's constants and cell runners are in benchmarks/_lib/images.py
(radreg_grid.py and diagnostics_study.py share them).

Each pretraining run and each fine-tuning cell writes its own JSON under benchmarks/results/pretrain/; finished
ones are skipped and interrupted ones resume, so the grid can span sessions. benchmarks/render_results.py puts
them in docs/results.md (this script's part: `sections()`) with one plot of the fine-tuning curves per task
(`plots()`); it runs after every cell and at the end.

    python benchmarks/pretrain_grid.py                          # everything (hours on 2 CPU cores)
    python benchmarks/pretrain_grid.py --stage pretrain         # only the two pretraining runs
    python benchmarks/pretrain_grid.py --stage tune             # pretraining, then the learning-rate choice
    python benchmarks/pretrain_grid.py --tasks cat-dog --seeds 13 21
    python benchmarks/pretrain_grid.py --stage throughput       # MAE images/s on this machine (minutes)
    python benchmarks/pretrain_grid.py --render                 # only rebuild docs/results.md and the plots
    python benchmarks/pretrain_grid.py --smoke                  # minutes: tiny budgets, to check the pipeline
    python benchmarks/pretrain_grid.py --jobs 6                 # 6 runs at once (a GPU machine with many cores)

Not run by CI. The data path comes from --data, else $GENTUNE_IMAGES, else ../shared/data/cifar10.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
from pathlib import Path

from _lib import cells, curves, images, runner, stats, tables, template
from _lib.images import DEFAULT_DATA, FINETUNE, PRETRAIN, SEEDS, TASKS, TUNE_LRS, TUNE_SEED, TUNE_SPLIT
from _lib.paths import IMG, ROOT

RESULTS = images.PLAIN_RESULTS
RUNS = images.PLAIN_RUNS
ARMS = {"mae": ("mae", "vit-tiny-p4"), "scratch-vit": (None, "vit-tiny-p4"),
        "context-encoder": ("context-encoder", "conv-small"), "scratch-conv": (None, "conv-small")}
THROUGHPUT_STEPS = 60  # --stage throughput: long enough for a steady step time (about 3 minutes on 2 CPU cores)


def _lr(command: str) -> str:
    """The learning rate a recorded command ran with (its last --lr)."""
    words = shlex.split(command)
    return [words[i + 1] for i, w in enumerate(words) if w == "--lr"][-1]


def pretrain_cell(objective: str, args, need_encoder: bool = False) -> Path:
    return images.plain_pretrain(objective, args, RESULTS, RUNS, need_encoder)


def _init(arm: str) -> Path | None:
    objective = ARMS[arm][0]
    return RUNS / "pretrain" / objective / "encoder" if objective else None


def tune_lr(args) -> dict:
    """{task: {arm: lr}}: each arm's fine-tuning learning rate, the best final accuracy on the tuning split (one
    cell per candidate, seed TUNE_SEED), written to results/pretrain/tune/choice.json."""
    path = RESULTS / "tune" / "choice.json"
    choice = cells.read_json(path) if path.exists() else {}
    todo = [(task, arm) for task in args.tasks for arm in args.arms if arm not in choice.get(task, {})]

    def cell(task: str, arm: str, lr: str) -> Path:
        objective, encoder = ARMS[arm]
        return images.run_finetune(task, f"{arm}-lr{lr}", TUNE_SEED, _init(arm), encoder, args, RESULTS / "tune",
                                   RUNS / "tune", extra=(*TUNE_SPLIT, "--lr", lr),
                                   make_init=lambda: pretrain_cell(objective, args, need_encoder=True))

    missing = [(t, a, lr) for t, a in todo for lr in TUNE_LRS
               if not (RESULTS / "tune" / "finetune" / t / f"{a}-lr{lr}_seed{TUNE_SEED}.json").exists()]
    ensure_encoders({a for _, a, _ in missing}, args)  # only for cells still to run
    runner.parallel([lambda t=t, a=a, lr=lr: cell(t, a, lr) for t, a, lr in missing], args.jobs)
    for task, arm in todo:  # the cells exist now: read them, in a fixed order
        scores = {lr: cells.read_json(cell(task, arm, lr))["summary"]["final_dev"]["accuracy"] for lr in TUNE_LRS}
        best = max(TUNE_LRS, key=lambda lr: (scores[lr], -TUNE_LRS.index(lr)))
        choice.setdefault(task, {})[arm] = {"lr": best, "scores": scores}
        cells.write_json(path, choice)
    return choice


def ensure_encoders(arms, args) -> None:
    """Pretrain again the encoders of ``arms`` whose runs are gone, before cells that need them run in parallel
    (each cell's own make_init would race)."""
    objectives = sorted({ARMS[a][0] for a in arms if ARMS[a][0]})
    runner.parallel([lambda o=o: pretrain_cell(o, args, need_encoder=True) for o in objectives], args.jobs)


def finetune_cell(task: str, arm: str, seed: int, args) -> Path:
    objective, encoder = ARMS[arm]
    return images.run_finetune(task, arm, seed, _init(arm), encoder, args, RESULTS, RUNS,
                               extra=("--lr", images.chosen_lr(task, arm, RESULTS)),
                               make_init=lambda: pretrain_cell(objective, args, need_encoder=True))


def throughput_cell(args) -> Path:
    """MAE pretraining throughput on this machine: THROUGHPUT_STEPS steps of the grid's MAE run (same model, batch
    and data), so the images/s, the FLOP-based ceiling and the loop overhead are stated for the machine at hand
    even when the grid's runs were made elsewhere. One cell per device kind (cpu, cuda)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    encoder, flags = PRETRAIN["mae"]
    return images.run_pretrain(f"mae-throughput-{device}", "mae", encoder,
                               [*flags, "--max-steps", str(THROUGHPUT_STEPS)], args, RESULTS / "throughput",
                               RUNS / "throughput")


def _ceiling(cell: dict) -> str:
    """The matmul column: cells written before the rate was measured on the run's device hold the CPU's rate even
    when the runs used a GPU; shown marked, since it is not that run's ceiling."""
    rate = f"{cell['matmul_gflops']:.0f}"
    if cell.get("matmul_device") is None and cell.get("machine", "").startswith("NVIDIA"):
        return rate + " (host CPU)"
    return rate


def render_pretraining(pre: dict[str, dict]) -> str:
    """The pretraining runs' table: budget, throughput against the device's ceiling, loop overhead, loss."""
    lines = tables.header(["pretraining", "encoder", "steps", "epochs", "images/s", "forward GFLOP/image",
                           "achieved GFLOP/s", "matmul GFLOP/s", "loop overhead", "validation loss", "minutes"])
    for name, c in pre.items():
        s = c["summary"]
        flops, ips, overhead = s.get("forward_flops_per_image"), s["examples_per_second"], s.get("loop_overhead")
        lines.append(tables.row([
            name, c["encoder"], str(s["train_steps"]), f"{s['epochs']:.1f}", f"{ips:.0f}",
            f"{flops / 1e9:.3f}" if flops else "-", f"{3 * flops * ips / 1e9:.0f}" if flops else "-",
            _ceiling(c), f"{100 * overhead:.1f}%" if overhead is not None else "-",
            f"{s['final_dev']['loss']:.4f}", f"{s['train_seconds'] / 60:.1f}"]))
    return "\n".join(lines)


def _paired(cells: list[dict], arm: str) -> str:
    """The pretrained arm against the scratch arm of its encoder ("-" for the scratch arms)."""
    objective, encoder = ARMS[arm]
    scratch = next((a for a, (o, e) in ARMS.items() if o is None and e == encoder), None)
    if not (objective and scratch):
        return "-"
    acc = {a: {c["seed"]: c["summary"]["final_dev"]["accuracy"] for c in cells if c["arm"] == a}
           for a in (arm, scratch)}
    return stats.fmt_paired(stats.paired(acc[arm], acc[scratch]), with_n=True)


def render_task(task: str, cells: list[dict]) -> str:
    """A task's table (accuracy per arm, the pretrained - scratch pair) and its curves' plot (:func:`plots`)."""
    lines = tables.header(["arm", "init", "lr", "accuracy (final epoch)", "pretrained - scratch (paired)",
                           "best of the evaluations (optimistic)", "seeds", "train min/run"])
    for arm, (objective, encoder) in ARMS.items():
        ac = [c for c in cells if c["arm"] == arm]
        if not ac:
            continue
        mins = statistics.fmean(c["summary"]["train_seconds"] for c in ac) / 60
        lines.append(tables.row([
            arm, f"{objective or 'random'} ({encoder})", ", ".join(sorted({_lr(c["command"]) for c in ac})),
            stats.fmt([c["summary"]["final_dev"]["accuracy"] for c in ac]), _paired(cells, arm),
            stats.fmt([c["summary"]["best_dev"]["accuracy"] for c in ac]), str(len(ac)), f"{mins:.1f}"]))
    if curves.plotted(cells, ARMS):
        lines += ["", f"![{task} fine-tuning curves](img/{curves.image_name(task)})"]
    return "\n".join(lines)


def render_task_about(task: str, cells: list[dict], tuned: dict) -> str:
    """Under a task's table: the learning rates chosen, a warning when seeds used different encoder files, one
    cell's command, dates and machine.

    Args:
        task: the task.
        cells: its fine-tuning cells.
        tuned: arm -> its entry of results/pretrain/tune/choice.json for this task.
    """
    lines = []
    if tuned:
        lines.append(f"- Learning rates chosen on the tuning split (seed {TUNE_SEED}, final accuracy per candidate): "
                     + "; ".join(f"{arm} " + ", ".join(f"{lr}: {100 * a:.1f}" for lr, a in t["scores"].items())
                                 for arm, t in tuned.items()) + ".")
    mixed = [arm for arm in ARMS if len({c.get("init_sha256") for c in cells if c["arm"] == arm}) > 1]
    if mixed:
        lines.append(f"- Warning: the seeds of {', '.join(mixed)} were fine-tuned from different encoder files "
                     "(pretrained again after runs/ was lost).")
    return "\n".join([*lines, "", f"- one cell: `{cells[0]['command']}`",
                      f"- dates: {', '.join(sorted({c['date'] for c in cells}))}; "
                      f"machine: {cells[0].get('machine', '-')}"])


def load(results: Path = RESULTS) -> dict:
    """The pretraining cells (the grid's, then the throughput runs'), the fine-tuning cells, the rate choice."""
    pre = {p.stem: cells.read_json(p) for p in sorted((results / "pretrain").glob("*.json"))}
    pre |= {p.stem: cells.read_json(p) for p in sorted((results / "throughput" / "pretrain").glob("*.json"))}
    choice = results / "tune" / "choice.json"
    return {"pretrain": pre, "finetune": cells.read_cells(results / "finetune", "*/*.json"),
            "choice": cells.read_json(choice) if choice.exists() else {}}


def sections(data: dict) -> dict[str, str]:
    """This script's blocks of docs/results.md by template key (``pretrain/...``), for those that have cells."""
    out = {"pretrain/recipe": " ".join(FINETUNE[:4]), "pretrain/throughput-steps": str(THROUGHPUT_STEPS)}
    if data["pretrain"]:
        out["pretrain/pretraining"] = render_pretraining(data["pretrain"])
        out["pretrain/pretraining-commands"] = "\n".join(f"- {name}: `{c['command']}` ({c['date']}; "
                                                         f"{c.get('machine', '-')})"
                                                         for name, c in data["pretrain"].items())
    for task in TASKS:
        tc = [c for c in data["finetune"] if c["task"] == task]
        if tc:
            out[f"pretrain/{task}"] = render_task(task, tc)
            out[f"pretrain/{task}/about"] = render_task_about(task, tc, data["choice"].get(task, {}))
    return out


def plots(data: dict, folder: Path = IMG) -> list[Path]:
    """The fine-tuning curves of each task (:func:`curves.plot`), written to ``folder``."""
    drawn = [curves.plot(task, [c for c in data["finetune"] if c["task"] == task], ARMS, folder) for task in TASKS]
    return [p for p in drawn if p]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.environ.get("GENTUNE_IMAGES", DEFAULT_DATA))
    p.add_argument("--stage", choices=["all", "pretrain", "tune", "finetune", "throughput"], default="all",
                   help="throughput: only a short MAE run measuring this machine's images/s (not part of 'all')")
    p.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    p.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    p.add_argument("--render", action="store_true", help="only rebuild docs/results.md and the plots")
    p.add_argument("--smoke", action="store_true", help="tiny budgets into runs/pretrain_smoke (no results)")
    images.add_jobs_flag(p)
    args = p.parse_args()
    args.pretrain_extra, args.finetune_extra = [], []
    plots_folder = IMG
    if args.smoke:  # the whole pipeline in minutes; results go to a scratch folder
        global RESULTS, RUNS
        RUNS = ROOT / "runs" / "pretrain_smoke"
        RESULTS, plots_folder = RUNS / "results", RUNS / "img"
        args.pretrain_extra = ["--max-steps", "3", "--batch-size", "32"]
        args.finetune_extra = ["--max-steps", "3", "--set", "eval_every_epochs=0"]
    if not args.render:
        if args.stage == "throughput":
            throughput_cell(args)
        if args.stage in ("all", "pretrain", "tune"):
            runner.parallel([lambda o=o: pretrain_cell(o, args) for o in PRETRAIN
                             if any(ARMS[a][0] == o for a in args.arms)], args.jobs)
        if args.stage in ("all", "tune"):
            tune_lr(args)
        if args.stage in ("all", "finetune"):
            missing = [(seed, task, arm) for seed in args.seeds for task in args.tasks for arm in args.arms
                       if not (RESULTS / "finetune" / task / f"{arm}_seed{seed}.json").exists()]
            ensure_encoders({arm for _, _, arm in missing}, args)

            def cell(seed: int, task: str, arm: str) -> None:
                finetune_cell(task, arm, seed, args)
                if args.jobs == 1 and not args.smoke:
                    runner.render_results()

            # seeds outer: an interrupted grid still covers every arm with some seeds
            runner.parallel([lambda c=c: cell(*c) for c in missing], args.jobs)
    if args.smoke:  # scratch cells, not results: shown here, not on the results page
        print(template.smoke_report(load(RESULTS), sections, plots, plots_folder), end="")
    else:
        runner.render_results()
    return 0


if __name__ == "__main__":
    sys.exit(main())
