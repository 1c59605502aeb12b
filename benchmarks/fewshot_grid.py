"""Few-shot text classification, LM-BFF's protocol (issue 19): prompt-based against head fine-tuning at 16 shots,
on the shipped splade-tiny masked LM, on it after task-adaptive MLM, and on MiniLM after MLM training of its new head
(and of head and encoder).

Data: the LM-BFF 16-shot splits `k-shot/<TASK>/16-<seed>/` (seeds 13, 21, 42, 87, 100): train for training, their
dev for checkpoint and learning-rate selection (as LM-BFF does). Reported: `full/<TASK>/dev` with every example
whose text occurs in that seed's k-shot train or dev removed (the k-shot files were drawn from the training sets
that `full/` was split from; seed 42's k-shot sets of sst-5, mr, cr, subj and trec lie inside `full/*/dev`), the
number of dev examples removed in each cell. No choice ever sees the reported set.

Phases, in order (each run is one JSON cell under benchmarks/results/fewshot/, finished cells are skipped, so the
grid spans sessions):

    python benchmarks/fewshot_grid.py eval       # the deduplicated evaluation files (runs/fewshot/eval/), counts
    python benchmarks/fewshot_grid.py mlm        # task-adaptive MLM: splade-tiny, MiniLM head only, MiniLM all
    python benchmarks/fewshot_grid.py zero-shot  # every model's prompt with no training
    python benchmarks/fewshot_grid.py train      # arms x learning rates x seeds x tasks x models
    python benchmarks/fewshot_grid.py diagnose   # each model's features on the evaluation texts (spread, R)
    python benchmarks/fewshot_grid.py all
    python benchmarks/fewshot_grid.py --dry-run  # how many runs each phase has left
    python benchmarks/fewshot_grid.py --render   # only rebuild docs/results.md
    python benchmarks/fewshot_grid.py --smoke    # every phase at 3-4 steps, one learning rate, 2 splits of SST-2,
                                                 # into runs/; a printed preview of the tables

RadReg on text (issue 19's "run it once"): the model ``splade-tapt-radreg`` is splade-tiny's task-adaptive MLM run
with ``--regularizer radreg`` on the same unlabeled training texts (the seed paper's penalty on the masked mean of
the encoder's states; the MLP head class by the single-unit estimator chosen for images, lambda 1.0, the context
encoder's tuned value, not tuned for text; the supremum logged every 25 steps). It is not among the default models:

    python benchmarks/fewshot_grid.py all --tasks sst2 mr cr --models splade-tapt splade-tapt-radreg

Task-adaptive MLM reads the task's unlabeled training texts (`full/<TASK>/train.json`, labels dropped; never a dev
text), one run per split seed (so pretraining's randomness is in the spread), its batches grouped by length
(`group_by_length`: 1.75x the tokens per second of plain batches, benchmarks/mlm_throughput.py; the training runs
keep plain shuffled batches, since 16 shots a class would make the same few batches every epoch). Arms: zero-shot
prompt, linear probe (mean-pooled features), head fine-tuning (CLS and mean pooling), prompt fine-tuning; every
trained arm on the same grid: learning rate in LRS, batch 8, STEPS steps, the k-shot dev scored every EVAL_EVERY
steps. Not run by CI; needs GENTUNE_DATA pointing at a GLUE/LM-BFF tree and ../shared/models/splade_tiny_bert_mlm.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

from _lib import cells, runner, stats, tables
from _lib.baselines import constant_scores
from _lib.lmbff import glue, kshot
from _lib.lmbff import spec as _spec
from _lib.paths import RESULTS as ALL_RESULTS
from _lib.paths import ROOT
from _lib.provenance import commit, machine

RESULTS = ALL_RESULTS / "fewshot"
RUNS = ROOT / "runs" / "fewshot"
TASKS = ["sst2", "sst5", "mr", "cr", "mpqa", "subj", "trec", "cola", "rte", "qnli", "mrpc"]
SINGLE = TASKS[:8]  # the single-sentence tasks of the target
SEEDS = [13, 21, 42, 87, 100]
LRS = ["1e-5", "5e-5", "2e-4", "1e-3"]
STEPS, BATCH, EVAL_EVERY = 250, 8, 50
MLM = {"steps": 300, "batch": 32, "lr": "1e-4"}
SPLADE = str((ROOT.parent / "shared" / "models" / "splade_tiny_bert_mlm").resolve())
MINILM = "all-MiniLM-L6-v2"
# model -> (what it starts from, the MLM run before it: None or "all"/"head")
MODELS = {"splade": (SPLADE, None), "splade-tapt": (SPLADE, "all"), "minilm-head": (MINILM, "head"),
          "minilm-all": (MINILM, "all"), "splade-tapt-radreg": (SPLADE, "all")}
DEFAULT_MODELS = ["splade", "splade-tapt", "minilm-head", "minilm-all"]  # the issue's; RadReg only when named
RADREG = {"weight": 1.0, "head": "mlp", "estimator": "unit", "ascent_steps": 5, "restarts": 2, "batch_size": 16,
          "supremum_every": 25}
DIAGNOSE = {"examples": 1000, "n_sigma": 500}
# arm -> the flags that make it
ARMS = {"probe": ["--linear-probe", "--set", "pooling=mean"], "head-cls": ["--set", "pooling=cls"],
        "head-mean": ["--set", "pooling=mean"], "prompt": ["--objective", "prompt"]}


def eval_file(task: str, seed: int) -> Path:
    return RUNS / "eval" / task / f"{seed}.json"


def make_eval(task: str, seed: int) -> dict:
    """``full/<TASK>/dev.json`` without the examples whose text is in this seed's k-shot train or dev, written in
    the same format; returns the counts and the best constant predictor's scores on it (``trivial``)."""
    from gentune.data.glue import read_file
    from gentune.data.splits import text_key

    spec = _spec(task)
    raw = json.loads((glue() / "full" / spec.dirname / "dev.json").read_text())
    seen = set()
    for f in kshot(task, seed):
        ds = read_file(spec, f)
        seen |= {text_key(a, b) for a, b in zip(ds["text_a"], ds["text_b"])}
    kept = {k: v for k, v in raw.items() if text_key(v["text_a"], v.get("text_b")) not in seen}
    out = eval_file(task, seed)
    cells.write_text(out, json.dumps(kept))
    trivial = constant_scores(spec, read_file(spec, out)["label"])
    return {"examples": len(raw), "removed": len(raw) - len(kept), "kept": len(kept), "trivial": trivial}


def phase_eval(tasks, seeds) -> None:
    for task in tasks:
        for seed in seeds:
            cell = RESULTS / "eval" / f"{task}_seed{seed}.json"
            counts = make_eval(task, seed)  # cheap: always rewritten, so the file exists in a fresh checkout
            old = cells.read_json(cell) if cell.exists() else {}
            if "trivial" not in old:  # (cells from before the trivial scores keep their date and commit)
                cells.write_json(cell, {"task": task, "seed": seed, "date": dt.date.today().isoformat(),
                                        "commit": commit(), **old, **counts})
            print(f"[eval] {task} seed {seed}: {counts['removed']} of {counts['examples']} removed")


def log_tail(out: Path, share: float = 0.2) -> dict[str, float]:
    """The mean of each numeric value of a run's training log over its last ``share`` of steps (the masked-token
    accuracy, RadReg's estimate and its share of the supremum where logged)."""
    path = out / "metrics.jsonl"
    if not path.exists():
        return {}
    train = [r for r in map(json.loads, path.read_text().splitlines()) if r.get("type") == "train"]
    last = train[int(len(train) * (1 - share)):] or train
    keys = ("task", "masked_accuracy", "radreg", "radreg_complexity", "radreg_supremum", "radreg_supremum_ratio")
    return {k: sum(r[k] for r in last if k in r) / n for k in keys
            if (n := sum(1 for r in last if k in r))}


def _run(cell: Path, argv: list[str], record: dict, out: Path | None, keep: bool = False) -> None:
    command = shlex.join(["gentune", *argv])
    if cell.exists() and cells.read_json(cell).get("command") != command:
        raise SystemExit(f"error: {cell.relative_to(ROOT)} was made by another command; move it away to rerun")
    if cells.finished(cell, f"{record} -> {cell.relative_to(ROOT)}"):
        return
    t0 = time.time()
    if out is not None and out.exists() and not (out / "config.yaml").exists():
        shutil.rmtree(out)
    runner.gentune(argv, label=" ".join(f"{k}={v}" for k, v in record.items()))
    result = {**record, "command": command, "machine": machine(), "commit": commit(),
              "date": dt.date.today().isoformat(), "wall_seconds": time.time() - t0}
    if out is not None:
        result["summary"] = cells.read_json(out / "summary.json")
        if (out / "test.json").exists():
            result["test"] = cells.read_json(out / "test.json")
        if record.get("phase") == "mlm":
            result["log_tail"] = log_tail(out)
    cells.write_json(cell, result)
    if out is not None and not keep:
        shutil.rmtree(out / "best", ignore_errors=True)  # the cell holds what the tables need


def mlm_model(model: str, task: str, seed: int) -> str:
    """The checkpoint ``model`` starts from for this task and split: the base, or its task-adaptive MLM run."""
    base, mlm = MODELS[model]
    return base if mlm is None else str(RUNS / "mlm" / model / task / f"seed{seed}" / "model")


def phase_mlm(tasks, seeds, models) -> None:
    for model in models:
        base, mlm = MODELS[model]
        if mlm is None:
            continue
        for task in tasks:
            spec = _spec(task)
            for seed in seeds:
                out = RUNS / "mlm" / model / task / f"seed{seed}"
                argv = ["pretrain", "--objective", "mlm", "--model", base, "--data",
                        str(glue() / "full" / spec.dirname / "train.json"), "--out", str(out.relative_to(ROOT)),
                        "--seed", str(seed), "--max-steps", str(MLM["steps"]), "--batch-size", str(MLM["batch"]),
                        "--lr", MLM["lr"], "--set", f"from_task={task}", f"train={mlm}", "group_by_length=true"]
                if model.endswith("-radreg"):
                    argv += ["--regularizer", "radreg", "--set", f"radreg.data={argv[argv.index('--data') + 1]}",
                             *(f"radreg.{k}={v}" for k, v in RADREG.items())]
                _run(RESULTS / "mlm" / model / f"{task}_seed{seed}.json", argv,
                     {"phase": "mlm", "model": model, "task": task, "seed": seed}, out, keep=True)


def phase_zero_shot(tasks, seeds, models) -> None:
    for model in models:
        for task in tasks:
            for seed in seeds:
                argv = ["evaluate", "--checkpoint", mlm_model(model, task, seed), "--task", task, "--data",
                        str(eval_file(task, seed)), "--objective", "prompt"]
                cell = RESULTS / "zero-shot" / model / f"{task}_seed{seed}.json"
                if cells.finished(cell, f"zero-shot {model} {task} {seed}"):
                    continue
                t0 = time.time()
                import subprocess

                done = subprocess.run([sys.executable, "-m", "gentune", *argv], cwd=ROOT, capture_output=True,
                                      text=True, check=True)
                cells.write_json(cell, {"phase": "zero-shot", "model": model, "task": task, "seed": seed,
                                        "command": shlex.join(["gentune", *argv]), "test": json.loads(done.stdout),
                                        "machine": machine(), "commit": commit(),
                                        "date": dt.date.today().isoformat(), "wall_seconds": time.time() - t0})
                print(f"[zero] {model} {task} {seed}: {json.loads(done.stdout)}")


def phase_train(tasks, seeds, models, arms) -> None:
    for model in models:
        for task in tasks:
            for seed in seeds:
                train, dev = kshot(task, seed)
                for arm in arms:
                    for lr in LRS:
                        out = RUNS / "train" / model / arm / task / f"seed{seed}_lr{lr}"
                        argv = ["finetune", "--task", task, "--model", mlm_model(model, task, seed),
                                "--train", str(train), "--dev", str(dev), "--test", str(eval_file(task, seed)),
                                "--seed", str(seed), "--lr", lr, "--max-steps", str(STEPS), "--batch-size",
                                str(BATCH), *ARMS[arm], "--out", str(out.relative_to(ROOT)), "--set",
                                f"eval_steps={EVAL_EVERY}"]
                        _run(RESULTS / "train" / model / arm / f"{task}_seed{seed}_lr{lr}.json", argv,
                             {"phase": "train", "model": model, "arm": arm, "task": task, "seed": seed, "lr": lr},
                             out)


def phase_diagnose(tasks, seeds, models) -> None:
    """Each model's mean-pooled features on each split's evaluation texts: spread (the share of their squared
    norm that varies between sentences, with its effective rank) and the scale-free linear and MLP complexity."""
    for model in models:
        for task in tasks:
            for seed in seeds:
                cell = RESULTS / "diagnose" / model / f"{task}_seed{seed}.json"
                if cells.finished(cell, f"diagnose {model} {task} {seed}"):
                    continue
                out = RUNS / "diagnose" / model / task / f"seed{seed}"
                argv = ["diagnose", "--checkpoint", mlm_model(model, task, seed), "--task", task, "--data",
                        str(eval_file(task, seed)), "--out", str(out.relative_to(ROOT)), "--max-examples",
                        str(DIAGNOSE["examples"]), "--n-sigma", str(DIAGNOSE["n_sigma"]), "--set", "pooling=mean"]
                t0 = time.time()
                runner.gentune(argv, label=f"diagnose {model} {task} {seed}")
                row = cells.read_json(out / "diagnostics.json")["checkpoints"][0]
                c = row["complexity"]
                cells.write_json(cell, {
                    "phase": "diagnose", "model": model, "task": task, "seed": seed,
                    "command": shlex.join(["gentune", *argv]), "spread": row["spread"],
                    "complexity": c["linear_normalized"]["estimate"], "complexity_raw": c["linear"]["estimate"],
                    "complexity_mlp": c["mlp"]["estimate"] if "mlp" in c else None, "mean_norm": row["mean_norm"],
                    "machine": machine(), "commit": commit(), "date": dt.date.today().isoformat(),
                    "wall_seconds": time.time() - t0})


def remaining(tasks, seeds, models, arms) -> dict[str, int]:
    mlm = sum(1 for m in models if MODELS[m][1] for t in tasks for s in seeds
              if not (RESULTS / "mlm" / m / f"{t}_seed{s}.json").exists())
    zero = sum(1 for m in models for t in tasks for s in seeds
               if not (RESULTS / "zero-shot" / m / f"{t}_seed{s}.json").exists())
    train = sum(1 for m in models for a in arms for t in tasks for s in seeds for lr in LRS
                if not (RESULTS / "train" / m / a / f"{t}_seed{s}_lr{lr}.json").exists())
    diag = sum(1 for m in models for t in tasks for s in seeds
               if not (RESULTS / "diagnose" / m / f"{t}_seed{s}.json").exists())
    return {"mlm": mlm, "zero-shot": zero, "train": train, "diagnose": diag}


# ------------------------------------------------------------------------------------------------- the tables

ARM_NAMES = {"zero-shot": "zero-shot prompt", "probe": "linear probe", "head-cls": "head (CLS)",
             "head-mean": "head (mean)", "prompt": "prompt fine-tuning"}


def load(results: Path | None = None) -> dict:
    """Every cell of the grid, by phase."""
    root = results or RESULTS
    return {"eval": cells.read_cells(root / "eval"), "mlm": cells.read_cells(root / "mlm", "*/*.json"),
            "zero": cells.read_cells(root / "zero-shot", "*/*.json"),
            "train": cells.read_cells(root / "train", "*/*/*.json"),
            "diagnose": cells.read_cells(root / "diagnose", "*/*.json")}


def metric(task: str) -> str:
    return _spec(task).main_metric


def chosen(data: dict) -> dict[tuple[str, str, str], tuple[str, dict[int, float]]]:
    """(model, arm, task) -> (the learning rate, {split seed: its score on the deduplicated dev set}). The rate is
    the one with the best mean k-shot dev score (each run's best evaluation) over the split seeds, among the rates
    with the most finished seeds; the zero-shot prompt has no rate ("-")."""
    runs: dict = {}
    for c in data["train"]:
        m = metric(c["task"])
        runs.setdefault((c["model"], c["arm"], c["task"]), {}).setdefault(c["lr"], {})[c["seed"]] = (
            c["summary"]["best_dev"][m], c["test"][m])
    out = {}
    for key, by_lr in runs.items():
        most = max(len(v) for v in by_lr.values())
        lr = max((lr for lr, v in by_lr.items() if len(v) == most),
                 key=lambda lr: (statistics.fmean(d for d, _ in by_lr[lr].values()), -LRS.index(lr)))
        out[key] = (lr, {seed: t for seed, (_, t) in sorted(by_lr[lr].items())})
    for c in data["zero"]:
        out.setdefault((c["model"], "zero-shot", c["task"]), ("-", {}))[1][c["seed"]] = c["test"][metric(c["task"])]
    return out


def trivial(data: dict, task: str, seeds) -> float | None:
    """The best constant predictor's main metric on each split's deduplicated dev set (the eval cells), averaged
    over ``seeds``; None when a seed's cell lacks it."""
    got = {c["seed"]: c["trivial"][metric(task)] for c in data["eval"] if c["task"] == task and "trivial" in c}
    return statistics.fmean(got[s] for s in seeds) if seeds and all(s in got for s in seeds) else None


def _head_choice(data: dict, model: str, task: str) -> str | None:
    """head-cls or head-mean, whichever has the better mean k-shot dev score at its chosen rate (a choice on dev,
    never on the reported set)."""
    dev = {}
    for c in data["train"]:
        if c["model"] == model and c["task"] == task and c["arm"] in ("head-cls", "head-mean"):
            dev.setdefault(c["arm"], {}).setdefault(c["lr"], []).append(c["summary"]["best_dev"][metric(task)])
    picked = chosen(data)
    best = {arm: statistics.fmean(dev[arm][picked[(model, arm, task)][0]]) for arm in dev
            if (model, arm, task) in picked}
    return max(best, key=best.get) if best else None


def model_table(data: dict, model: str, picked: dict) -> list[str]:
    tasks = [t for t in TASKS if any(k[0] == model and k[2] == t for k in picked)]
    arms = [a for a in ARM_NAMES if any(k[0] == model and k[1] == a for k in picked)]
    lines = tables.header(["task (metric)", "trivial", *[ARM_NAMES[a] for a in arms], "prompt - head (paired)"],
                          ["---", *["---:"] * (len(arms) + 2)])
    for task in tasks:
        seeds = sorted({s for k, (_, v) in picked.items() if k[0] == model and k[2] == task for s in v})
        base = trivial(data, task, seeds)
        row = [f"{task} ({metric(task)})", "-" if base is None else f"{100 * base:.1f}"]
        for arm in arms:
            lr, scores = picked.get((model, arm, task), ("-", {}))
            row.append(f"{stats.fmt(list(scores.values()))}" + (f" ({lr})" if lr != "-" and scores else ""))
        head = _head_choice(data, model, task)
        d = (stats.paired(picked[(model, "prompt", task)][1], picked[(model, head, task)][1])
             if head and (model, "prompt", task) in picked else None)
        row.append(stats.fmt_paired(d, with_n=True) + (f" vs {head}" if d else ""))
        lines.append(tables.row(row))
    return lines


def compare(picked: dict, a: str, b: str, arms) -> list[str]:
    """``a - b`` per arm and task (paired over the split seeds both have), and over the tasks both have."""
    tasks = [t for t in TASKS if any(k[0] == a and k[2] == t for k in picked)
             and any(k[0] == b and k[2] == t for k in picked)]
    lines = tables.header(["arm", *tasks, "mean over tasks"], ["---", *["---:"] * (len(tasks) + 1)])
    for arm in arms:
        pairs = {t: stats.paired(picked[(a, arm, t)][1], picked[(b, arm, t)][1]) for t in tasks
                 if (a, arm, t) in picked and (b, arm, t) in picked}
        pairs = {t: p for t, p in pairs.items() if p is not None}
        if not pairs:
            continue
        mean = stats.mean_of(pairs.values()) if len(pairs) == len(tasks) else None
        lines.append(tables.row([ARM_NAMES[arm], *[stats.fmt_paired(pairs.get(t)) for t in tasks],
                                 stats.fmt_paired(mean) if mean else "-"]))
    return lines


def targets(data: dict, picked: dict) -> list[str]:
    out = []
    for model in [m for m in MODELS if any(k[0] == m and k[1] == "prompt" for k in picked)]:
        wins, seen = 0, 0
        for task in SINGLE:
            head = _head_choice(data, model, task)
            if head is None or (model, "prompt", task) not in picked:
                continue
            seen += 1
            p, h = (statistics.fmean(picked[(model, x, task)][1].values()) for x in ("prompt", head))
            wins += p > h
        if seen:
            out.append(f"- {model}: prompt fine-tuning above the better head (chosen on k-shot dev) on {wins} of "
                       f"{seen} single-sentence tasks with results (target: at least 6 of 8).")
    if any(k[0] == "splade-tapt" for k in picked):
        rows = compare(picked, "splade-tapt", "splade", ["prompt"])
        if len(rows) > 2:
            out.append("- Task-adaptive MLM (splade-tapt - splade), prompt fine-tuning: "
                       f"{rows[2].split('|')[-2].strip()} over the tasks (paired over split seeds; per task below).")
        for task in ("sst2", "mr", "cr"):
            z = picked.get(("splade-tapt", "zero-shot", task), ("-", {}))[1]
            if z:
                base = trivial(data, task, sorted(z))
                out.append(f"- Zero-shot after task-adaptive MLM, {task}: {stats.fmt(list(z.values()))} against the "
                           f"trivial {'-' if base is None else f'{100 * base:.1f}'}.")
    return out


def radreg_block(data: dict, picked: dict) -> list[str]:
    a, b = "splade-tapt-radreg", "splade-tapt"
    if not any(k[0] == a for k in picked) and not any(c["model"] == a for c in data["mlm"]):
        return []
    lines = ["RadReg on text, paired over the split seeds (splade-tapt-radreg - splade-tapt, points):", "",
             *compare(picked, a, b, list(ARM_NAMES)), "",
             "The MLM runs (the last 20% of their steps) and the features on the evaluation texts (mean over split "
             f"seeds; `diagnose --set pooling=mean`, up to {DIAGNOSE['examples']:,} sentences):", ""]
    lines += tables.header(["model", "task", "masked acc.", "R estimate", "estimate / supremum", "spread",
                            "eff. rank", "R (linear, scale-free)", "R (MLP, raw)"], ["---", "---", *["---:"] * 7])
    for model in (b, a):
        for task in TASKS:
            mlm = [c["log_tail"] for c in data["mlm"] if c["model"] == model and c["task"] == task]
            diag = [c for c in data["diagnose"] if c["model"] == model and c["task"] == task]
            if not mlm and not diag:
                continue

            def mean(rows, key, scale=1.0, digits=3):
                got = [r[key] for r in rows if r.get(key) is not None]
                return f"{scale * statistics.fmean(got):.{digits}f}" if got else "-"

            spread = [{"s": d["spread"]["spread"], "r": d["spread"]["effective_rank"]} for d in diag]
            lines.append(tables.row([model, task, mean(mlm, "masked_accuracy"), mean(mlm, "radreg_complexity"),
                                     mean(mlm, "radreg_supremum_ratio", digits=2), mean(spread, "s", digits=4),
                                     mean(spread, "r", digits=1), mean(diag, "complexity", digits=4),
                                     mean(diag, "complexity_mlp", digits=4)]))
    return lines


def sections(data: dict) -> dict[str, str]:
    """The page's blocks: a table per model, the targets, the TAPT and RadReg comparisons, the provenance."""
    if not data["train"] and not data["zero"]:
        return {"fewshot/provenance": "**The grid has not run yet**: no training or zero-shot cell is committed, so "
                                      "no score is claimed (its cost: docs/methods/prompting.md)."}
    picked = chosen(data)
    lines = []
    for model in [m for m in MODELS if any(k[0] == m for k in picked)]:
        lines += [f"**{model}** (mean ± std over the split seeds on the deduplicated dev sets, the chosen learning "
                  "rate in brackets)", "", *model_table(data, model, picked), ""]
    out = {"fewshot/tables": "\n".join(lines).rstrip(), "fewshot/targets": "\n".join(targets(data, picked))}
    if any(k[0] == "splade-tapt" for k in picked) and any(k[0] == "splade" for k in picked):
        out["fewshot/tapt"] = "\n".join(["Task-adaptive MLM, paired over split seeds (splade-tapt - splade, points):",
                                         "", *compare(picked, "splade-tapt", "splade", list(ARM_NAMES))])
    block = radreg_block(data, picked)
    if block:
        out["fewshot/radreg"] = "\n".join(block)
    every = data["train"] + data["zero"] + data["mlm"] + data["diagnose"]
    removed = {(c["task"], c["seed"]): c["removed"] for c in data["eval"]}
    dates = sorted({c["date"] for c in every if c.get("date")})
    machines = sorted({c["machine"] for c in every if c.get("machine")})
    span = " to ".join(sorted(set(dates[:1] + dates[-1:]))) if dates else "-"
    out["fewshot/provenance"] = (
        f"{len(data['train'])} training runs, {len(data['zero'])} zero-shot evaluations, {len(data['mlm'])} MLM "
        f"runs; {span}; machine: {'; '.join(machines) or '-'}. "
        f"Dev examples removed as k-shot duplicates: "
        + (", ".join(f"{t} {min(v for (tt, _), v in removed.items() if tt == t)}-"
                     f"{max(v for (tt, _), v in removed.items() if tt == t)}"
                     for t in TASKS if any(tt == t for tt, _ in removed)) or "-")
        + ". Command: `python benchmarks/fewshot_grid.py all` (the phases in the script's docstring).")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", nargs="?", choices=["eval", "mlm", "zero-shot", "train", "diagnose", "all"])
    p.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    p.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(MODELS))
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--dry-run", action="store_true", help="count the runs each phase has left")
    p.add_argument("--render", action="store_true", help="only rebuild docs/results.md from the cells")
    p.add_argument("--smoke", action="store_true", help="every phase at a few steps on 2 splits of SST-2, into "
                                                        "runs/; a printed preview")
    args = p.parse_args()
    if args.render:
        runner.render_results()
        return 0
    if args.smoke:
        return smoke(args)
    if args.dry_run or args.phase is None:
        print(remaining(args.tasks, args.seeds, args.models, args.arms))
        return 0
    phases = ["eval", "mlm", "zero-shot", "train", "diagnose"] if args.phase == "all" else [args.phase]
    if "eval" not in phases:
        phase_eval(args.tasks, args.seeds)  # the evaluation files every later phase reads
    for phase in phases:
        if phase == "eval":
            phase_eval(args.tasks, args.seeds)
        elif phase == "mlm":
            phase_mlm(args.tasks, args.seeds, args.models)
        elif phase == "zero-shot":
            phase_zero_shot(args.tasks, args.seeds, args.models)
        elif phase == "train":
            phase_train(args.tasks, args.seeds, args.models, args.arms)
        else:
            phase_diagnose(args.tasks, args.seeds, args.models)
    runner.render_results()
    return 0


def smoke(args) -> int:
    """Every phase at a few steps (one learning rate, splits 13 and 21 of SST-2, splade-tiny's task-adaptive MLM
    run with and without RadReg) into runs/fewshot-smoke/, then the blocks printed; nothing under
    benchmarks/results/ changes. The choice among rates is tested on made-up cells (tests/test_benchmark_cells.py)."""
    global RESULTS, RUNS, LRS, STEPS, EVAL_EVERY
    RESULTS, RUNS = ROOT / "runs" / "fewshot-smoke" / "results", ROOT / "runs" / "fewshot-smoke" / "runs"
    LRS, STEPS, EVAL_EVERY = ["1e-3"], 4, 2
    MLM.update(steps=3)
    RADREG["supremum_every"] = 1
    DIAGNOSE.update(examples=50, n_sigma=20)
    tasks, seeds, models = ["sst2"], [13, 21], ["splade-tapt", "splade-tapt-radreg"]
    phase_eval(tasks, seeds)
    phase_mlm(tasks, seeds, models)
    phase_zero_shot(tasks, seeds, models)
    phase_train(tasks, seeds, models, list(ARMS))
    phase_diagnose(tasks, seeds, models)
    for key, block in sections(load()).items():
        print(f"--- {key}\n{block}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
