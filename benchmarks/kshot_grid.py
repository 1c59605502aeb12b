"""k-shot CIFAR-10 with ImageNet EfficientNet-Lite0 (issue 23): a linear probe, fine-tuning, L2-SP, neuron grouping
with fixed fractions of groups, and neuron grouping with the fraction per layer searched by an LSTM controller
(REINFORCE) or by random search with the same episode budget (Yoo et al., AAAI 2018).

Data: ../shared/data/cifar10/cifar10_train_jpg.tar.gz (or $GENTUNE_CIFAR10), 10 classes, 32x32, run at 96x96 (the
network resizes; chosen by the probe phase on the tuning split). Splits, all of the training archive:
- reported: VAL images held out with split_seed 0 (stratified); k-shot training images drawn from the rest with the
  run's seed (seeds 0-4, each a different draw). Only these accuracies are reported.
- tuning: the reported images removed first, then VAL images held out with split_seed 1 (exclude_split_seed=0,
  split_seed=1); k-shot images drawn with seed 100. Every hyper-parameter, and every search's reward, comes from it.

Every arm: init imagenet, the stem and the first 11 MBConv blocks frozen (their outputs computed once per image and
cached, flips cached too: the augmentation is a horizontal flip), BatchNorm statistics fixed, STEPS optimizer steps
(batch min(10 k, 50)), the final model scored (no checkpoint picked on the reported images).

Phases (one JSON cell per run under benchmarks/results/kshot/, finished cells are skipped, so the grid spans
sessions):

    python benchmarks/kshot_grid.py probe    # the converted weights: probe on ImageNet vs random features
    python benchmarks/kshot_grid.py cost     # a step with the frozen layers cached vs computed, side by side
    python benchmarks/kshot_grid.py tune     # each arm's grid on the tuning split
    python benchmarks/kshot_grid.py search   # controller and random search, EPISODES each, on the tuning split
    python benchmarks/kshot_grid.py report   # every arm with its chosen settings, seeds 0-4, reported split
    python benchmarks/kshot_grid.py all [--k 5]
    python benchmarks/kshot_grid.py --dry-run | --render

Not run by CI.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
from pathlib import Path

from _lib import cells, runner, stats, tables
from _lib.paths import RESULTS as ALL_RESULTS
from _lib.paths import ROOT
from _lib.provenance import commit, machine

RESULTS = ALL_RESULTS / "kshot"
RUNS = ROOT / "runs" / "kshot"
DATA = Path(os.environ.get("GENTUNE_CIFAR10", ROOT.parent / "shared" / "data" / "cifar10" /
                           "cifar10_train_jpg.tar.gz"))
KS = [5, 1, 10]  # the order they run in: the targets' k first
SEEDS = [0, 1, 2, 3, 4]
TUNE_SEED = 100
VAL = 1000
STEPS = 60
EPISODES = 20
RESOLUTION = 96
FREEZE = 12  # the stem and blocks 1-11 (69% of the forward FLOPs at 96x96) frozen and cached
FRACTIONS = ["0.5", "0.25", "0.125"]
CHOICES = "1,0.5,0.25,0.125"
# one learning-rate grid for every arm that trains the encoder (3e-3, tried first at k = 5, was the worst setting of
# every such arm on the tuning split and was dropped for 1e-4)
LRS = ("1e-4", "3e-4", "1e-3")
# arm -> its grid: (name, extra argv) pairs, searched on the tuning split
GRIDS = {
    "probe": [(f"lr{lr}", ["--linear-probe", "--lr", lr]) for lr in ("3e-3", "1e-2", "3e-2")],
    "finetune": [(f"lr{lr}", ["--lr", lr]) for lr in LRS],
    "l2sp": [(f"lr{lr}_a{a}", ["--lr", lr, "--regularizer", "l2sp", "--set", f"l2sp.alpha={a}", "l2sp.beta=0"])
             for lr in LRS for a in ("0.01", "0.1")],
    **{f"group{f}": [(f"lr{lr}", ["--lr", lr, "--regularizer", "neuron-grouping", "--set",
                                  f"neuron-grouping.fraction=[{f}]"]) for lr in LRS]
       for f in FRACTIONS},
}
SEARCHED = ["controller", "random"]
ARMS = [*GRIDS, *SEARCHED]


def _rel(p: Path) -> str:
    return os.path.relpath(p, ROOT)


def common(k: int, seed: int, split: str) -> list[str]:
    splits = ["split_seed=1", "exclude_split_seed=0"] if split == "tune" else ["split_seed=0"]
    return ["--task", "image-classification", "--data", str(DATA), "--init", "imagenet",
            "--model", "efficientnet-lite0",
            "--labels-per-class", str(k), "--seed", str(seed), "--max-steps", str(STEPS),
            "--batch-size", str(min(10 * k, 50)),
            "--set", f"resolution={RESOLUTION}", f"freeze_layers={FREEZE}", "cache_frozen=true", "freeze_bn_stats=true",
            f"val_size={VAL}", "eval_every_epochs=0", "save_model=false", "save_steps=0", *splits]


def _argv(base: list[str], extra: list[str]) -> list[str]:
    """``base`` + ``extra``, with every ``--set`` item of both after one ``--set``."""
    sets, flags, i, both = [], [], 0, base + extra
    while i < len(both):
        if both[i] == "--set":
            i += 1
            while i < len(both) and not both[i].startswith("--"):
                sets.append(both[i])
                i += 1
        else:
            flags.append(both[i])
            i += 1
    return flags + (["--set", *sets] if sets else [])


# ------------------------------------------------------------------------------------------------- phases


def tune_cells(ks):
    for k in ks:
        for arm, grid in GRIDS.items():
            for name, extra in grid:
                out = RUNS / "tune" / f"k{k}" / arm / name
                argv = _argv(["finetune", *common(k, TUNE_SEED, "tune"), "--out", _rel(out)], extra)
                yield (RESULTS / "tune" / f"k{k}" / arm / f"{name}.json", argv,
                       {"phase": "tune", "k": k, "arm": arm, "setting": name, "seed": TUNE_SEED}, out)


def phase_tune(ks) -> None:
    for cell, argv, record, out in tune_cells(ks):
        runner.run_cell(cell, argv, record, out)


def chosen(k: int, arm: str) -> tuple[str, list[str]] | None:
    """The arm's setting with the best tuning accuracy (the first of equals), or None before its grid is done."""
    best = None
    for name, extra in GRIDS[arm]:
        cell = RESULTS / "tune" / f"k{k}" / arm / f"{name}.json"
        if not cell.exists():
            return None
        acc = cells.read_json(cell)["summary"]["final_dev"]["accuracy"]
        if best is None or acc > best[0]:
            best = (acc, name, extra)
    return best[1], best[2]


def search_cell(k: int, strategy: str) -> Path:
    return RESULTS / "search" / f"k{k}_{strategy}.json"


def search_lr(k: int) -> str | None:
    """The learning rate a search trains its episodes with: that of the best fixed-fraction grouping on the tuning
    split (grouping prefers another rate than plain fine-tuning), or None before those grids are done."""
    best = None
    for f in FRACTIONS:
        got = chosen(k, f"group{f}")
        if got is None:
            return None
        acc = cells.read_json(RESULTS / "tune" / f"k{k}" / f"group{f}" / f"{got[0]}.json")["summary"]["final_dev"]
        if best is None or acc["accuracy"] > best[0]:
            best = (acc["accuracy"], got[0])
    return best[1].removeprefix("lr")


def phase_search(ks) -> None:
    for k in ks:
        for strategy in SEARCHED:
            cell = search_cell(k, strategy)
            if cells.finished(cell, f"search k={k} {strategy}"):
                continue
            if search_lr(k) is None:
                phase_tune([k])
            lr = search_lr(k)
            out = RUNS / "search" / f"k{k}_{strategy}"
            argv = _argv(["search", "--strategy", strategy, "--episodes", str(EPISODES), "--choices", CHOICES,
                          "--search-seed", "0", *common(k, TUNE_SEED, "tune"), "--out", _rel(out),
                          "--regularizer", "neuron-grouping", "--lr", lr], [])
            t0 = time.time()
            runner.gentune(argv, label=f"search k={k} {strategy}")
            cells.write_json(cell, {"phase": "search", "k": k, "strategy": strategy, "lr": lr,
                                    "command": " ".join(["gentune", *argv]), "machine": machine(),
                                    "commit": commit(), "date": dt.date.today().isoformat(),
                                    "wall_seconds": time.time() - t0,
                                    "summary": cells.read_json(out / "summary.json")})


def _searched_extra(k: int, strategy: str) -> tuple[str, list[str]] | None:
    cell = search_cell(k, strategy)
    if not cell.exists():
        return None
    found = cells.read_json(cell)
    fractions = ",".join(f"{f:g}" for f in found["summary"]["best"]["fractions"])
    return (f"lr{found['lr']}_searched",
            ["--lr", found["lr"], "--regularizer", "neuron-grouping", "--set",
             f"neuron-grouping.fraction=[{fractions}]"])


def report_cells(ks, seeds, arms):
    for k in ks:
        for arm in arms:
            setting = _searched_extra(k, arm) if arm in SEARCHED else chosen(k, arm)
            if setting is None:
                continue
            for seed in seeds:
                out = RUNS / "report" / f"k{k}" / arm / f"seed{seed}"
                argv = _argv(["finetune", *common(k, seed, "report"), "--out", _rel(out)], setting[1])
                yield (RESULTS / "report" / f"k{k}" / arm / f"seed{seed}.json", argv,
                       {"phase": "report", "k": k, "arm": arm, "setting": setting[0], "seed": seed}, out)


def phase_report(ks, seeds, arms) -> None:
    for cell, argv, record, out in report_cells(ks, seeds, arms):
        runner.run_cell(cell, argv, record, out)


def phase_probe() -> None:
    """The converted weights: a logistic-regression probe on ImageNet features against the same network at random
    initialisation (100 training images per class, the tuning split's VAL images), at three resolutions and both
    normalisations; the resolution and normalisation of every other phase are chosen here."""
    cell = RESULTS / "probe.json"
    if cells.finished(cell, "probe"):
        return
    import torch
    from sklearn.linear_model import LogisticRegression

    sys.path.insert(0, str(ROOT / "src"))
    from gentune.data.images import labels_per_class, normalize
    from gentune.data.splits import held_out_split
    from gentune.models.efficientnet import NORMALIZATION, EfficientNetLite

    train, val = held_out_split(str(DATA), None, VAL, 1, None, 0)
    train = labels_per_class(train, 100, TUNE_SEED)
    rows = []
    for res in (64, 96, 128):
        for init in ("imagenet", "random"):
            torch.manual_seed(0)
            enc = EfficientNetLite(resolution=res)
            if init == "imagenet":
                enc.load_imagenet()
            enc.eval()
            for norm in (("tf-lite", "imagenet") if init == "imagenet" else ("tf-lite",)):
                mean, std = NORMALIZATION[norm]

                def feats(ds):
                    with torch.no_grad():
                        return torch.cat([enc.forward_features(normalize(torch.from_numpy(ds.images[i:i + 100]),
                                                                         mean, std))
                                          for i in range(0, len(ds), 100)]).numpy()

                t0 = time.perf_counter()
                a, b = feats(train), feats(val)
                seconds = time.perf_counter() - t0
                mu, sd = a.mean(0), a.std(0) + 1e-6
                probe = LogisticRegression(max_iter=2000).fit((a - mu) / sd, train.labels)
                rows.append({"resolution": res, "init": init, "normalization": norm,
                             "accuracy": float(probe.score((b - mu) / sd, val.labels)),
                             "images_per_second": (len(train) + len(val)) / seconds})
                print(f"[probe] {rows[-1]}", flush=True)
    cells.write_json(cell, {"rows": rows, "train_images": len(train), "val_images": len(val), "machine": machine(),
                            "commit": commit(), "date": dt.date.today().isoformat()})


def phase_cost(steps: int = 12) -> None:
    """Seconds per optimizer step of k=5 fine-tuning (batch 50, all 50 images) with the frozen layers cached
    against computed each step, side by side in one process, and the search's episode time (from its trace)."""
    cell = RESULTS / "cost.json"
    if cells.finished(cell, "cost"):
        return
    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from gentune.config import apply_mapping
    from gentune.tasks.image_classification import ImageClassificationConfig, build

    rows = []
    for cached in (True, False, True):  # cached twice: the first warms up the process
        cfg = apply_mapping(ImageClassificationConfig(), dict(
            out="unused", data=str(DATA), init="imagenet", model="efficientnet-lite0", labels_per_class=5, seed=0,
            batch_size=50, resolution=RESOLUTION, freeze_layers=FREEZE, cache_frozen=cached, freeze_bn_stats=True,
            val_size=VAL, split_seed=1, exclude_split_seed=0), "cost")
        t0 = time.perf_counter()
        job = build(cfg)
        built = time.perf_counter() - t0
        model, opt = job.model.train(), torch.optim.AdamW([p for p in job.model.parameters() if p.requires_grad])
        batch = job.augment(job.collate([job.train_set[i] for i in range(50)]))
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            job.objective(model, batch)["loss"].backward()
            opt.step()
            opt.zero_grad()
            times.append(time.perf_counter() - t)
        rows.append({"cached": cached, "build_seconds": built, "step_seconds": statistics.median(times[2:])})
        print(f"[cost] {rows[-1]}", flush=True)
    cells.write_json(cell, {"rows": rows[1:], "steps": steps, "threads": torch.get_num_threads(),
                            "machine": machine(), "commit": commit(), "date": dt.date.today().isoformat()})


def remaining(ks, seeds) -> dict[str, int]:
    return {"probe": int(not (RESULTS / "probe.json").exists()), "cost": int(not (RESULTS / "cost.json").exists()),
            "tune": sum(not c.exists() for c, *_ in tune_cells(ks)),
            "search": sum(not search_cell(k, s).exists() for k in ks for s in SEARCHED),
            "report (of the settings chosen so far)": sum(not c.exists() for c, *_ in report_cells(ks, seeds, ARMS))}


# ------------------------------------------------------------------------------------------------- tables


def load() -> dict:
    def one(name):
        f = RESULTS / name
        return cells.read_json(f) if f.is_file() else None

    return {"report": cells.read_cells(RESULTS / "report", "*/*/*.json"),
            "tune": cells.read_cells(RESULTS / "tune", "*/*/*.json"),
            "search": cells.read_cells(RESULTS / "search", "*.json"), "probe": one("probe.json"),
            "cost": one("cost.json")}


def _acc(data: dict, k: int, arm: str) -> dict[int, float]:
    return {c["seed"]: c["summary"]["final_dev"]["accuracy"] for c in data["report"] if (c["k"], c["arm"]) == (k, arm)}


def _setting(data: dict, k: int, arm: str) -> str:
    got = {c["setting"] for c in data["report"] if (c["k"], c["arm"]) == (k, arm)}
    return ", ".join(sorted(got)) or "-"


def trivial_line() -> str:
    """The trivial predictor on the reported images: always the majority class of the k-shot training images (all
    classes tie, so the first), i.e. the share of that class among the reported images."""
    if not DATA.is_file():
        return "The trivial predictor: - (no CIFAR-10 archive at $GENTUNE_CIFAR10)."
    import numpy as np

    sys.path.insert(0, str(ROOT / "src"))
    from gentune.data.splits import held_out_split

    _, val = held_out_split(str(DATA), None, VAL, 0)
    share = float((val.labels == 0).mean())
    return (f"The trivial predictor (one class for every image) scores {100 * share:.1f}% on the {len(val)} reported "
            f"images (stratified: {int(np.bincount(val.labels).min())} to {int(np.bincount(val.labels).max())} "
            "per class).")


def sections(data: dict) -> dict[str, str]:
    out = {}
    if data["report"]:
        lines = ["Accuracy on the reported images (mean ± std over 5 k-shot draws); in brackets the paired difference "
                 "to fine-tuning, with its standard error; the setting each arm's tuning chose.", ""]
        lines += tables.header(["arm", *[f"k = {k}" for k in sorted(KS)], "settings (k = " +
                                ", ".join(str(k) for k in sorted(KS)) + ")"],
                               ["---", *["---:"] * len(KS), "---"])
        for arm in ARMS:
            row = [arm]
            for k in sorted(KS):
                got = _acc(data, k, arm)
                cell = stats.fmt(list(got.values())) if got else "-"
                if arm != "finetune" and got:
                    cell += f" ({stats.fmt_paired(stats.paired(got, _acc(data, k, 'finetune')))})"
                row.append(cell)
            row.append(" / ".join(_setting(data, k, arm) for k in sorted(KS)))
            lines.append(tables.row(row))
        lines += ["", trivial_line()]
        out["kshot/table"] = "\n".join(lines)
    else:
        out["kshot/table"] = "_No reported run has finished yet: no accuracy is claimed._"
    if data["search"]:
        rows = tables.header(["k", "strategy", "episodes", "best tuning accuracy", "mean of the last 5",
                              "groups of the best (of filters)", "wall time"],
                             ["---:", "---", "---:", "---:", "---:", "---:", "---:"])
        for c in sorted(data["search"], key=lambda c: (c["k"], c["strategy"])):
            s = c["summary"]
            rows.append(tables.row([str(c["k"]), c["strategy"], str(s["episodes"]), f"{100 * s['best']['reward']:.1f}",
                                    f"{100 * statistics.fmean(s['rewards'][-5:]):.1f}",
                                    f"{sum(s['best']['groups'])} / {sum(s['filters'])}",
                                    f"{c['wall_seconds'] / 60:.1f} min"]))
        in_grid = {(arm, name) for arm, grid in GRIDS.items() for name, _ in grid}
        best_fixed = {k: max((c["summary"]["final_dev"]["accuracy"] for c in data["tune"] if c["k"] == k
                              and c["arm"].startswith("group") and (c["arm"], c["setting"]) in in_grid),
                             default=None) for k in KS}
        rows += ["", "Best fixed-fraction grouping on the same tuning split: " + ", ".join(
            f"k = {k}: {100 * v:.1f}" for k, v in sorted(best_fixed.items()) if v is not None) + "."]
        out["kshot/search"] = "\n".join(rows)
    else:
        out["kshot/search"] = "_No search has finished yet._"
    probe = data["probe"]
    if probe:
        rows = tables.header(["resolution", "weights", "normalisation", "probe accuracy", "images/s"],
                             ["---:", "---", "---", "---:", "---:"])
        rows += [tables.row([str(r["resolution"]), r["init"], r["normalization"], f"{100 * r['accuracy']:.1f}",
                             f"{r['images_per_second']:.0f}"]) for r in probe["rows"]]
        rows += ["", f"{probe['train_images']} training images (100 per class), {probe['val_images']} tuning-split "
                     f"images; machine: {probe['machine']}; {probe['date']}, commit {probe['commit']}."]
        out["kshot/probe"] = "\n".join(rows)
    else:
        out["kshot/probe"] = "_Not measured yet: `python benchmarks/kshot_grid.py probe`._"
    cost = data["cost"]
    if cost:
        by = {r["cached"]: r for r in cost["rows"]}
        out["kshot/cost"] = (f"A k = 5 step (batch 50) takes {by[True]['step_seconds']:.3f} s with the frozen layers "
                             f"cached and {by[False]['step_seconds']:.3f} s computing them ("
                             f"{by[False]['step_seconds'] / by[True]['step_seconds']:.1f}x); building the run "
                             f"(data, weights, the cache) {by[True]['build_seconds']:.0f} s against "
                             f"{by[False]['build_seconds']:.0f} s. {cost['threads']} threads; machine: "
                             f"{cost['machine']}; {cost['date']}, commit {cost['commit']}.")
    else:
        out["kshot/cost"] = "_Not measured yet: `python benchmarks/kshot_grid.py cost`._"
    return out


def plots(data: dict, folder: Path) -> list[Path]:
    """The searches' rewards by episode, controller against random search, one panel per k (docs/img)."""
    if not data["search"]:
        return []
    sys.path.insert(0, str(ROOT / "src"))
    from gentune.report import pyplot

    plt = pyplot()
    ks = sorted({c["k"] for c in data["search"]})
    fig, axes = plt.subplots(1, len(ks), figsize=(5.5 * len(ks), 3.4), squeeze=False)
    for ax, k in zip(axes[0], ks):
        for c in sorted((c for c in data["search"] if c["k"] == k), key=lambda c: c["strategy"]):
            r = [100 * v for v in c["summary"]["rewards"]]
            line, = ax.plot(range(1, len(r) + 1), r, "o", ms=3, alpha=0.6, label=f"{c['strategy']} (reward)")
            ax.plot(range(1, len(r) + 1), [max(r[:i + 1]) for i in range(len(r))], "-", color=line.get_color(),
                    label=f"{c['strategy']} (best so far)")
        ax.set_title(f"k = {k}: tuning-split accuracy per episode", fontsize=9)
        ax.set_xlabel("episode")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "kshot_search.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", nargs="?", choices=["probe", "cost", "tune", "search", "report", "all"])
    p.add_argument("--k", nargs="+", type=int, default=KS, choices=KS)
    p.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    p.add_argument("--arms", nargs="+", default=ARMS, choices=ARMS)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--render", action="store_true")
    args = p.parse_args()
    if args.render:
        runner.render_results()
        return 0
    if args.dry_run or args.phase is None:
        print(remaining(args.k, args.seeds))
        return 0
    if args.phase == "all":  # k by k: each k's table fills before the next k starts
        phase_probe()
        phase_cost()
        for k in args.k:
            phase_tune([k])
            phase_search([k])
            phase_report([k], args.seeds, args.arms)
            runner.render_results()
        return 0
    {"probe": phase_probe, "cost": phase_cost}.get(args.phase, lambda: None)()
    if args.phase == "tune":
        phase_tune(args.k)
    elif args.phase == "search":
        phase_search(args.k)
    elif args.phase == "report":
        phase_report(args.k, args.seeds, args.arms)
    runner.render_results()
    return 0


if __name__ == "__main__":
    sys.exit(main())
