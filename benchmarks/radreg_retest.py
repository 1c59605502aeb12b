"""RadReg re-tested where the theory of Deng, Hong, Zhou, Mahdavi (AISTATS 2024) applies (issue 24, items 2-4).

- **Heterogeneous setting** (``hetero``): the encoder pretrains on the CIFAR-10 images of 8 classes
  (``exclude_classes=cat,dog``); RadReg's unlabeled stream is the cat and dog images of the training part
  (benchmarks/_lib/images.py ``downstream_pool``, the held-out images removed); downstream: cat vs dog, 500
  labels per class. The contrast (``same``): pretraining on all 10 classes, RadReg's pool and the downstream
  task the same.
- **Heads on fixed representations**: every encoder is scored by a linear probe and an MLP probe (frozen encoder,
  ``--linear-probe``, head linear or mlp) and by full fine-tuning (the grid recipe, the plain arm's tuned rate).
  MAE's ViT pools by the mean of its patch tokens (``pool=mean``, as the MAE paper fine-tunes) or the CLS token,
  chosen by the linear probe of plain MAE (pretraining seed 0) on the tuning split (``--stage tune``).
- **Seeds at both levels**: pretraining seeds 0, 1, 2 per arm x fine-tuning seeds 13, 21, 42, 87, 100. Reported:
  the mean with its two-level standard error (the pretraining seed as the unit), the paired difference RadReg -
  plain per pretraining seed (mean over its fine-tuning seeds) with its standard error over pretraining seeds, the
  steps to 95% of the final accuracy (evaluated every 2 epochs), and the trivial predictor's accuracy on the same
  held-out images.
- RadReg: the MLP head class with the single-unit estimator (``radreg.estimator=unit``, chosen by
  benchmarks/radreg_estimator.py), each objective's tuned lambda (radreg_grid.py's choice files).
- A third arm, ``OBJECTIVE+radreg-center`` (``--arms plain radreg radreg-center``; not run by default): RadReg with
  ``center=true``, which subtracts the batch's mean representation before the scale is taken out, so the penalty
  cannot be met by mapping the cat and dog images to nearly one point (what the plain RadReg arm's encoder did).
  Its lambda is chosen by ``--stage tune-center`` in this script's own setting: heterogeneous pretraining for
  TUNE_BUDGET epochs on the tuning split (seed 0), each of CENTER_WEIGHTS, scored by the cat-dog linear probe on the
  tuning split (seed 7); the plain objective and uncentred RadReg at its reported lambda are scored the same way
  beside them, as references (benchmarks/results/radreg_retest/BUDGET/tune/center-OBJECTIVE.json).

Budgets: ``--budget full`` is the grid's (MAE 8 epochs, context encoder 30; about 30 min each on 2 cores, minutes
on a GPU); ``--budget cpu`` halves the epochs, stated in the results. 12 pretrainings per setting, 180
downstream runs per setting (3 kinds x 5 seeds x 12 checkpoints).

    python benchmarks/radreg_retest.py --stage tune              # MAE's pooling on the tuning split (minutes)
    python benchmarks/radreg_retest.py --stage tune-center --objectives context-encoder   # about 30 min, 2 cores
    python benchmarks/radreg_retest.py --settings hetero --objectives context-encoder --arms radreg-center
    python benchmarks/radreg_retest.py --settings hetero --budget cpu --objectives context-encoder
    python benchmarks/radreg_retest.py                           # everything (a GPU machine: --jobs 6)
    python benchmarks/radreg_retest.py --smoke --settings hetero --objectives context-encoder   # 3-step runs,
                                                                 # 2 x 2 seeds, into runs/, a printed preview

Cells: benchmarks/results/radreg_retest/BUDGET/{pretrain,finetune}/...; finished cells are skipped, so a grid
spans sessions. benchmarks/render_results.py renders them (``sections()``). Not run by CI.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from _lib import cells, curves, images, runner, stats, tables, template
from _lib.images import PRETRAIN, SEEDS, TUNE_SEED, TUNE_SPLIT
from _lib.paths import IMG, RESULTS, RUNS

OUT_RESULTS, OUT_RUNS = RESULTS / "radreg_retest", RUNS / "radreg_retest"
SETTINGS = {"hetero": ["--set", "exclude_classes=cat,dog"], "same": []}
SETTING_TITLES = {"hetero": "Heterogeneous: pretraining on the 8 classes that are not cat or dog",
                  "same": "Same distribution: pretraining on all 10 classes"}
PRETRAIN_SEEDS = [0, 1, 2]
KINDS = {"linear-probe": ("--linear-probe", "--set", "head=linear"),
         "mlp-probe": ("--linear-probe", "--set", "head=mlp"),
         "finetune": ()}
RADREG = {"head": "mlp", "estimator": "unit", "ascent_steps": 5, "restarts": 2, "batch_size": 16}  # the chosen
ARMS = {"plain": "", "radreg": "+radreg", "radreg-center": "+radreg-center"}  # --arms -> the arm's name suffix
CENTER_WEIGHTS = [0.1, 1.0, 10.0]  # lambda candidates of the centred arm (--stage tune-center)
TUNE_BUDGET = "5"  # epochs of the tuning pretrainings of --stage tune-center (the full budget: 30 / 8)
TASK = "cat-dog"
EVAL_EVERY = 2  # epochs between evaluations of a downstream run (the grid's 5 would make "steps to 95%" coarse)


def pooling(args) -> str | None:
    """MAE's pooling: the tuning stage's choice (``tune/pool.json``), ``mean`` before it has run."""
    path = Path(args.results) / "tune" / "pool.json"
    return cells.read_json(path)["pool"] if path.exists() else "mean"


def budget_flags(objective: str, budget: str) -> list[str]:
    flags = list(PRETRAIN[objective][1])
    if budget == "cpu":
        at = flags.index("--epochs") + 1
        flags[at] = str(max(1, int(flags[at]) // 2))
    return flags


def arm_name(objective: str, variant: str) -> str:
    """``variant``: an :data:`ARMS` suffix ("" for the plain objective)."""
    return objective + variant


def center_path(objective: str, args) -> Path:
    return Path(args.results) / "tune" / f"center-{objective}.json"


def radreg_options(objective: str, variant: str, args, tuning: bool = False, weight: float | None = None) -> dict:
    """The RadReg options of an arm (empty for the plain one): the chosen estimator, ``center`` for the centred
    arm, the cat and dog pool (the tuning pool with ``tuning``) and lambda (``weight``, else the arm's chosen)."""
    if not variant:
        return {}
    centred = variant == ARMS["radreg-center"]
    if weight is None:
        if centred and not center_path(objective, args).exists():
            raise SystemExit(f"error: {center_path(objective, args).relative_to(images.ROOT)} is missing: run "
                             f"--stage tune-center --objectives {objective} first (it chooses the centred lambda)")
        weight = (cells.read_json(center_path(objective, args))["weight"] if centred
                  else images.radreg_weight(objective))
    pool = images.downstream_pool(TASK, args.data, images.RADREG_RUNS, tuning)
    return {**RADREG, **({"center": "true"} if centred else {}), "data": os.path.relpath(pool, images.ROOT),
            "weight": weight}


def regularizer_flags(options: dict) -> list[str]:
    return ["--regularizer", "radreg", "--set", *[f"radreg.{k}={v}" for k, v in options.items()]] if options else []


def pretrain_flags(setting: str, objective: str, variant: str, seed: int, args) -> list[str]:
    """The ``gentune pretrain`` flags of one checkpoint after ``--objective --model --data --out``."""
    flags = [*budget_flags(objective, args.budget), *SETTINGS[setting], "--seed", str(seed), *args.steps]
    if objective == "mae":
        flags += ["--set", f"pool={pooling(args)}"]
    return flags + regularizer_flags(radreg_options(objective, variant, args))


def pretrain(setting: str, objective: str, variant: str, seed: int, args, need_encoder: bool = False) -> Path:
    """One pretraining cell: ``pretrain/SETTING/ARM_pSEED.json``."""
    name = f"{setting}/{arm_name(objective, variant)}_p{seed}"
    return images.run_pretrain(name, objective, PRETRAIN[objective][0],
                               pretrain_flags(setting, objective, variant, seed, args), args, Path(args.results),
                               Path(args.runs), need_encoder)


def downstream_flags(objective: str, kind: str, args) -> tuple[str, ...]:
    """The flags after the fine-tuning recipe of one downstream kind (probe or fine-tuning)."""
    return (*KINDS[kind], "--lr", images.chosen_lr(TASK, objective), "--set", f"eval_every_epochs={EVAL_EVERY}",
            "--set", "eval_train=true", *args.steps)  # eval_train: the gap for radreg_diagnostics.py


def downstream_cell(setting: str, objective: str, variant: str, pseed: int, kind: str, seed: int, args) -> Path:
    arm = f"{setting}.{kind}.{arm_name(objective, variant)}_p{pseed}"
    return Path(args.results) / "finetune" / TASK / f"{arm}_seed{seed}.json"


def downstream_left(setting: str, objective: str, variant: str, pseed: int, args) -> bool:
    return any(not downstream_cell(setting, objective, variant, pseed, k, s, args).exists()
               for k in KINDS for s in args.seeds)


def downstream(setting: str, objective: str, variant: str, pseed: int, kind: str, seed: int, args) -> Path:
    """One downstream cell: ``finetune/cat-dog/SETTING.KIND.ARM_pP_seedS.json`` from that checkpoint."""
    arm = f"{setting}.{kind}.{arm_name(objective, variant)}_p{pseed}"
    cell = downstream_cell(setting, objective, variant, pseed, kind, seed, args)
    if cell.exists():
        return cell
    init = Path(args.runs) / "pretrain" / setting / f"{arm_name(objective, variant)}_p{pseed}" / "encoder"
    return images.run_finetune(TASK, arm, seed, init, PRETRAIN[objective][0], args, Path(args.results),
                               Path(args.runs), extra=downstream_flags(objective, kind, args),
                               make_init=lambda: pretrain(setting, objective, variant, pseed, args, True))


def tune(args) -> dict:
    """MAE's pooling: plain MAE (pretraining seed 0, heterogeneous) probed linearly with cls and with mean pooling
    on the tuning split (the reported held-out images removed; seed 7), the better one chosen."""
    path = Path(args.results) / "tune" / "pool.json"
    if path.exists():
        return cells.read_json(path)
    tuning = Path(args.results) / "tune"
    flags = [*budget_flags("mae", args.budget), *SETTINGS["hetero"], *TUNE_SPLIT, "--seed", "0", *args.steps]
    images.run_pretrain("mae", "mae", PRETRAIN["mae"][0], flags, args, tuning, Path(args.runs) / "tune")
    init = Path(args.runs) / "tune" / "pretrain" / "mae" / "encoder"
    scores = {}
    for pool in ("cls", "mean"):
        cell = images.run_finetune(TASK, f"probe-{pool}", TUNE_SEED, init, PRETRAIN["mae"][0], args, tuning,
                                   Path(args.runs) / "tune",
                                   extra=(*KINDS["linear-probe"], "--set", f"pool={pool}", *TUNE_SPLIT, *args.steps))
        scores[pool] = cells.read_json(cell)["summary"]["final_dev"]["accuracy"]
    choice = {"pool": max(scores, key=scores.get), "linear_probe_accuracy": scores,
              "protocol": "plain MAE pretrained on 8 classes (seed 0) on the tuning split, cat-dog linear probe "
                          f"seed {TUNE_SEED} on the tuning split"}
    cells.write_json(path, choice)
    return choice


def tune_center(args, objective: str) -> dict:
    """lambda of the centred arm, chosen by the linear probe on the tuning split (see the module docstring)."""
    path = center_path(objective, args)
    if path.exists():
        return cells.read_json(path)
    tuning = Path(args.results) / "tune"
    base = [*images.pretrain_flags(objective, TUNE_BUDGET, tuning=True), *SETTINGS["hetero"], "--seed", "0",
            *args.steps]
    if objective == "mae":
        base += ["--set", f"pool={pooling(args)}"]
    centred = ARMS["radreg-center"]
    runs = {f"{objective}": {}, f"{objective}+radreg-{images.radreg_weight(objective)}":
            radreg_options(objective, ARMS["radreg"], args, tuning=True)}
    runs.update({f"{objective}+radreg-center-{w}": radreg_options(objective, centred, args, tuning=True, weight=w)
                 for w in CENTER_WEIGHTS})
    scores = {}
    for name, options in runs.items():
        images.run_pretrain(f"center/{name}", objective, PRETRAIN[objective][0], [*base, *regularizer_flags(options)],
                            args, tuning, Path(args.runs) / "tune")
        init = Path(args.runs) / "tune" / "pretrain" / "center" / name / "encoder"
        cell = images.run_finetune(TASK, f"center.linear-probe.{name}", TUNE_SEED, init, PRETRAIN[objective][0], args,
                                   tuning, Path(args.runs) / "tune",
                                   extra=(*KINDS["linear-probe"], "--lr", images.chosen_lr(TASK, objective),
                                          *TUNE_SPLIT, *args.steps))
        scores[name] = cells.read_json(cell)["summary"]["final_dev"]["accuracy"]
    candidates = {w: scores[f"{objective}+radreg-center-{w}"] for w in CENTER_WEIGHTS}
    best = max(CENTER_WEIGHTS, key=lambda w: (candidates[w], -w))  # a tie: the smaller lambda
    choice = {"weight": best, "linear_probe_accuracy": scores, "objective": objective,
              "protocol": f"{objective} pretrained on 8 classes for {TUNE_BUDGET} epochs (seed 0) on the tuning split, "
                          f"cat-dog linear probe seed {TUNE_SEED} on the tuning split; the plain objective and "
                          "uncentred RadReg at its reported lambda as references"}
    cells.write_json(path, choice)
    return choice


def run(args) -> None:
    if "mae" in args.objectives:
        tune(args)
    if ARMS["radreg-center"] in args.variants:
        for objective in args.objectives:
            tune_center(args, objective)
    for setting in args.settings:
        for objective in args.objectives:
            for pseed in args.pretrain_seeds:
                # an encoder that runs/ lacks is pretrained again here, before its downstream cells start in
                # parallel (each would otherwise redo it into the same folder), and only if one of them is missing
                calls = [lambda v=v: pretrain(setting, objective, v, pseed, args,
                                              need_encoder=downstream_left(setting, objective, v, pseed, args))
                         for v in args.variants]
                runner.parallel(calls, args.jobs)
                runner.parallel([lambda v=v, k=k, s=s: downstream(setting, objective, v, pseed, k, s, args)
                                 for v in args.variants for k in KINDS for s in args.seeds], args.jobs)


# --------------------------------------------------------------------------------------------- the results page


def load(results: Path = OUT_RESULTS) -> dict:
    """Every budget's downstream cells: budget -> setting -> kind -> arm -> pretraining seed -> seed -> cell."""
    out: dict = {}
    for budget in ("full", "cpu"):
        for cell in cells.read_cells(results / budget / "finetune" / TASK):
            setting, kind, rest = cell["arm"].split(".", 2)
            arm, pseed = rest.rsplit("_p", 1)
            out.setdefault(budget, {}).setdefault(setting, {}).setdefault(kind, {}).setdefault(arm, {}) \
                .setdefault(int(pseed), {})[cell["seed"]] = cell
    return out


def steps_to(cell: dict, share: float = 0.95) -> int | None:
    """The first evaluated step whose accuracy reaches ``share`` of the final one."""
    final = cell["summary"]["final_dev"]["accuracy"]
    for e in cell.get("evals", []):
        if e.get("accuracy", -1.0) >= share * final:
            return e["step"]
    return None


COLUMNS = ["arm", "accuracy (two-level SE)", "per pretraining seed", "gap (train - held-out)",
           "steps to 95% of final"]


def table(arms: dict, objective: str) -> list[str]:
    """A row per arm of ``objective`` (plain, RadReg, centred RadReg: those with cells), then each RadReg arm's
    paired difference to the plain one per pretraining seed.

    Columns: the two-level mean and SE, each pretraining seed's mean over its fine-tuning seeds (or its paired
    difference), the mean generalization gap (``eval_train``: the final model's training minus held-out accuracy),
    and the mean first evaluated step that reaches 95% of the run's final accuracy."""
    names = [arm_name(objective, v) for v in ARMS.values() if arm_name(objective, v) in arms]
    acc = {a: {p: {s: c["summary"]["final_dev"]["accuracy"] for s, c in runs.items()} for p, runs in arms[a].items()}
           for a in names}

    def per_seed(values: dict) -> str:
        return " / ".join(f"{100 * statistics.fmean(v.values()):.1f}" for _, v in sorted(values.items()))

    rows = []
    for a in names:
        steps = [steps_to(c) for runs in arms[a].values() for c in runs.values()]
        steps = [s for s in steps if s is not None]
        gaps = [c["summary"]["generalization_gap"]["accuracy_gap"] for runs in arms[a].values()
                for c in runs.values() if "generalization_gap" in c["summary"]]
        rows.append(tables.row([a, stats.fmt_two_level(stats.two_level(acc[a])), per_seed(acc[a]),
                                f"{100 * statistics.fmean(gaps):+.1f}" if gaps else "-",
                                f"{statistics.fmean(steps):.0f}" if steps else "-"]))
    for a in names[1:]:
        if objective in acc:
            label = "RadReg" if a.endswith("+radreg") else "centred RadReg"
            diff = stats.paired_two_level(acc[a], acc[objective])
            both = {p: {s: acc[a][p][s] - acc[objective][p][s] for s in acc[a][p] if s in acc[objective].get(p, {})}
                    for p in acc[a] if p in acc[objective]}
            rows.append(tables.row([f"{label} - plain (paired per pretraining seed)", stats.fmt_paired(diff, True),
                                    " / ".join(f"{100 * statistics.fmean(v.values()):+.1f}"
                                               for _, v in sorted(both.items()) if v), "", ""]))
    return rows


def provenance(settings: dict, results: Path) -> str:
    """Where a setting's numbers come from: the cells' count, dates and machines, and one command of each kind."""
    found = [c for kinds in settings.values() for arms in kinds.values() for runs in arms.values()
             for seeds in runs.values() for c in seeds.values()]
    pre = [cells.read_json(p) for p in sorted((results / "pretrain").glob("*/*.json"))]
    dates = sorted({c["date"] for c in found + pre})
    machines = sorted({c["machine"] for c in found + pre})
    seeds = sorted({c["seed"] for c in found})
    lines = [f"{len(pre)} pretrainings and {len(found)} downstream runs (fine-tuning seeds "
             f"{', '.join(map(str, seeds))}), {dates[0]} to {dates[-1]}, {'; '.join(machines)}."]
    if pre:
        lines.append(f"Command of one pretraining: `{pre[-1]['command']}`.")
    if found:
        lines.append(f"Command of one downstream run: `{found[-1]['command']}`.")
    lines.append("Rerun: `python benchmarks/radreg_retest.py --settings hetero --objectives context-encoder` "
                 "(finished cells are skipped).")
    return " ".join(lines)


def trivial(data: str = images.DEFAULT_DATA) -> str:
    """The trivial predictor on the reported cat and dog images: one class for every image (the labelled training
    images are balanced, 500 each, so the first: cat), i.e. that class's share of the held-out cat and dog images."""
    path = images.ROOT / data
    if not path.is_file():
        return "-"
    from gentune.data.splits import held_out_split, select_classes

    _, val = held_out_split(str(path), None, 5000, 0)
    val = select_classes(val, ["cat", "dog"])
    return f"{100 * float((val.labels == 0).mean()):.1f}% of the {len(val)} held-out cat and dog images"


def sections(data: dict | None = None, results: Path = OUT_RESULTS) -> dict[str, str]:
    data = load(results) if data is None else data
    out, base = {}, trivial() if data else "-"
    for budget, settings in data.items():
        for setting, kinds in settings.items():
            epochs = ", ".join(f"{o} {budget_flags(o, budget)[1]} epochs" for o in PRETRAIN
                               if any(a.split("+")[0] == o for arms in kinds.values() for a in arms))
            lines = [f"#### {SETTING_TITLES[setting]} ({budget} budget: {epochs})", "",
                     f"Trivial predictor: {base}.", ""]
            for kind, arms in kinds.items():
                lines += [f"**{kind}**", "", *tables.header(COLUMNS, ["---", "---:", "---:", "---:", "---:"])]
                for objective in PRETRAIN:
                    if any(arm_name(objective, v) in arms for v in ARMS.values()):
                        lines += table(arms, objective)
                lines.append("")
            lines += [f"![held-out accuracy against the downstream epoch, per arm](img/{plot_name(budget, setting)})",
                      "", "Curves: the mean over pretraining seeds of each seed's mean over its fine-tuning seeds; "
                      "band: one standard deviation of those per-seed curves; dotted: chance.", ""]
            lines.append(provenance({setting: kinds}, results / budget))
            out[f"radreg_retest/{budget}/{setting}"] = "\n".join(lines).rstrip()
    return out


def plot_name(budget: str, setting: str) -> str:
    """The file :func:`plots` writes for one budget and setting (docs/results.md links it as ``img/FILE``)."""
    return f"radreg_retest_{budget}_{setting}.png"


def seed_curves(runs: dict) -> dict[int, dict[float, float]]:
    """An arm's curve per pretraining seed: {pretraining seed: {epoch: mean held-out accuracy x100 over its
    fine-tuning seeds}} (:func:`curves.mean_curve`), from ``{pretraining seed: {seed: cell}}``."""
    return {p: curves.mean_curve(list(seeds.values())) for p, seeds in sorted(runs.items())}


def plots(data: dict, folder: Path = IMG) -> list[Path]:
    """One figure per budget and setting, a panel per kind (fine-tuning, linear probe, MLP probe), a line per arm:
    held-out accuracy against the downstream epoch, the mean over pretraining seeds of each seed's mean curve,
    with a band of one standard deviation of those per-seed curves (the spread the two-level error counts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = []
    for budget, settings in data.items():
        for setting, kinds in settings.items():
            names = [k for k in KINDS if k in kinds]
            fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), squeeze=False)
            for ax, kind in zip(axes[0], names):
                arms = [arm_name(o, v) for o in PRETRAIN for v in ARMS.values() if arm_name(o, v) in kinds[kind]]
                for i, arm in enumerate(arms):
                    per = seed_curves(kinds[kind][arm])
                    epochs = sorted(set.intersection(*(set(c) for c in per.values())))
                    mean = [statistics.fmean(c[e] for c in per.values()) for e in epochs]
                    sd = [statistics.stdev([c[e] for c in per.values()]) if len(per) > 1 else 0.0 for e in epochs]
                    ax.plot(epochs, mean, marker="o", ms=3, color=f"C{i}", label=f"{arm} ({len(per)} pretrainings)")
                    ax.fill_between(epochs, [m - d for m, d in zip(mean, sd)], [m + d for m, d in zip(mean, sd)],
                                    color=f"C{i}", alpha=0.15, lw=0)
                ax.axhline(50.0, color="grey", ls=":", lw=1)
                ax.set(title=f"{setting}, {kind}", xlabel="downstream epoch", ylabel="held-out accuracy (%)")
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7)
            fig.tight_layout()
            path = folder / plot_name(budget, setting)
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=110, metadata={"Software": None})
            plt.close(fig)
            drawn.append(path)
    return drawn


def make_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line, with the run's folders, seeds and step limit filled in."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=["all", "tune", "tune-center"], default="all")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    p.add_argument("--objectives", nargs="+", choices=list(PRETRAIN), default=list(PRETRAIN))
    p.add_argument("--budget", choices=["full", "cpu"], default="full")
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=["plain", "radreg"],
                   help="the arms to run (radreg-center runs --stage tune-center first if its choice is missing)")
    p.add_argument("--data", default=os.environ.get("GENTUNE_IMAGES", images.DEFAULT_DATA))
    p.add_argument("--smoke", action="store_true",
                   help="3-step runs, 2 seeds at each level, into a folder under runs/; print the blocks")
    images.add_jobs_flag(p)
    args = p.parse_args(argv)
    args.data = str(Path(args.data).resolve())
    args.pretrain_extra, args.finetune_extra, args.steps = [], [], []
    args.pretrain_seeds, args.seeds = PRETRAIN_SEEDS, SEEDS
    args.variants = [ARMS[a] for a in args.arms]
    args.results, args.runs = OUT_RESULTS / args.budget, OUT_RUNS / args.budget
    if args.smoke:
        tmp = Path(tempfile.mkdtemp(prefix="radreg_retest_", dir=images.ROOT / "runs"))
        args.results, args.runs = tmp / "results" / args.budget, tmp / "runs"
        args.steps, args.pretrain_seeds, args.seeds = ["--max-steps", "3"], PRETRAIN_SEEDS[:2], SEEDS[:2]
    return args


def main(argv: list[str] | None = None) -> int:
    args = make_args(argv)
    if args.stage == "tune":
        print(tune(args))
        return 0
    if args.stage == "tune-center":
        for objective in args.objectives:
            print(tune_center(args, objective))
        return 0
    run(args)
    if args.smoke:
        print(template.preview(sections(load(Path(args.results).parent), Path(args.results).parent)))
        return 0
    runner.render_results()
    return 0


if __name__ == "__main__":
    sys.exit(main())
