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
    python benchmarks/fewshot_grid.py all
    python benchmarks/fewshot_grid.py --dry-run  # how many runs each phase has left

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
import sys
import time
from pathlib import Path

from _lib import cells, runner
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
          "minilm-all": (MINILM, "all")}
# arm -> the flags that make it
ARMS = {"probe": ["--linear-probe", "--set", "pooling=mean"], "head-cls": ["--set", "pooling=cls"],
        "head-mean": ["--set", "pooling=mean"], "prompt": ["--objective", "prompt"]}


def eval_file(task: str, seed: int) -> Path:
    return RUNS / "eval" / task / f"{seed}.json"


def make_eval(task: str, seed: int) -> dict:
    """``full/<TASK>/dev.json`` without the examples whose text is in this seed's k-shot train or dev, written in
    the same format; returns the counts."""
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
    return {"examples": len(raw), "removed": len(raw) - len(kept), "kept": len(kept)}


def phase_eval(tasks, seeds) -> None:
    for task in tasks:
        for seed in seeds:
            cell = RESULTS / "eval" / f"{task}_seed{seed}.json"
            counts = make_eval(task, seed)  # cheap: always rewritten, so the file exists in a fresh checkout
            if not cell.exists():
                cells.write_json(cell, {"task": task, "seed": seed, **counts, "date": dt.date.today().isoformat(),
                                        "commit": commit()})
            print(f"[eval] {task} seed {seed}: {counts['removed']} of {counts['examples']} removed")


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


def remaining(tasks, seeds, models, arms) -> dict[str, int]:
    mlm = sum(1 for m in models if MODELS[m][1] for t in tasks for s in seeds
              if not (RESULTS / "mlm" / m / f"{t}_seed{s}.json").exists())
    zero = sum(1 for m in models for t in tasks for s in seeds
               if not (RESULTS / "zero-shot" / m / f"{t}_seed{s}.json").exists())
    train = sum(1 for m in models for a in arms for t in tasks for s in seeds for lr in LRS
                if not (RESULTS / "train" / m / a / f"{t}_seed{s}_lr{lr}.json").exists())
    return {"mlm": mlm, "zero-shot": zero, "train": train}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", nargs="?", choices=["eval", "mlm", "zero-shot", "train", "all"])
    p.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    p.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--dry-run", action="store_true", help="count the runs each phase has left")
    args = p.parse_args()
    if args.dry_run or args.phase is None:
        print(remaining(args.tasks, args.seeds, args.models, args.arms))
        return 0
    phases = ["eval", "mlm", "zero-shot", "train"] if args.phase == "all" else [args.phase]
    if "eval" not in phases:
        phase_eval(args.tasks, args.seeds)  # the evaluation files every later phase reads
    for phase in phases:
        if phase == "eval":
            phase_eval(args.tasks, args.seeds)
        elif phase == "mlm":
            phase_mlm(args.tasks, args.seeds, args.models)
        elif phase == "zero-shot":
            phase_zero_shot(args.tasks, args.seeds, args.models)
        else:
            phase_train(args.tasks, args.seeds, args.models, args.arms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
