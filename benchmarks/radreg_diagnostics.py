"""Do the seed paper's quantities rank the gaps of heads on fixed representations? (issue 24, item 5)

Deng, Hong, Zhou, Mahdavi (AISTATS 2024) bound the generalization gap of a head trained on a fixed
representation, so the gaps here are those of a linear probe and of an MLP probe (frozen encoder; cat vs dog, 500
labels per class, the recipe of benchmarks/radreg_retest.py), each the mean over the fine-tuning seeds of the run's
own ``generalization_gap`` (``eval_train``: the final model's training accuracy minus its accuracy on the held-out
cat and dog images; evaluated every 2 epochs, but the gap is the final model's, selected on nothing).

Checkpoints: every encoder of the re-test (each budget it has cells for: MAE and the context encoder, with and
without RadReg, pretrained on 8 classes or on all 10, each pretraining seed) and two randomly initialised encoders
(vit-tiny-p4 and conv-small, seed 0, probed here with the same recipe and seeds; the ViT pools as the re-test's
MAE encoders do, by its tuning stage's choice). A re-test encoder is measured once it has probe cells; probe cells
written before ``eval_train`` existed have no gap and are named, not counted.

Quantities, measured once per checkpoint (``gentune.diagnose``: 1,000 images of the cat-dog training pool, the
held-out images excluded; 2,000 sign vectors): the representation-induced Rademacher complexity of linear heads
with the feature scale taken out (what RadReg penalises), the raw estimate and its bound, the MLP-head estimate
(diagnose's: on a seeded 512 of those images, 32 sign vectors);
heterogeneity (MMD², domain-classifier accuracy) between that pool and 1,000 training images of the checkpoint's
pretraining distribution (the 8 classes, or all 10; random init: all 10); the features' spread on the pool
(``gentune.diagnostics.feature_spread``: the share of their squared norm that varies between images, and its
effective rank), since RadReg can meet its penalty by mapping the pool to nearly one point. Reported: Spearman's
rho of each quantity with each probe's gap over the checkpoints, with a 95% percentile bootstrap interval
(checkpoints resampled, 2,000 times).

    python benchmarks/radreg_diagnostics.py           # after radreg_retest.py (any budget); resumable
    python benchmarks/radreg_diagnostics.py --render  # only rebuild docs/results.md
    python benchmarks/radreg_diagnostics.py --only 'full.hetero.*_p2'   # some checkpoints only
    python benchmarks/radreg_diagnostics.py --smoke DIR   # on a radreg_retest.py --smoke folder: 3-step probes,
                                                          # 200 sign vectors, a printed preview

Cells: benchmarks/results/radreg_diagnostics/{measure,finetune}/; benchmarks/render_results.py renders them
(``sections()``). Not run by CI.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import math
import os
import statistics
import sys
from pathlib import Path

import radreg_estimator as estimator
import radreg_retest as retest
from _lib import cells, images, runner, tables, template
from _lib.images import PRETRAIN
from _lib.paths import RESULTS as ALL_RESULTS
from _lib.paths import ROOT, RUNS as ALL_RUNS
from _lib.provenance import machine

OUT_RESULTS, OUT_RUNS = ALL_RESULTS / "radreg_diagnostics", ALL_RUNS / "radreg_diagnostics"
PROBES = ("linear-probe", "mlp-probe")
RANDOM = {"vit-tiny-p4": "mae", "conv-small": "context-encoder"}  # random init -> the objective whose lr it uses
N_SIGMA, N_IMAGES, BOOTSTRAP = 2000, 1000, 2000
SUPREMUM_EVERY = 50  # a RadReg checkpoint pretrained again here logs the supremum this often (target 1 at length)
QUANTITIES = {"penalty": "RadReg penalty (n=16)", "penalty_centred": "centred (n=16)",
              "complexity": "R (linear, scale-free)", "complexity_raw": "R (linear, raw)", "bound": "bound (raw)",
              "complexity_mlp": "R (MLP)", "mmd2": "MMD²", "domain_accuracy": "domain acc.", "spread": "spread",
              "effective_rank": "eff. rank"}


def retest_checkpoints(budget: str, results: Path) -> dict[str, dict]:
    """The re-test's encoders of one budget that have probe cells: name -> info, by pretraining seed first (so that
    a run cut short has measured whole pairs: plain and RadReg of the same seed)."""
    out = {}
    for cell in sorted((results / "pretrain").glob("*/*.json"), key=lambda c: (c.stem.rsplit("_p", 1)[::-1], c)):
        setting, (arm, pseed) = cell.parent.name, cell.stem.rsplit("_p", 1)
        objective = arm.split("+")[0]
        variant = arm[len(objective):]  # "", "+radreg" or "+radreg-center" (radreg_retest.ARMS)
        patterns = {k: f"{setting}.{k}.{arm}_p{pseed}_seed*.json" for k in PROBES}
        if any(any((results / "finetune" / retest.TASK).glob(p)) for p in patterns.values()):
            out[f"{budget}.{setting}.{arm}_p{pseed}"] = {
                "budget": budget, "setting": setting, "objective": objective, "radreg": bool(variant),
                "variant": variant,
                "pseed": int(pseed), "cells": patterns}
    return out


def sample_folder(classes: list[str] | None, exclude: list[str], data: str, runs: Path) -> Path:
    """Up to N_IMAGES training images (the reported held-out images excluded; seeded), of ``classes`` or all but
    ``exclude``, written once as an image folder: the pretraining distribution that heterogeneity compares to."""
    import numpy as np

    from gentune.data.splits import held_out_split, select_classes

    folder = runs / "pretraining-sample" / ("all" if not exclude else "without-" + "-".join(exclude))
    if (folder / ".complete").exists():
        return folder
    train, _ = held_out_split(data, None, 5000, 0)
    keep = [c for c in (classes or train.classes) if c not in exclude]
    train = select_classes(train, keep)
    pick = np.sort(np.random.default_rng(0).choice(len(train), min(N_IMAGES, len(train)), replace=False))
    return images.write_image_folder(folder, train, keep, pick)


def measure(name: str, encoder: Path, setting: str, args) -> dict:
    cell = Path(args.results) / "measure" / f"{name}.json"
    pool = images.downstream_pool(retest.TASK, args.data, images.RADREG_RUNS)
    if cell.exists():
        return cells.read_json(cell)
    from gentune.diagnose import diagnose

    other = sample_folder(None, ["cat", "dog"] if setting == "hetero" else [], args.data, Path(args.runs))
    res = diagnose([str(encoder)], "image-classification", str(pool), str(Path(args.runs) / "measure" / name),
                   str(other), max_examples=N_IMAGES, n_sigma=args.n_sigma, mlp=True)
    row = res["checkpoints"][0]
    het, cx = row.get("heterogeneity") or {}, row["complexity"]
    record = {"checkpoint": name, "complexity": cx["linear_normalized"]["estimate"],
              "complexity_raw": cx["linear"]["estimate"], "bound": cx["linear"]["bound"],
              "complexity_mlp": (cx.get("mlp") or {}).get("estimate"), "mmd2": het.get("mmd2"),
              "domain_accuracy": het.get("domain_accuracy"), "spread": row["spread"]["spread"],
              "effective_rank": row["spread"]["effective_rank"], "n": cx["linear"]["n"], "n_sigma": args.n_sigma,
              "pretraining_sample": os.path.relpath(other, ROOT), "encoder_sha256": encoder_sha256(encoder),
              "date": dt.date.today().isoformat(),
              "machine": machine()}
    record.update(penalties(encoder, pool, Path(args.runs) / "measure" / name))
    cells.write_json(cell, record)
    return record


def penalties(encoder: Path, pool: Path, measured: Path) -> dict:
    """RadReg's own penalty on the checkpoint (the features diagnose cached), uncentred and centred."""
    from gentune.diagnose import FEATURES, extract, load_representation

    feats, _ = extract(load_representation(str(encoder)), "image-classification", str(pool), measured / FEATURES,
                       N_IMAGES, 0)
    return {f"penalty{'_centred' if center else ''}": batch_penalty(feats, center=center)
            for center in (False, True)}


def batch_penalty(features, n: int = 16, batches: int = 250, m: int = 4, center: bool = False,
                  seed: int = 0) -> float | None:
    """What RadReg penalises, at its operating point: the MLP-head sup (B = 1) on batches of ``n`` of these
    features, scale taken out (and the batch mean first with ``center``), averaged over ``batches`` seeded batches
    and ``m`` sign vectors each; the sup by the long single-unit search the run's ``supremum_every`` logs.
    None when centring leaves nothing (identical features: 0/0, the centred penalty is undefined)."""
    import torch

    from gentune.diagnostics.rademacher import normalize_scale, rademacher_signs, unit_supremum

    h_all = torch.as_tensor(features, dtype=torch.float32)
    g, values = torch.Generator().manual_seed(seed), []
    for _ in range(batches):
        h = h_all[torch.randperm(len(h_all), generator=g)[:n]]
        if center:
            centred = h - h.mean(0, keepdim=True)
            if centred.norm() <= 1e-5 * h.norm():
                return None
            h = centred
        values.append(unit_supremum(normalize_scale(h), rademacher_signs(m, n, g), generator=g)[0].mean())
    return float(torch.stack(values).mean())


def encoder_sha256(encoder: Path) -> str | None:
    weights = Path(encoder) / "model.safetensors"
    return cells.file_sha256(weights) if weights.is_file() else None


def probed_shas(folder: Path, patterns: dict[str, str]) -> set:
    """The encoders (``init_sha256``) a checkpoint's probe cells were computed from."""
    return {c.get("init_sha256") for p in patterns.values() for c in cells.read_cells(folder, p)}


def checkpoint_encoder(name: str, info: dict, results: Path, runs: Path, rargs, args) -> Path:
    """The encoder of a re-test checkpoint to measure: the re-test's own while runs/ still has it; else one
    pretrained here with the re-test's command and seed (into this script's folders, so the re-test's record is
    untouched). A CPU rerun is not bit-identical (the float sums depend on the thread count and the kernels), so
    such an encoder gets probes of its own: :func:`own_probes`."""
    arm = name.split(".", 2)[2]
    encoder = runs / "pretrain" / info["setting"] / arm / "encoder"
    if encoder.exists():
        return encoder
    objective = info["objective"]
    flags = retest.pretrain_flags(info["setting"], objective, info["variant"], info["pseed"], rargs)
    if info["variant"]:  # the same run (its own generator: tests/test_radreg.py), with the supremum logged
        flags += ["--set", f"radreg.supremum_every={args.supremum_every}"]
    cell = images.run_pretrain(f"{info['budget']}/{info['setting']}/{arm}", objective, PRETRAIN[objective][0],
                               flags, rargs, Path(args.results), Path(args.runs), need_encoder=True)
    out = Path(args.runs) / "pretrain" / info["budget"] / info["setting"] / arm
    record = Path(args.results) / "supremum" / f"{name}.json"
    if info["variant"] and not record.exists():
        made = cells.read_json(cell)
        cells.write_json(record, {"checkpoint": name, "steps": made["summary"]["train_steps"],
                                  "every": args.supremum_every,
                                  "command": made["command"], "date": made["date"], "machine": made["machine"],
                                  "trace": estimator.trace(out)})
    return out / "encoder"


def own_probes(name: str, info: dict, encoder: Path, rargs, args) -> None:
    """The re-test's probes (recipe, rate, seeds) on ``encoder``: ``finetune/cat-dog/KIND.NAME_seedS.json``."""
    for kind in PROBES:
        for seed in args.seeds:
            images.run_finetune(retest.TASK, f"{kind}.{name}", seed, encoder, PRETRAIN[info["objective"]][0], args,
                                Path(args.results), Path(args.runs),
                                extra=retest.downstream_flags(info["objective"], kind, rargs))


def probe_random(model: str, kind: str, seed: int, args) -> Path:
    """A probe of a random-init encoder: the re-test's downstream recipe, the lr of the objective that pretrains
    that encoder."""
    init = images.random_encoder(model, Path(args.runs))
    pool = ("--set", f"pool={retest.pooling(args.retest_args)}") if model.startswith("vit") else ()
    extra = (*retest.KINDS[kind], "--lr", images.chosen_lr(retest.TASK, RANDOM[model]), "--set",
             f"eval_every_epochs={retest.EVAL_EVERY}", "--set", "eval_train=true", *pool, *args.steps)
    return images.run_finetune(retest.TASK, f"{kind}.random-{model}", seed, init, model, args, Path(args.results),
                               Path(args.runs), extra=extra)


REFERENCE = {"identical": "every image the same feature vector",
             "two points": "two feature vectors, half the images each",
             "isotropic": "independent standard normal features",
             "isotropic + offset": "the same plus 3 in every coordinate",
             "non-negative": "the isotropic features through a ReLU (as the context encoder's are)",
             "one-hot": "a distinct basis vector per image"}


def reference_features(kind: str, n: int = 1000, d: int = 256):
    import numpy as np

    rng = np.random.default_rng(0)
    return {"identical": lambda: np.tile(rng.normal(size=(1, d)), (n, 1)),
            "two points": lambda: np.repeat(rng.normal(size=(2, d)), n // 2, 0),
            "isotropic": lambda: rng.normal(size=(n, d)),
            "isotropic + offset": lambda: rng.normal(size=(n, d)) + 3.0,
            "non-negative": lambda: np.maximum(rng.normal(size=(n, d)), 0.0),
            "one-hot": lambda: np.eye(n, max(d, n))}[kind]()


def reference(args) -> Path:
    """RadReg's penalty (n = 16, B = 1) on made-up features of known geometry (d = 256, 1,000 'images'): how much
    room the penalty has, and which geometries it prefers. ``results/reference.json``."""
    path = Path(args.results) / "reference.json"
    if not path.exists():
        rows = {k: {"penalty": batch_penalty(reference_features(k)),
                    "penalty_centred": batch_penalty(reference_features(k), center=True)} for k in REFERENCE}
        cells.write_json(path, {"rows": rows, "date": dt.date.today().isoformat(), "machine": machine(),
                                "command": "python benchmarks/radreg_diagnostics.py"})
    return path


def run(args) -> None:
    """The re-test's checkpoints first (each pretrained again if runs/ lacks its encoder: the long part), then the
    random-init ones and their probes."""
    reference(args)
    for budget, (results, runs) in args.retest.items():
        rargs = retest.make_args(["--budget", budget, "--data", args.data, "--jobs", str(args.jobs)])
        rargs.results, rargs.runs, rargs.steps = results, runs, args.steps
        for name, info in retest_checkpoints(budget, results).items():
            if (Path(args.results) / "measure" / f"{name}.json").exists() or not selected(name, args):
                continue
            encoder = checkpoint_encoder(name, info, results, runs, rargs, args)
            if encoder_sha256(encoder) not in probed_shas(results / "finetune" / retest.TASK, info["cells"]):
                own_probes(name, info, encoder, rargs, args)  # before measure: a measured one is complete
            measure(name, encoder, info["setting"], args)
    for model in RANDOM:
        if not selected(f"random-{model}", args):
            continue
        for kind in PROBES:
            for seed in args.seeds:
                probe_random(model, kind, seed, args)
        measure(f"random-{model}", images.random_encoder(model, Path(args.runs)), "same", args)


def selected(name: str, args) -> bool:
    """Whether ``--only`` (shell-style patterns; none: every checkpoint) names the checkpoint."""
    return not args.only or any(fnmatch.fnmatchcase(name, p) for p in args.only)


def gaps(folder: Path, pattern: str) -> tuple[float | None, int, float | None]:
    """The mean probe gap (percentage points) over a checkpoint's fine-tuning seeds, their number, and the mean
    held-out accuracy (x100) of those runs; a cell without a gap (written before eval_train) is named on stderr."""
    values, accuracy = [], []
    for c in cells.read_cells(folder, pattern):
        gap = (c["summary"].get("generalization_gap") or {}).get("accuracy_gap")
        if gap is None:
            print(f"note: {c['arm']} seed {c['seed']}: no generalization_gap (made before eval_train; move the "
                  "cell away to run it again)", file=sys.stderr)
        else:
            values.append(100 * gap)
            accuracy.append(100 * c["summary"]["final_dev"]["accuracy"])
    if not values:
        return None, 0, None
    return statistics.fmean(values), len(values), statistics.fmean(accuracy)


def load(results: Path = OUT_RESULTS, retest_results: dict[str, Path] | None = None) -> dict:
    """One row per measured checkpoint with probe gaps: the measurement and each probe's mean gap, from the probe
    cells of the very encoder measured (its own probes when it was pretrained again here, else the re-test's)."""
    retest_results = retest_results or {b: retest.OUT_RESULTS / b for b in ("full", "cpu")}
    rows = []
    own = results / "finetune" / retest.TASK
    sources = {f"random-{m}": (own, {k: f"{k}.random-{m}_seed*.json" for k in PROBES}, "own") for m in RANDOM}
    for budget, folder in retest_results.items():
        for name, info in retest_checkpoints(budget, folder).items():
            mine = {k: f"{k}.{name}_seed*.json" for k in PROBES}
            sources[name] = ((own, mine, "own") if any(any(own.glob(p)) for p in mine.values())
                             else (folder / "finetune" / retest.TASK, info["cells"], "re-test"))
    for name, (folder, patterns, probes) in sources.items():
        m = results / "measure" / f"{name}.json"
        if not m.exists():
            continue
        row = cells.read_json(m) | {"probes": probes}
        shas = probed_shas(folder, patterns)
        if "encoder_sha256" in row and shas != {row["encoder_sha256"]}:
            print(f"note: {name}: its probe cells come from another encoder than the one measured; left out",
                  file=sys.stderr)
            continue
        for kind, pattern in patterns.items():
            row[kind], row[kind + "_seeds"], row[kind + "_accuracy"] = gaps(folder, pattern)
        if all(row[k] is not None for k in PROBES):
            rows.append(row)
    ref = results / "reference.json"
    return {"rows": rows, "supremum": cells.read_cells(results / "supremum"),
            "reference": cells.read_json(ref) if ref.exists() else None}


def spearman_interval(x: list[float], y: list[float], seed: int = 0) -> tuple[float, float, float]:
    """Spearman's rho and its 95% percentile bootstrap interval (pairs resampled; resamples where a side is
    constant are dropped)."""
    import numpy as np
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    rho = float(spearmanr(x, y).statistic)
    rng, rhos = np.random.default_rng(seed), []
    for _ in range(BOOTSTRAP):
        i = rng.integers(0, len(x), len(x))
        if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0:
            rhos.append(spearmanr(x[i], y[i]).statistic)
    lo, hi = (np.percentile(rhos, [2.5, 97.5]) if rhos else (math.nan, math.nan))
    return rho, float(lo), float(hi)


def render(rows: list[dict]) -> str:
    def num(v, digits=4):
        return "-" if v is None else f"{v:.{digits}f}"

    lines = tables.header(["checkpoint", "probes", "linear-probe gap (acc.)", "MLP-probe gap (acc.)",
                           *QUANTITIES.values()], ["---", "---", *["---:"] * (2 + len(QUANTITIES))])
    for r in rows:
        lines.append(tables.row([r["checkpoint"], r.get("probes", "re-test"),
                                 *[f"{r[k]:+.1f} ({r[k + '_accuracy']:.1f}; {r[k + '_seeds']})" for k in PROBES],
                                 *[num(r.get(q)) for q in QUANTITIES]]))
    lines += ["", *tables.header(["quantity", "Spearman rho with the linear-probe gap [95% bootstrap]",
                                  "with the MLP-probe gap"], ["---", "---:", "---:"])]
    for q, title in QUANTITIES.items():
        cols = []
        for kind in PROBES:
            have = [r for r in rows if r.get(q) is not None]
            if len(have) < 4:
                cols.append("-")
                continue
            rho, lo, hi = spearman_interval([r[q] for r in have], [r[kind] for r in have])
            cols.append(f"{rho:+.2f} [{lo:+.2f}, {hi:+.2f}] (n={len(have)})")
        lines.append(tables.row([title, *cols]))
    measured = sorted({r["date"] for r in rows})
    lines += ["", "- gaps: training minus held-out accuracy of the final probe, percentage points, mean over the",
              "  fine-tuning seeds (in brackets: the mean held-out accuracy, and the number of seeds)",
              "- probes: `re-test`: the re-test's own probe cells, on the very encoder measured; `own`: a random-init "
              "encoder, or a re-test checkpoint pretrained again here (same command and seed: runs/ is not "
              "committed, and a CPU rerun is not bit-identical), probed here with the re-test's recipe and seeds",
              f"- command: `python benchmarks/radreg_diagnostics.py`; {rows[0]['n']} downstream images per estimate, "
              f"{rows[0]['n_sigma']} sign vectors;", f"  measured {', '.join(measured)}; machine: {rows[0]['machine']}"]
    return "\n".join(lines)


def render_supremum(records: list[dict]) -> str:
    """Target 1 over whole pretrainings: the running estimate's share of the logged supremum, second half."""
    lines = tables.header(["checkpoint", "steps", "logged", "estimate / supremum, second half (mean ± std)",
                           "lowest", "estimate", "supremum"], ["---", *["---:"] * 6])
    for r in records:
        ratios = estimator.second_half(r)  # the records have radreg_estimator's cell shape (steps, trace)
        if not ratios:
            continue
        half = [t for t in r["trace"] if t["step"] > r["steps"] / 2 and t["ratio"] is not None]
        lines.append(tables.row([r["checkpoint"], str(r["steps"]), str(len(r["trace"])),
                                 f"{statistics.fmean(ratios):.3f} ± {statistics.pstdev(ratios):.3f}",
                                 f"{min(ratios):.3f}", f"{statistics.fmean(t['estimate'] for t in half):.4f}",
                                 f"{statistics.fmean(t['supremum'] for t in half):.4f}"]))
    one = records[0]
    lines += ["", f"Every {one['every']} steps, on the current batch with the signs the estimate used; "
              f"{', '.join(sorted({r['date'] for r in records}))}, {one['machine']}; command of one: "
              f"`{one['command']}`"]
    return "\n".join(lines)


def render_reference(ref: dict) -> str:
    import math

    lines = tables.header(["features", "what they are", "RadReg penalty (n=16)", "centred"],
                          ["---", "---", "---:", "---:"])
    for kind, r in ref["rows"].items():
        centred = "0/0" if r["penalty_centred"] is None else f"{r['penalty_centred']:.4f}"
        lines.append(tables.row([kind, REFERENCE[kind], f"{r['penalty']:.4f}", centred]))
    lines += ["", f"Exact for identical features: E|sigma_1 + ... + sigma_16| / 16 = C(16, 8) / 2^16 = "
              f"{math.comb(16, 8) / 2 ** 16:.4f} (uncentred). 250 seeded batches x 4 sign vectors each; "
              f"{ref['date']}, {ref['machine']}; `{ref['command']}`"]
    return "\n".join(lines)


def sections(data: dict | None = None) -> dict[str, str]:
    data = load() if data is None else data
    out = {"radreg_diagnostics": render(data["rows"])} if len(data["rows"]) >= 2 else {}
    if data.get("reference"):
        out["radreg_diagnostics/reference"] = render_reference(data["reference"])
    if data.get("supremum"):
        out["radreg_diagnostics/supremum"] = render_supremum(data["supremum"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.environ.get("GENTUNE_IMAGES", images.DEFAULT_DATA))
    p.add_argument("--render", action="store_true", help="only rebuild docs/results.md")
    p.add_argument("--smoke", metavar="DIR", help="a radreg_retest.py --smoke folder (runs/radreg_retest_*)")
    p.add_argument("--only", nargs="+", metavar="PATTERN",
                   help="measure (pretraining and probing as needed) only the checkpoints these shell-style patterns "
                        "name, e.g. 'full.hetero.*_p2' or random-conv-small; the table still shows every measured one")
    images.add_jobs_flag(p)
    args = p.parse_args(argv)
    if args.render:
        runner.render_results()
        return 0
    args.data = str(Path(args.data).resolve())
    args.pretrain_extra, args.finetune_extra, args.steps = [], [], []
    args.seeds, args.n_sigma, args.supremum_every = retest.SEEDS, N_SIGMA, SUPREMUM_EVERY
    args.results, args.runs = OUT_RESULTS, OUT_RUNS
    args.retest = {b: (retest.OUT_RESULTS / b, retest.OUT_RUNS / b) for b in ("full", "cpu")
                   if (retest.OUT_RESULTS / b / "pretrain").is_dir()}
    # where the re-test's MAE pooling choice lives (its first budget that has run)
    args.retest_args = retest.make_args(["--data", args.data, "--budget", next(iter(args.retest), "full")])
    if args.smoke:
        smoke = Path(args.smoke).resolve()
        args.results, args.runs = smoke / "diagnostics" / "results", smoke / "diagnostics" / "runs"
        args.steps, args.seeds, args.n_sigma, args.supremum_every = ["--max-steps", "3"], retest.SEEDS[:2], 200, 1
        args.retest = {b: (smoke / "results" / b, smoke / "runs") for b in ("full", "cpu")
                       if (smoke / "results" / b / "pretrain").is_dir()}
        args.retest_args.results = smoke / "results" / "full"
    run(args)
    if args.smoke:
        found = {b: r for b, (r, _) in args.retest.items()}
        print(template.preview(sections(load(Path(args.results), found))))
        return 0
    runner.render_results()
    return 0


if __name__ == "__main__":
    sys.exit(main())
