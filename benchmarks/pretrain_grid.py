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
touches both candidates of an arm alike.

Each pretraining run and each fine-tuning cell writes its own JSON under benchmarks/results/pretrain/; finished
ones are skipped and interrupted ones resume, so the grid can span sessions. Results go to docs/results.md
(through benchmarks/finetune_grid.py's renderer) with one plot of the fine-tuning curves per task.

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
import datetime as dt
import hashlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import machine  # noqa: E402  (benchmarks/ is the script's folder)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "pretrain"
RUNS = ROOT / "runs" / "pretrain_grid"
PLOTS = ROOT / "docs" / "img"
DEFAULT_DATA = "../shared/data/cifar10/cifar10_train_jpg.tar.gz"  # relative to the repository root
SEEDS = [13, 21, 42, 87, 100]
TASKS = {"cat-dog": ["--classes", "cat,dog", "--labels-per-class", "500"],
         "cifar10": ["--labels-per-class", "100"]}
# objective -> (encoder, pretraining flags); the budgets fit about 30 minutes of 2 cores each (see the README)
PRETRAIN = {"mae": ("vit-tiny-p4", ["--epochs", "8"]),
            # random regions, not the central square: Pathak et al. found them the better features for classification
            "context-encoder": ("conv-small", ["--epochs", "30", "--lr", "1e-3", "--set", "context-encoder.mask=regions"])}
ARMS = {"mae": ("mae", "vit-tiny-p4"), "scratch-vit": (None, "vit-tiny-p4"),
        "context-encoder": ("context-encoder", "conv-small"), "scratch-conv": (None, "conv-small")}
# what the numbers say, written after reading them (rendered under the tables)
NOTES = {
    "pretraining": [
        "- On the H200 both pretrainings ran at the same time (`--jobs`), sharing the GPU: each one's images/s is "
        "below", "  what it gets alone (MAE alone, in an earlier one-seed preview on the same card: 14,818 "
        "images/s).",
        "- Throughput target: on the 2-core CPU, MAE pretraining runs at 327 images/s, 147 GFLOP/s against a "
        "measured matmul", "  ceiling of 211 (70%), with 0.3% loop overhead; on the H200 the loop overhead is "
        "6.7% (MAE) and 8.4% (context", "  encoder). The 10% bound holds on both. The H200 rows' ceiling column "
        "is the host CPU's (measured before the", "  rate was taken on the run's device), so it bounds nothing "
        "there.", ""],
    "cat-dog": [
        "- MAE beats the same ViT from scratch by +4.4 ± 1.2 points (5 of 5 seeds, from +2.3 to +7.5): the "
        "direction of", "  the paper, 0.6 short of the issue's 5-point target. The context encoder does not "
        "help the conv net on this", "  binary task (-0.1 ± 0.5): the conv net from scratch is already as good "
        "as MAE's ViT (67.9 against 68.6).",
        "- MAE's curve is above scratch at every evaluation (62.7 against 54.4 after 5 epochs).", ""],
    "cifar10": [
        "- MAE beats scratch by +5.1 ± 0.3 (every seed between +4.1 and +6.0), meeting the 5-point target; the "
        "context", "  encoder beats its scratch conv net by +2.7 ± 0.3. With 10 classes and 100 labels each, "
        "the pretrained", "  features matter more than on the binary task.", ""],
}
THROUGHPUT_STEPS = 60  # --stage throughput: long enough for a steady step time (about 3 minutes on 2 CPU cores)
TUNE_LRS = ["1e-3", "3e-4"]  # the first is the default (and wins ties)
TUNE_SEED = 7
TUNE_SPLIT = ("--set", "split_seed=1", "--set", "exclude_split_seed=0")
JOBS = 1  # --jobs: runs at once; above 1, each run's output goes to a log file beside its run folder
FINETUNE = ["--epochs", "30", "--batch-size", "64", "--lr", TUNE_LRS[0], "--set", "weight_decay=0.05",
            "--set", "warmup_ratio=0.1", "--set", "eval_every_epochs=5", "--set", "eval_batch_size=500",
            "--set", "save_model=false"]


def _lr(command: str) -> str:
    """The learning rate a recorded command ran with (its last --lr)."""
    words = shlex.split(command)
    return [words[i + 1] for i, w in enumerate(words) if w == "--lr"][-1]


def _run(cmd: list[str]) -> None:
    print(f"[run ] {shlex.join(cmd)}", flush=True)
    if JOBS == 1:
        subprocess.run([sys.executable, "-m", "gentune", *cmd], cwd=ROOT, check=True)
        return
    log = ROOT / (cmd[cmd.index("--out") + 1] + ".log")  # beside the run folder: gentune wants that one clean
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        done = subprocess.run([sys.executable, "-m", "gentune", *cmd], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    lines = log.read_text(errors="replace").splitlines()
    if done.returncode:
        print("\n".join(["[fail] " + shlex.join(cmd), *lines[-15:]]), flush=True)
        raise subprocess.CalledProcessError(done.returncode, cmd)
    print(f"[done] {lines[-1] if lines else shlex.join(cmd)}", flush=True)


def _parallel(calls: list) -> list:
    """Call each zero-argument function, JOBS at a time (threads: each waits on its own gentune process). Every
    call runs to its end before the first error is raised, so one failed cell does not lose the others."""
    if JOBS == 1:
        return [c() for c in calls]
    with ThreadPoolExecutor(JOBS) as pool:
        futures = [pool.submit(c) for c in calls]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]
    return [f.result() for f in futures]


def _write(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # parallel writers: own files
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)


def _evals(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("type") == "eval"]


def run_pretrain(name: str, objective: str, encoder: str, flags: list[str], args, results: Path, runs: Path,
                 need_encoder: bool = False) -> Path:
    """One pretraining run as a cell: results/pretrain/NAME.json, the run in runs/pretrain/NAME (resumable).

    ``need_encoder``: a finished cell whose encoder is gone (runs/ is not committed, a later session may lack it)
    is pretrained again with the same command and seed, for the fine-tuning cells that still need it.
    """
    cell = results / "pretrain" / f"{name}.json"
    out = runs / "pretrain" / name
    if cell.exists() and not (need_encoder and not (out / "encoder").is_dir()):
        print(f"[skip] pretrain {name}")
        return cell
    if cell.exists():
        print(f"[redo] pretrain {name}: its encoder is not in {out.relative_to(ROOT)} any more", flush=True)
        shutil.rmtree(out, ignore_errors=True)  # else gentune would return the finished run's summary
    cmd = ["pretrain", "--objective", objective, "--model", encoder, "--data", args.data,
           "--out", str(out.relative_to(ROOT)), *flags, *args.pretrain_extra]
    t0 = time.time()
    _run(cmd)
    summary = json.loads((out / "summary.json").read_text())
    _write(cell, {"objective": objective, "encoder": encoder, "command": "gentune " + shlex.join(cmd),
                  "date": dt.date.today().isoformat(), "machine": machine(), "wall_seconds": time.time() - t0,
                  "summary": summary, **dict(zip(("matmul_gflops", "matmul_device"), matmul_gflops())),
                  "evals": _evals(out)})
    return cell


def run_finetune(task: str, arm: str, seed: int, init: Path | None, encoder: str, args, results: Path,
                 runs: Path, extra: tuple[str, ...] = (), make_init=None) -> Path:
    """One fine-tuning cell: results/finetune/TASK/ARM_seedS.json (``init`` None: from scratch; ``make_init()``
    pretrains it again when it is missing)."""
    cell = results / "finetune" / task / f"{arm}_seed{seed}.json"
    if cell.exists():
        print(f"[skip] {task} {arm} seed {seed}")
        return cell
    if init is not None and not init.exists() and make_init is not None:
        make_init()
    start = ["--init", str(init.relative_to(ROOT))] if init else ["--init", "none", "--model", encoder]
    out = runs / "finetune" / task / arm / f"seed{seed}"
    cmd = ["finetune", "--task", "image-classification", "--data", args.data, *start, *TASKS[task],
           "--out", str(out.relative_to(ROOT)), "--seed", str(seed), *FINETUNE, *extra, *args.finetune_extra]
    t0 = time.time()
    _run(cmd)
    summary = json.loads((out / "summary.json").read_text())
    weights = init / "model.safetensors" if init is not None else None
    _write(cell, {"task": task, "arm": arm, "seed": seed, "command": "gentune " + shlex.join(cmd),
                  "date": dt.date.today().isoformat(), "machine": machine(), "wall_seconds": time.time() - t0,
                  "init_sha256": hashlib.sha256(weights.read_bytes()).hexdigest() if weights else None,
                  "summary": summary, "evals": _evals(out)})
    return cell


def pretrain_cell(objective: str, args, need_encoder: bool = False) -> Path:
    encoder, flags = PRETRAIN[objective]
    return run_pretrain(objective, objective, encoder, flags, args, RESULTS, RUNS, need_encoder)


def _init(arm: str) -> Path | None:
    objective = ARMS[arm][0]
    return RUNS / "pretrain" / objective / "encoder" if objective else None


def tune_lr(args) -> dict:
    """{task: {arm: lr}}: each arm's fine-tuning learning rate, the best final accuracy on the tuning split (one
    cell per candidate, seed TUNE_SEED), written to results/pretrain/tune/choice.json."""
    path = RESULTS / "tune" / "choice.json"
    choice = json.loads(path.read_text()) if path.exists() else {}
    todo = [(task, arm) for task in args.tasks for arm in args.arms if arm not in choice.get(task, {})]

    def cell(task: str, arm: str, lr: str) -> Path:
        objective, encoder = ARMS[arm]
        return run_finetune(task, f"{arm}-lr{lr}", TUNE_SEED, _init(arm), encoder, args, RESULTS / "tune",
                            RUNS / "tune", extra=(*TUNE_SPLIT, "--lr", lr),
                            make_init=lambda: pretrain_cell(objective, args, need_encoder=True))

    missing = [(t, a, lr) for t, a in todo for lr in TUNE_LRS
               if not (RESULTS / "tune" / "finetune" / t / f"{a}-lr{lr}_seed{TUNE_SEED}.json").exists()]
    ensure_encoders({a for _, a, _ in missing}, args)  # only for cells still to run
    _parallel([lambda t=t, a=a, lr=lr: cell(t, a, lr) for t, a, lr in missing])
    for task, arm in todo:  # the cells exist now: read them, in a fixed order
        scores = {lr: json.loads(cell(task, arm, lr).read_text())["summary"]["final_dev"]["accuracy"]
                  for lr in TUNE_LRS}
        best = max(TUNE_LRS, key=lambda lr: (scores[lr], -TUNE_LRS.index(lr)))
        choice.setdefault(task, {})[arm] = {"lr": best, "scores": scores}
        _write(path, choice)
    return choice


def ensure_encoders(arms, args) -> None:
    """Pretrain again the encoders of ``arms`` whose runs are gone, before cells that need them run in parallel
    (each cell's own make_init would race)."""
    objectives = sorted({ARMS[a][0] for a in arms if ARMS[a][0]})
    _parallel([lambda o=o: pretrain_cell(o, args, need_encoder=True) for o in objectives])


def chosen_lr(task: str, arm: str) -> str:
    """The tuned learning rate of an arm on a task (the default before --stage tune has run)."""
    path = RESULTS / "tune" / "choice.json"
    choice = json.loads(path.read_text()) if path.exists() else {}
    return choice.get(task, {}).get(arm, {}).get("lr", TUNE_LRS[0])


def finetune_cell(task: str, arm: str, seed: int, args) -> Path:
    objective, encoder = ARMS[arm]
    return run_finetune(task, arm, seed, _init(arm), encoder, args, RESULTS, RUNS, extra=("--lr", chosen_lr(task, arm)),
                        make_init=lambda: pretrain_cell(objective, args, need_encoder=True))


def matmul_gflops() -> tuple[float, str]:
    """The float32 matmul rate of the device the runs used (the GPU when torch sees one, as gentune picks it; else
    the CPU with torch's threads) and that device's name: the ceiling a training step can approach."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    n, repeats = (8192, 50) if device == "cuda" else (1024, 20)  # enough work to fill the device
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a @ b
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0) / 1e9, device


def throughput_cell(args) -> Path:
    """MAE pretraining throughput on this machine: THROUGHPUT_STEPS steps of the grid's MAE run (same model, batch
    and data), so the images/s, the FLOP-based ceiling and the loop overhead are stated for the machine at hand
    even when the grid's runs were made elsewhere. One cell per device kind (cpu, cuda)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    encoder, flags = PRETRAIN["mae"]
    return run_pretrain(f"mae-throughput-{device}", "mae", encoder, [*flags, "--max-steps", str(THROUGHPUT_STEPS)],
                        args, RESULTS / "throughput", RUNS / "throughput")


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    m = 100 * statistics.fmean(values)
    s = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:.1f} ± {s:.1f}"


def mean_curve(cells: list[dict]) -> dict[float, float]:
    """{epoch: mean held-out accuracy x100} over the cells' evaluations."""
    epochs = sorted({e["epoch"] for c in cells for e in c["evals"]})
    return {ep: 100 * statistics.fmean(e["accuracy"] for c in cells for e in c["evals"] if e["epoch"] == ep)
            for ep in epochs}


def plot_curves(task: str, cells: list[dict], arms: dict | None = None) -> Path | None:
    """One line per arm (mean over seeds), pretrained arms solid, scratch dashed; ``arms`` defaults to ARMS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    drawn = False
    arms = ARMS if arms is None else arms
    for i, arm in enumerate(arms):
        runs = [c for c in cells if c["arm"] == arm]
        if not runs:
            continue
        curve = mean_curve(runs)
        ax.plot(list(curve), list(curve.values()), marker="o", ms=3, color=f"C{i}",
                ls="-" if arms[arm][0] else "--", label=f"{arm} ({len(runs)} seeds)")
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set(xlabel="fine-tuning epoch", ylabel="validation accuracy (%)", title=f"{task}: fine-tuning curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    PLOTS.mkdir(parents=True, exist_ok=True)
    path = PLOTS / f"pretrain_{task}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def paired(cells: list[dict], arm: str, baseline: str) -> tuple[float, float, int] | None:
    """Mean and standard error (x100) of arm - baseline in final accuracy over the seeds both have, and their
    number (None under two seeds)."""
    acc = {(c["arm"], c["seed"]): c["summary"]["final_dev"]["accuracy"] for c in cells}
    diffs = [100 * (acc[arm, s] - acc[baseline, s]) for (a, s) in acc if a == arm and (baseline, s) in acc]
    if len(diffs) < 2:
        return None
    return statistics.fmean(diffs), statistics.stdev(diffs) / len(diffs) ** 0.5, len(diffs)


def _paired(cells: list[dict], arm: str) -> str:
    """The pretrained arm against the scratch arm of its encoder ("-" for the scratch arms)."""
    objective, encoder = ARMS[arm]
    scratch = next((a for a, (o, e) in ARMS.items() if o is None and e == encoder), None)
    d = paired(cells, arm, scratch) if objective and scratch else None
    return f"{d[0]:+.1f} ± {d[1]:.1f} (n={d[2]})" if d else "-"


def _ceiling(cell: dict) -> str:
    """The matmul column: cells written before the rate was measured on the run's device hold the CPU's rate even
    when the runs used a GPU; shown marked, since it is not that run's ceiling."""
    rate = f"{cell['matmul_gflops']:.0f}"
    if cell.get("matmul_device") is None and cell.get("machine", "").startswith("NVIDIA"):
        return rate + " (host CPU)"
    return rate


def render() -> str:
    """The docs/results.md section (empty when nothing has run)."""
    pre = {p.stem: json.loads(p.read_text()) for p in sorted((RESULTS / "pretrain").glob("*.json"))}
    pre |= {p.stem: json.loads(p.read_text()) for p in sorted((RESULTS / "throughput" / "pretrain").glob("*.json"))}
    cells = [json.loads(p.read_text()) for p in sorted((RESULTS / "finetune").glob("*/*.json"))]
    if not pre and not cells:
        return ""
    lines = ["## Unsupervised pretraining, then few-label fine-tuning (`benchmarks/pretrain_grid.py`)", "",
             "CIFAR-10 training images; 5,000 held out (split seed 0) for validation, the rest unlabeled for",
             "pretraining. Fine-tuning: the same recipe for every arm (`" + " ".join(FINETUNE[:4]) + "`, weight decay",
             "0.05, 10% warm-up) except the learning rate, chosen per arm and task on a tuning split (listed under",
             "each table); scored on the held-out images of the task's classes. Accuracy x100, mean ± std over",
             "seeds, after the last epoch.", ""]
    if pre:
        lines += ["| pretraining | encoder | steps | epochs | images/s | forward GFLOP/image | achieved GFLOP/s "
                  "| matmul GFLOP/s | loop overhead | validation loss | minutes |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, c in pre.items():
            s = c["summary"]
            flops, ips, overhead = s.get("forward_flops_per_image"), s["examples_per_second"], s.get("loop_overhead")
            row = [name, c["encoder"], str(s["train_steps"]), f"{s['epochs']:.1f}", f"{ips:.0f}",
                   f"{flops / 1e9:.3f}" if flops else "-", f"{3 * flops * ips / 1e9:.0f}" if flops else "-",
                   _ceiling(c), f"{100 * overhead:.1f}%" if overhead is not None else "-",
                   f"{s['final_dev']['loss']:.4f}", f"{s['train_seconds'] / 60:.1f}"]
            lines.append("| " + " | ".join(row) + " |")
        lines += ["", "Achieved GFLOP/s counts a training step as 3x the analytic forward FLOPs (backward = 2x "
                  "forward); the", "matmul rate (float32; 1024x1024 on all CPU threads, 8192x8192 on a GPU) is the "
                  "device's practical", "ceiling. Loop overhead: the share of the training loop's time not spent "
                  "in steps (data loading, logging),", "evaluation and checkpoints excluded. `mae-throughput-*` rows "
                  f"are {THROUGHPUT_STEPS} steps of the MAE run on one machine", "(`--stage throughput`), for its "
                  "images/s and ceiling; their validation loss is not a result.", ""]
        for name, c in pre.items():
            lines.append(f"- {name}: `{c['command']}` ({c['date']}; {c.get('machine', '-')})")
        lines += NOTES.get("pretraining", [])
        lines.append("")
    for task in TASKS:
        tc = [c for c in cells if c["task"] == task]
        if not tc:
            continue
        lines += [f"### {task}", "", "| arm | init | lr | accuracy (final epoch) | pretrained - scratch (paired) "
                  "| best of the evaluations (optimistic) | seeds | train min/run |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for arm, (objective, encoder) in ARMS.items():
            ac = [c for c in tc if c["arm"] == arm]
            if not ac:
                continue
            final = [c["summary"]["final_dev"]["accuracy"] for c in ac]
            best = [c["summary"]["best_dev"]["accuracy"] for c in ac]
            mins = statistics.fmean(c["summary"]["train_seconds"] for c in ac) / 60
            lrs = sorted({_lr(c["command"]) for c in ac})
            lines.append(f"| {arm} | {objective or 'random'} ({encoder}) | {', '.join(lrs)} | {_fmt(final)} | "
                         f"{_paired(tc, arm)} | {_fmt(best)} | {len(ac)} | {mins:.1f} |")
        plot = plot_curves(task, tc)
        if plot:
            lines += ["", f"![{task} fine-tuning curves](img/{plot.name})"]
        lines += ["", *NOTES.get(task, []),
                  "- The accuracy is the final epoch's on the held-out images. The next column is the best of the "
                  "evaluations every", "  5 epochs on those same images: chosen on the set it is scored on, so an "
                  "upper estimate, shown for the", "  curves' shape only."]
        tuned = (json.loads((RESULTS / "tune" / "choice.json").read_text()).get(task, {})
                 if (RESULTS / "tune" / "choice.json").exists() else {})
        if tuned:
            lines.append(f"- Learning rates chosen on the tuning split (seed {TUNE_SEED}, final accuracy per candidate): "
                         + "; ".join(f"{arm} " + ", ".join(f"{lr}: {100 * a:.1f}" for lr, a in t["scores"].items())
                                     for arm, t in tuned.items()) + ".")
        mixed = [arm for arm in ARMS if len({c.get("init_sha256") for c in tc if c["arm"] == arm}) > 1]
        if mixed:
            lines.append(f"- Warning: the seeds of {', '.join(mixed)} were fine-tuned from different encoder files "
                         "(pretrained again after runs/ was lost).")
        lines += ["", f"- one cell: `{tc[0]['command']}`", f"- dates: {', '.join(sorted({c['date'] for c in tc}))}; "
                  f"machine: {tc[0].get('machine', '-')}", ""]
    return "\n".join(lines) + "\n"


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
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once (default 1); each run's output then goes to RUN_FOLDER.log")
    args = p.parse_args()
    global JOBS
    JOBS = max(1, args.jobs)
    args.pretrain_extra, args.finetune_extra = [], []
    if args.smoke:  # the whole pipeline in minutes; results go to a scratch folder
        global RESULTS, RUNS, PLOTS
        RUNS = ROOT / "runs" / "pretrain_smoke"
        RESULTS, PLOTS = RUNS / "results", RUNS / "img"
        args.pretrain_extra = ["--max-steps", "3", "--batch-size", "32"]
        args.finetune_extra = ["--max-steps", "3", "--set", "eval_every_epochs=0"]
    if not args.render:
        if args.stage == "throughput":
            throughput_cell(args)
        if args.stage in ("all", "pretrain", "tune"):
            _parallel([lambda o=o: pretrain_cell(o, args) for o in PRETRAIN if any(ARMS[a][0] == o for a in args.arms)])
        if args.stage in ("all", "tune"):
            tune_lr(args)
        if args.stage in ("all", "finetune"):
            missing = [(seed, task, arm) for seed in args.seeds for task in args.tasks for arm in args.arms
                       if not (RESULTS / "finetune" / task / f"{arm}_seed{seed}.json").exists()]
            ensure_encoders({arm for _, _, arm in missing}, args)

            def cell(seed: int, task: str, arm: str) -> None:
                finetune_cell(task, arm, seed, args)
                if JOBS == 1 and not args.smoke:
                    _write_doc()

            # seeds outer: an interrupted grid still covers every arm with some seeds
            _parallel([lambda c=c: cell(*c) for c in missing])
    if args.smoke:
        print(render())
        return 0
    _write_doc()
    return 0


def _write_doc() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import finetune_grid

    finetune_grid.write_doc()


if __name__ == "__main__":
    sys.exit(main())
