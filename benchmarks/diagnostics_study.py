"""Do the seed paper's quantities predict real generalization gaps? (issue 6)

For each checkpoint below, (1) fine-tune it with a small label budget (3 seeds) and measure the generalization
gap (training accuracy - held-out accuracy, recomputed from each run), and (2) measure, before any fine-tuning,
on 1,000 inputs of the downstream training pool (each seed fine-tunes on 200 of that pool), the
representation-induced Rademacher complexity of linear heads with the feature scale taken out (what RadReg
penalises; the raw complexity and its bound, which mostly rank feature norms, are kept as controls), and the
heterogeneity (MMD, domain classifier) between downstream and pretraining features. Report Spearman's rank
correlation of the mean gap with each quantity per modality (and pooled, marked: the two tasks' gaps are on
different scales).

Checkpoints (8): image, vit-tiny-p4 / conv-small on CIFAR-10: random init (vit), MAE full budget and 2-epoch
budget, context encoder full budget and 2-epoch budget, MAE + RadReg (from benchmarks/pretrain_grid.py and
benchmarks/radreg_grid.py runs); text: MiniLM (all-MiniLM-L6-v2) and a randomly initialised model of its shape.

Downstream tasks: image, cat vs dog with 100 labels per class (held-out images as in pretrain_grid.py); text,
SST-2 with 200 training sentences. Fine-tuning: 15 epochs (image) / 5 epochs (text), same hyper-parameters for
every checkpoint of a modality.

    python benchmarks/diagnostics_study.py           # resumable; needs the pretraining runs of the other grids
    python benchmarks/diagnostics_study.py --render  # only rebuild docs/results.md

Not run by CI. Results: benchmarks/results/diagnostics/; benchmarks/render_results.py puts them in docs/results.md
(this script's part: `sections()`) after every checkpoint and at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
from pathlib import Path

from _lib import cells, images, runner, tables
from _lib.paths import RESULTS as ALL_RESULTS
from _lib.paths import ROOT
from _lib.provenance import machine

RESULTS = ALL_RESULTS / "diagnostics"
RUNS = ROOT / "runs" / "diagnostics_study"
SEEDS = [13, 21, 42]
N_SIGMA = 2000  # sign vectors per estimate: a Monte Carlo standard error of about 0.0004 here
GLUE = "../shared/data/glue"
IMAGE_FT = ["--classes", "cat,dog", "--labels-per-class", "100", "--epochs", "15", "--batch-size", "64", "--lr",
            "1e-3", "--set", "weight_decay=0.05", "--set", "eval_every_epochs=0", "--set", "eval_batch_size=500"]
TEXT_FT = ["--task", "sst2", "--data-dir", GLUE, "--train-size", "200", "--epochs", "5", "--set",
           "eval_every_epochs=0"]


def checkpoints() -> dict[str, dict]:
    """name -> {"path", "kind", "pretrain_data"}; paths relative to the repository root."""
    pre = images.PLAIN_RUNS / "pretrain"
    rad = images.RADREG_RUNS
    return {
        "vit-random": {"path": RUNS / "random" / "vit-tiny-p4", "kind": "image"},
        "mae": {"path": pre / "mae" / "encoder", "kind": "image"},
        "mae-2ep": {"path": rad / "tune" / "pretrain" / "mae-short" / "encoder", "kind": "image"},
        "context-encoder": {"path": pre / "context-encoder" / "encoder", "kind": "image"},
        "context-encoder-2ep": {"path": RUNS / "pretrain" / "context-encoder-2ep" / "encoder", "kind": "image"},
        "mae+radreg": {"path": rad / "pretrain" / "mae+radreg-cat-dog" / "encoder", "kind": "image"},
        "minilm": {"path": "all-MiniLM-L6-v2", "kind": "text"},
        "minilm-random": {"path": RUNS / "random" / "minilm", "kind": "text"},
    }


def make_missing(args) -> None:
    """The random-init checkpoints, and the short context-encoder run."""
    import torch

    images.random_encoder("vit-tiny-p4", RUNS)
    target = RUNS / "random" / "minilm"
    if not target.exists():
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        from gentune.models.hf import resolve_model_path

        path = resolve_model_path("all-MiniLM-L6-v2")
        torch.manual_seed(0)
        AutoModel.from_config(AutoConfig.from_pretrained(path)).save_pretrained(target)
        AutoTokenizer.from_pretrained(path).save_pretrained(target)
    images.run_pretrain("context-encoder-2ep", "context-encoder", images.PRETRAIN["context-encoder"][0],
                        images.pretrain_flags("context-encoder", epochs="2"), args, RESULTS, RUNS,
                        need_encoder=not _done("context-encoder-2ep"))


def _done(name: str) -> bool:
    """Whether every cell of a checkpoint (its measurement and each seed's fine-tuning) is written."""
    return (RESULTS / "measure" / f"{name}.json").exists() and all(
        (RESULTS / "finetune" / f"{name}_seed{s}.json").exists() for s in SEEDS)


def restore(name: str, args) -> None:
    """The other grids' encoders are in runs/, which is not committed: when a later session lacks one that a
    missing cell needs, pretrain it again through its grid (same command and seed); a grid never run is left
    to its own script (the recipes: benchmarks/_lib/images.py)."""
    plain, radreg = (images.PLAIN_RESULTS, images.PLAIN_RUNS), (images.RADREG_RESULTS, images.RADREG_RUNS)
    if name in ("mae", "context-encoder") and (plain[0] / "pretrain" / f"{name}.json").exists():
        images.plain_pretrain(name, args, *plain, need_encoder=True)
    elif name == "mae-2ep" and (radreg[0] / "tune" / "pretrain" / f"{images.SHORT['mae']}.json").exists():
        images.short_pretrain("mae", args, *radreg, need_encoder=True)
    elif name == "mae+radreg" and (radreg[0] / "choice.json").exists():
        images.radreg_pretrain("cat-dog", cells.read_json(radreg[0] / "choice.json"), "mae", args, *radreg,
                               need_encoder=True)


def finetune(name: str, info: dict, seed: int, args) -> dict:
    cell = RESULTS / "finetune" / f"{name}_seed{seed}.json"
    if cell.exists():
        return cells.read_json(cell)
    from gentune.diagnose import run_gap

    out = RUNS / "finetune" / name / f"seed{seed}"
    path = str(info["path"])
    if info["kind"] == "image":
        cmd = ["finetune", "--task", "image-classification", "--data", args.data, "--init", path, *IMAGE_FT]
    else:
        cmd = ["finetune", "--model", path, *TEXT_FT]
    runner.gentune([*cmd, "--out", str(out.relative_to(ROOT)), "--seed", str(seed)])
    record = {"checkpoint": name, "seed": seed, "gap": run_gap(str(out / "best"))}
    cells.write_json(cell, record)
    return record


def measure(name: str, info: dict, args) -> dict:
    cell = RESULTS / "measure" / f"{name}.json"
    if cell.exists():
        return cells.read_json(cell)
    from gentune.diagnose import diagnose

    if info["kind"] == "image":
        # the cat-dog training pool of radreg_grid.py, held-out images excluded
        pool = images.downstream_pool("cat-dog", args.data, images.RADREG_RUNS)
        task, data, other = "image-classification", str(pool), args.data
    else:
        # no text "pretraining distribution" file in the task's format here: heterogeneity is image-only
        task, data, other = "sst2", f"{GLUE}/full/SST-2/train.json", None
    res = diagnose([str(info["path"])], task, data, str(RUNS / "measure" / name), other, max_examples=1000,
                   n_sigma=N_SIGMA, mlp=False)
    row = res["checkpoints"][0]
    het = row.get("heterogeneity") or {}
    # the scale-free estimate is the complexity; the raw one and its bound mostly rank feature norms (at fixed n
    # the bound is B * RMS||h|| / sqrt(n)), kept as a control
    record = {"checkpoint": name, "complexity": row["complexity"]["linear_normalized"]["estimate"],
              "complexity_raw": row["complexity"]["linear"]["estimate"],
              "bound": row["complexity"]["linear"]["bound"], "mmd2": het.get("mmd2"),
              "domain_accuracy": het.get("domain_accuracy"), "dim": row["dim"], "n": row["complexity"]["linear"]["n"],
              "n_sigma": N_SIGMA, "date": dt.date.today().isoformat(), "machine": machine()}
    cells.write_json(cell, record)
    return record


def load() -> dict:
    """Per checkpoint (in :func:`checkpoints` order) with a measurement and fine-tuning runs: the measurement, the
    mean gap, train and held-out accuracy over the seeds that have a gap, and their number."""
    rows = []
    for name in checkpoints():
        m = RESULTS / "measure" / f"{name}.json"
        runs = [r["gap"] for r in cells.read_cells(RESULTS / "finetune", f"{name}_seed*.json") if r.get("gap")]
        if m.exists() and runs:
            rows.append({**cells.read_json(m), "gap": statistics.fmean(r["accuracy_gap"] for r in runs),
                         "train": statistics.fmean(r["train"]["accuracy"] for r in runs),
                         "heldout": statistics.fmean(r["heldout"]["accuracy"] for r in runs), "seeds": len(runs)})
    return {"rows": rows}


def render(rows: list[dict]) -> str:
    """The checkpoints' gaps and quantities, Spearman's rho of each quantity with the gap (and with the held-out
    accuracy) per modality and pooled, and the protocol."""
    from scipy.stats import spearmanr

    lines = tables.header(["checkpoint", "accuracy gap (train - held-out)", "train acc.", "held-out acc.",
                           "R (linear, scale-free)", "R (linear, raw)", "bound (raw)", "MMD²", "domain acc."])
    for r in rows:
        het = [f"{r['mmd2']:.4f}", f"{r['domain_accuracy']:.3f}"] if r["mmd2"] is not None else ["-", "-"]
        lines.append(tables.row([r["checkpoint"], f"{100 * r['gap']:.1f} ({r['seeds']} seeds)",
                                 f"{100 * r['train']:.1f}", f"{100 * r['heldout']:.1f}", f"{r['complexity']:.4f}",
                                 f"{r.get('complexity_raw', float('nan')):.4f}", f"{r['bound']:.4f}", *het]))
    kinds = {n: i["kind"] for n, i in checkpoints().items()}
    for target, title in (("gap", "the gap"), ("heldout", "the held-out accuracy (not the issue's target; shown "
                                                          "because the theory bounds the risk too)")):
        lines += ["", *tables.header(["quantity", f"Spearman rho with {title}, images", "text",
                                      "all (two tasks pooled: on different scales)"])]
        for q in ("complexity", "complexity_raw", "bound", "mmd2", "domain_accuracy"):
            rhos = []
            for subset in ([r for r in rows if kinds[r["checkpoint"]] == "image"],
                           [r for r in rows if kinds[r["checkpoint"]] == "text"], rows):
                subset = [r for r in subset if r.get(q) is not None]
                rhos.append(f"{spearmanr([r[q] for r in subset], [r[target] for r in subset]).statistic:+.2f} "
                            f"(n={len(subset)})" if len(subset) >= 3 else "-")
            lines.append(tables.row([q, *rhos]))
    measured = [r for r in rows if r.get("date")]
    lines += ["", "- command: `python benchmarks/diagnostics_study.py`; "
              f"fine-tuning seeds {', '.join(map(str, SEEDS))}; "
              f"{rows[0]['n']} downstream inputs per estimate, {rows[0].get('n_sigma', 200)} sign vectors",
              f"- measured: {', '.join(sorted({r['date'] for r in measured})) or '-'}; "
              f"machine: {measured[0]['machine'] if measured else '-'}"]
    return "\n".join(lines)


def sections(data: dict) -> dict[str, str]:
    """This script's block of docs/results.md (template key ``diagnostics``), once a checkpoint has results."""
    return {"diagnostics": render(data["rows"])} if data["rows"] else {}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=images.DEFAULT_DATA)
    p.add_argument("--render", action="store_true", help="only rebuild docs/results.md")
    args = p.parse_args()
    args.pretrain_extra, args.finetune_extra, args.jobs = [], [], 1
    args.data = str((ROOT / args.data).resolve()) if not Path(args.data).is_absolute() else args.data
    if not args.render:
        make_missing(args)
        for name, info in checkpoints().items():
            if info["kind"] == "image" and not Path(info["path"]).exists() and not _done(name):
                restore(name, args)
            if info["kind"] == "image" and not Path(info["path"]).exists() and not _done(name):
                print(f"[miss] {name}: {info['path']} (run pretrain_grid.py / radreg_grid.py first)")
                continue
            ran = not _done(name)
            measure(name, info, args)
            for seed in SEEDS:
                finetune(name, info, seed, args)
            if ran:
                runner.render_results()
    runner.render_results()
    return 0


if __name__ == "__main__":
    sys.exit(main())
