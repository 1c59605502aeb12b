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
    python benchmarks/diagnostics_study.py --render

Not run by CI. Results: benchmarks/results/diagnostics/, docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import pretrain_grid as pg

ROOT = pg.ROOT
RESULTS = ROOT / "benchmarks" / "results" / "diagnostics"
RUNS = ROOT / "runs" / "diagnostics_study"
SEEDS = [13, 21, 42]
GLUE = "../shared/data/glue"
IMAGE_FT = ["--classes", "cat,dog", "--labels-per-class", "100", "--epochs", "15", "--batch-size", "64", "--lr",
            "1e-3", "--set", "weight_decay=0.05", "--set", "eval_every_epochs=0", "--set", "eval_batch_size=500"]
TEXT_FT = ["--task", "sst2", "--data-dir", GLUE, "--train-size", "200", "--epochs", "5", "--set",
           "eval_every_epochs=0"]


def checkpoints() -> dict[str, dict]:
    """name -> {"path", "kind", "pretrain_data"}; paths relative to the repository root."""
    pre = pg.RUNS / "pretrain"
    rad = ROOT / "runs" / "radreg_grid"
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

    from gentune.models.vision import create_encoder, save_encoder

    target = RUNS / "random" / "vit-tiny-p4"
    if not target.exists():
        torch.manual_seed(0)
        save_encoder(create_encoder("vit-tiny-p4"), target, {"objective": "none (random init)"})
    target = RUNS / "random" / "minilm"
    if not target.exists():
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        from gentune.models.hf import resolve_model_path

        path = resolve_model_path("all-MiniLM-L6-v2")
        torch.manual_seed(0)
        AutoModel.from_config(AutoConfig.from_pretrained(path)).save_pretrained(target)
        AutoTokenizer.from_pretrained(path).save_pretrained(target)
    encoder, flags = pg.PRETRAIN["context-encoder"]
    flags = list(flags)
    flags[flags.index("--epochs") + 1] = "2"
    pg.run_pretrain("context-encoder-2ep", "context-encoder", encoder, flags, args, RESULTS, RUNS,
                    need_encoder=not _done("context-encoder-2ep"))


def _done(name: str) -> bool:
    """Whether every cell of a checkpoint (its measurement and each seed's fine-tuning) is written."""
    return (RESULTS / "measure" / f"{name}.json").exists() and all(
        (RESULTS / "finetune" / f"{name}_seed{s}.json").exists() for s in SEEDS)


def restore(name: str, args) -> None:
    """The other grids' encoders are in runs/, which is not committed: when a later session lacks one that a
    missing cell needs, pretrain it again through its grid (same command and seed); a grid never run is left
    to its own script."""
    import radreg_grid as rg

    if name in ("mae", "context-encoder") and (pg.RESULTS / "pretrain" / f"{name}.json").exists():
        pg.pretrain_cell(name, args, need_encoder=True)
    elif name == "mae-2ep" and (rg.RESULTS / "tune" / "pretrain" / "mae-short.json").exists():
        rg.short_mae(args, need_encoder=True)
    elif name == "mae+radreg" and (rg.RESULTS / "choice.json").exists():
        rg.radreg_pretrain("cat-dog", json.loads((rg.RESULTS / "choice.json").read_text()), args, need_encoder=True)


def finetune(name: str, info: dict, seed: int, args) -> dict:
    cell = RESULTS / "finetune" / f"{name}_seed{seed}.json"
    if cell.exists():
        return json.loads(cell.read_text())
    from gentune.diagnose import run_gap

    out = RUNS / "finetune" / name / f"seed{seed}"
    path = str(info["path"])
    if info["kind"] == "image":
        cmd = ["finetune", "--task", "image-classification", "--data", args.data, "--init", path, *IMAGE_FT]
    else:
        cmd = ["finetune", "--model", path, *TEXT_FT]
    pg._run([*cmd, "--out", str(out.relative_to(ROOT)), "--seed", str(seed)])
    record = {"checkpoint": name, "seed": seed, "gap": run_gap(str(out / "best"))}
    pg._write(cell, record)
    return record


def measure(name: str, info: dict, args) -> dict:
    cell = RESULTS / "measure" / f"{name}.json"
    if cell.exists():
        return json.loads(cell.read_text())
    from gentune.diagnose import diagnose

    if info["kind"] == "image":
        import radreg_grid as rg

        pool = rg.downstream_pool("cat-dog", args)  # the cat-dog training pool, held-out images excluded
        task, data, other = "image-classification", str(pool), args.data
    else:
        # no text "pretraining distribution" file in the task's format here: heterogeneity is image-only
        task, data, other = "sst2", f"{GLUE}/full/SST-2/train.json", None
    res = diagnose([str(info["path"])], task, data, str(RUNS / "measure" / name), other, max_examples=1000,
                   n_sigma=200, mlp=False)
    row = res["checkpoints"][0]
    het = row.get("heterogeneity") or {}
    # the scale-free estimate is the complexity; the raw one and its bound mostly rank feature norms (at fixed n
    # the bound is B * RMS||h|| / sqrt(n)), kept as a control
    record = {"checkpoint": name, "complexity": row["complexity"]["linear_normalized"]["estimate"],
              "complexity_raw": row["complexity"]["linear"]["estimate"],
              "bound": row["complexity"]["linear"]["bound"], "mmd2": het.get("mmd2"),
              "domain_accuracy": het.get("domain_accuracy"), "dim": row["dim"], "n": row["complexity"]["linear"]["n"]}
    pg._write(cell, record)
    return record


def render() -> str:
    rows = []
    for name in checkpoints():
        m = RESULTS / "measure" / f"{name}.json"
        gaps = [json.loads(p.read_text()) for p in sorted((RESULTS / "finetune").glob(f"{name}_seed*.json"))]
        gaps = [g["gap"]["accuracy_gap"] for g in gaps if g.get("gap")]
        if m.exists() and gaps:
            rows.append({**json.loads(m.read_text()), "gap": statistics.fmean(gaps), "seeds": len(gaps)})
    if not rows:
        return ""
    from scipy.stats import spearmanr

    lines = ["## Do the diagnostics predict generalization gaps? (`benchmarks/diagnostics_study.py`)", "",
             "| checkpoint | accuracy gap (train - held-out) | R (linear, scale-free) | R (linear, raw) | bound (raw) "
             "| MMD² | domain acc. |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        het = (f"{r['mmd2']:.4f} | {r['domain_accuracy']:.3f}" if r["mmd2"] is not None else "- | -")
        lines.append(f"| {r['checkpoint']} | {100 * r['gap']:.1f} ({r['seeds']} seeds) | {r['complexity']:.4f} | "
                     f"{r.get('complexity_raw', float('nan')):.4f} | {r['bound']:.4f} | {het} |")
    lines += ["", "| quantity | Spearman rho with the gap, images | text | all (two tasks pooled: gaps on different "
              "scales) |", "| --- | --- | --- | --- |"]
    kinds = {n: i["kind"] for n, i in checkpoints().items()}
    for q in ("complexity", "complexity_raw", "bound", "mmd2", "domain_accuracy"):
        cells = []
        for subset in ([r for r in rows if kinds[r["checkpoint"]] == "image"],
                       [r for r in rows if kinds[r["checkpoint"]] == "text"], rows):
            subset = [r for r in subset if r.get(q) is not None]
            cells.append(f"{spearmanr([r[q] for r in subset], [r['gap'] for r in subset]).statistic:+.2f} "
                         f"(n={len(subset)})" if len(subset) >= 3 else "-")
        lines.append(f"| {q} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=pg.DEFAULT_DATA)
    p.add_argument("--render", action="store_true")
    args = p.parse_args()
    args.pretrain_extra, args.finetune_extra = [], []
    args.data = str((ROOT / args.data).resolve()) if not Path(args.data).is_absolute() else args.data
    if not args.render:
        make_missing(args)
        for name, info in checkpoints().items():
            if info["kind"] == "image" and not Path(info["path"]).exists() and not _done(name):
                restore(name, args)
            if info["kind"] == "image" and not Path(info["path"]).exists() and not _done(name):
                print(f"[miss] {name}: {info['path']} (run pretrain_grid.py / radreg_grid.py first)")
                continue
            measure(name, info, args)
            for seed in SEEDS:
                finetune(name, info, seed, args)
            pg._write_doc()
    pg._write_doc()
    return 0


if __name__ == "__main__":
    sys.exit(main())
