"""PointContrast on ModelNet10 (issue 22): contrastive pretraining of PointNet and DGCNN with PointInfoNCE and the
hardest-contrastive loss, then a linear probe and fine-tuning at 1%, 5%, 10% and 100% of the training labels,
against the same backbone from scratch.

Data: ../shared/data/modelnet10/modelnet10_points1024_train.npz (3,984 shapes; or $GENTUNE_POINTS). Every run
holds out the same VAL_SIZE shapes (split_seed 0, stratified); pretraining never sees them, and they are what is
reported. Choices (the learning rates, the budgets) were fixed before any run and none is tuned on them. Pretraining
is seeded like fine-tuning: seed s's fine-tuning starts from seed s's pretraining, so pretraining's randomness is in
the spread.

Phases, in order (one JSON cell per run under benchmarks/results/points/, finished cells are skipped, so the grid
spans sessions):

    python benchmarks/point_grid.py cost       # the loop's overhead: the views' time against a whole step
    python benchmarks/point_grid.py pretrain   # backbone x loss x seed
    python benchmarks/point_grid.py downstream # (scratch | backbone x loss) x probe|finetune x budget x seed
    python benchmarks/point_grid.py all
    python benchmarks/point_grid.py --dry-run
    python benchmarks/point_grid.py all --seeds 0 --jobs 8   # a GPU machine (benchmarks/device/run.sh): one seed
                                                             # a call, its pretrainings and their cells together
    python benchmarks/point_grid.py --render

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

RESULTS = ALL_RESULTS / "points"
RUNS = ROOT / "runs" / "points"
DATA = Path(os.environ.get("GENTUNE_POINTS", ROOT.parent / "shared" / "data" / "modelnet10" /
                           "modelnet10_points1024_train.npz"))
BACKBONES = {"pointnet": [], "dgcnn": ["--set", "model_options.k=10"]}
LOSSES = ["point-contrast", "hardest-contrastive"]
SEEDS = [0, 1, 2, 3, 4]
BUDGETS = ["0.01", "0.05", "0.1", "1"]
MODES = ["probe", "finetune"]
VAL_SIZE = 400
# pretraining: about 30 minutes of 2 CPU cores per run, by the cost phase's step times (2026-12-02: PointNet 0.45 s
# for 32 shapes, DGCNN k=10 2.45 s for 16)
PRETRAIN = {"pointnet": {"max_steps": 4000, "batch": 32, "lr": "1e-3"},
            "dgcnn": {"max_steps": 700, "batch": 16, "lr": "1e-3"}}
# downstream: epochs over the budget's shapes, at least MIN_STEPS steps, at most MAX_STEPS
DOWNSTREAM = {"epochs": 50, "batch": 32, "min_steps": 100, "max_steps": 2000,
              "lr": {"probe": "1e-2", "finetune": "1e-3"}}


def _rel(p: Path) -> str:
    return os.path.relpath(p, ROOT)


def pretrain_dir(backbone: str, loss: str, seed: int) -> Path:
    return RUNS / "pretrain" / backbone / loss / f"seed{seed}"


def pretrain_cells(backbones, losses, seeds):
    for seed in seeds:
        for backbone in backbones:
            for loss in losses:
                p = PRETRAIN[backbone]
                out = pretrain_dir(backbone, loss, seed)
                argv = ["pretrain", "--objective", loss, "--data", str(DATA), "--model", backbone, "--max-steps",
                        str(p["max_steps"]), "--batch-size", str(p["batch"]), "--lr", p["lr"], "--seed", str(seed),
                        "--out", _rel(out), "--set", f"val_size={VAL_SIZE}", *BACKBONES[backbone][1:]]
                yield (RESULTS / "pretrain" / backbone / loss / f"seed{seed}.json", argv,
                       {"phase": "pretrain", "backbone": backbone, "loss": loss, "seed": seed}, out)


def phase_pretrain(backbones, losses, seeds, jobs: int = 1, redo: bool = False) -> None:
    runner.parallel([lambda c=c: runner.run_cell(*c, keep=True, jobs=jobs, redo=redo)
                     for c in pretrain_cells(backbones, losses, seeds)], jobs)


def _train_shapes(budget: str) -> int:
    """Training shapes at a label budget (per class, at least one each): counted from the file's labels."""
    sys.path.insert(0, str(ROOT / "src"))
    from gentune.data.images import split
    from gentune.data.points import label_fraction, load_points

    train, _ = split(load_points(DATA), VAL_SIZE, 0)
    return len(train) if budget == "1" else len(label_fraction(train, float(budget), 0))


def downstream_cells(backbones, losses, seeds, budgets, modes):
    arms = [("scratch", b) for b in backbones] + [(loss, b) for b in backbones for loss in losses]
    for seed in seeds:
        for budget in budgets:
            n = _train_shapes(budget)
            steps = min(max(-(-n // DOWNSTREAM["batch"]) * DOWNSTREAM["epochs"], DOWNSTREAM["min_steps"]),
                        DOWNSTREAM["max_steps"])
            for arm, backbone in arms:
                for mode in modes:
                    name = f"{arm}_{mode}_b{budget}_seed{seed}"
                    out = RUNS / "downstream" / backbone / name
                    init = "none" if arm == "scratch" else _rel(pretrain_dir(backbone, arm, seed))
                    argv = ["finetune", "--task", "point-classification", "--data", str(DATA), "--init", init,
                            "--model", backbone, "--max-steps", str(steps), "--batch-size", str(DOWNSTREAM["batch"]),
                            "--lr", DOWNSTREAM["lr"][mode], "--seed", str(seed), "--out", _rel(out), "--set",
                            f"val_size={VAL_SIZE}", "eval_every_epochs=0", "save_model=false",
                            *([] if budget == "1" else [f"label_fraction={budget}"]),
                            *(BACKBONES[backbone][1:] if arm == "scratch" else [])]
                    if mode == "probe":
                        argv.insert(argv.index("--out"), "--linear-probe")
                    record = {"phase": "downstream", "backbone": backbone, "arm": arm, "mode": mode,
                              "budget": budget, "seed": seed, "train_shapes": n, "steps": steps}
                    yield RESULTS / "downstream" / backbone / f"{name}.json", argv, record, out


def phase_downstream(backbones, losses, seeds, budgets, modes, jobs: int = 1) -> None:
    todo = [c for c in downstream_cells(backbones, losses, seeds, budgets, modes) if not c[0].exists()]
    # the encoders these cells start from, pretrained first (again, if this machine's runs/ lacks them)
    need = sorted({(r["backbone"], r["arm"], r["seed"]) for _, _, r, _ in todo if r["arm"] != "scratch"
                   and not (pretrain_dir(r["backbone"], r["arm"], r["seed"]) / "encoder").is_dir()})
    for backbone, loss, seed in need:
        if (RESULTS / "pretrain" / backbone / loss / f"seed{seed}.json").exists():
            print(f"[redo] pretrain {backbone} {loss} seed {seed}: its encoder is not in runs/ any more", flush=True)
    runner.parallel([lambda n=n: phase_pretrain([n[0]], [n[1]], [n[2]], jobs, redo=True) for n in need], jobs)
    runner.parallel([lambda c=c: downstream_run(*c, jobs) for c in
                     downstream_cells(backbones, losses, seeds, budgets, modes)], jobs)


def downstream_run(cell: Path, argv: list[str], record: dict, out: Path, jobs: int) -> None:
    """One downstream cell (a finished one is checked against this command and skipped by run_cell), recording
    which encoder weights it started from: a redone pretraining (its runs/ gone) is not bit-identical on a GPU,
    and the hash shows which cells came from which."""
    if record["arm"] != "scratch" and not cell.exists():
        weights = pretrain_dir(record["backbone"], record["arm"], record["seed"]) / "encoder" / "model.safetensors"
        record = {**record, "init_sha256": cells.file_sha256(weights)}
    runner.run_cell(cell, argv, record, out, jobs=jobs)


def phase_cost(steps: int = 10) -> None:
    """The loop's overhead: drawing the two views (on the CPU, per shape) against a whole optimizer step, for each
    backbone and loss, side by side in one process; the target is under 10% of the step."""
    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from gentune.data.points import load_points
    from gentune.models.points import create_point_encoder
    from gentune.registry import create

    cell = RESULTS / "cost.json"
    if cells.finished(cell, "cost"):
        return
    shapes = torch.from_numpy(load_points(DATA).points[:64])
    rows = []
    for backbone in BACKBONES:
        for loss in LOSSES:
            torch.manual_seed(0)
            objective = create("objective", loss)
            options = {"k": 10} if backbone == "dgcnn" else {}
            model = objective.build(create_point_encoder(backbone, **options))
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            batch = {"points": shapes[:PRETRAIN[backbone]["batch"]]}
            views, total = [], []
            for step in range(steps + 1):
                t0 = time.perf_counter()
                objective.views(batch["points"])
                t1 = time.perf_counter()
                result = objective(model, batch)
                result["loss"].backward()
                opt.step()
                opt.zero_grad()
                t2 = time.perf_counter()
                if step:  # the first step warms up
                    views.append(t1 - t0)
                    total.append(t2 - t1)  # the step itself draws its own views: they are inside this time
            rows.append({"backbone": backbone, "loss": loss, "batch": len(batch["points"]),
                         "views_seconds": statistics.median(views), "step_seconds": statistics.median(total),
                         "share": statistics.median(views) / statistics.median(total)})
            print(f"[cost] {rows[-1]}")
    cells.write_json(cell, {"rows": rows, "steps": steps, "machine": machine(), "commit": commit(),
                            "date": dt.date.today().isoformat()})


def remaining(backbones, losses, seeds, budgets, modes) -> dict[str, int]:
    pre = sum(not (RESULTS / "pretrain" / b / loss / f"seed{s}.json").exists() for s in seeds for b in backbones
              for loss in losses)
    down = sum(not c.exists() for c, *_ in downstream_cells(backbones, losses, seeds, budgets, modes))
    return {"cost": int(not (RESULTS / "cost.json").exists()), "pretrain": pre, "downstream": down}


# ------------------------------------------------------------------------------------------------- tables


def load() -> dict:
    cost = RESULTS / "cost.json"
    return {"pretrain": cells.read_cells(RESULTS / "pretrain", "*/*/*.json"),
            "downstream": cells.read_cells(RESULTS / "downstream", "*/*.json"),
            "cost": cells.read_json(cost) if cost.is_file() else None}


def _acc(data: dict, backbone: str, arm: str, mode: str, budget: str) -> dict[int, float]:
    return {c["seed"]: c["summary"]["final_dev"]["accuracy"] for c in data["downstream"]
            if (c["backbone"], c["arm"], c["mode"], c["budget"]) == (backbone, arm, mode, budget)}


def trivial_line() -> str:
    """The trivial predictor's score on the reported split: always the training set's majority class."""
    if not DATA.is_file():
        return "The trivial predictor: - (no data at $GENTUNE_POINTS)."
    import numpy as np

    sys.path.insert(0, str(ROOT / "src"))
    from gentune.data.images import split
    from gentune.data.points import load_points

    train, val = split(load_points(DATA), VAL_SIZE, 0)
    major = int(np.bincount(train.labels).argmax())
    share = float((val.labels == major).mean())
    return (f"The trivial predictor (always the training majority class, {train.classes[major]}) scores "
            f"{100 * share:.1f}% on the {len(val)} validation shapes; its mean class accuracy is "
            f"{100 / len(train.classes):.1f}%.")


def sections(data: dict) -> dict[str, str]:
    lines = []
    for backbone in BACKBONES:
        for mode in MODES:
            lines += [f"**{backbone}, {'linear probe' if mode == 'probe' else 'fine-tuning'}** (validation accuracy, "
                      "mean ± std over seeds; paired difference against scratch with its standard error)", ""]
            lines += tables.header(["arm", *[f"{float(b):.0%} labels" for b in BUDGETS]],
                                   ["---", *["---:"] * len(BUDGETS)])
            for arm in ["scratch", *LOSSES]:
                row = [arm]
                for budget in BUDGETS:
                    got = _acc(data, backbone, arm, mode, budget)
                    cell = stats.fmt(list(got.values())) if got else "-"
                    if arm != "scratch" and got:
                        scratch = _acc(data, backbone, "scratch", mode, budget)
                        cell += f" ({stats.fmt_paired(stats.paired(got, scratch))})"
                    row.append(cell)
                lines.append(tables.row(row))
            lines.append("")
    lines.append(trivial_line())
    cost = data["cost"]
    if cost:
        rows = tables.header(["backbone", "loss", "batch", "views (s)", "step (s)", "views / step"],
                             ["---", "---", "---:", "---:", "---:", "---:"])
        rows += [tables.row([r["backbone"], r["loss"], str(r["batch"]), f"{r['views_seconds']:.3f}",
                             f"{r['step_seconds']:.3f}", f"{100 * r['share']:.1f}%"]) for r in cost["rows"]]
        rows += ["", f"Median of {cost['steps']} steps; machine: {cost['machine']}; {cost['date']}, commit "
                     f"{cost['commit']}."]
        cost_block = "\n".join(rows)
    else:
        cost_block = "_Not measured yet: `python benchmarks/point_grid.py cost`._"
    n = len(data["downstream"])
    return {"points/table": "\n".join(lines) if n else "_No downstream run has finished yet: no accuracy is claimed._",
            "points/cost": cost_block}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", nargs="?", choices=["cost", "pretrain", "downstream", "all"])
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    p.add_argument("--losses", nargs="+", default=LOSSES, choices=LOSSES)
    p.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    p.add_argument("--budgets", nargs="+", default=BUDGETS, choices=BUDGETS)
    p.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="runs at once (a GPU machine's cores)")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--render", action="store_true")
    args = p.parse_args()
    if args.render:
        runner.render_results()
        return 0
    if args.dry_run or args.phase is None:
        print(remaining(args.backbones, args.losses, args.seeds, args.budgets, args.modes))
        return 0
    for phase in (["cost", "pretrain", "downstream"] if args.phase == "all" else [args.phase]):
        if phase == "cost":
            phase_cost()
        elif phase == "pretrain":
            phase_pretrain(args.backbones, args.losses, args.seeds, args.jobs)
        else:
            phase_downstream(args.backbones, args.losses, args.seeds, args.budgets, args.modes, args.jobs)
    runner.render_results()
    return 0


if __name__ == "__main__":
    sys.exit(main())
