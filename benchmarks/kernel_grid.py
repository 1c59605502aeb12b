"""Does fine-tuning behave like its kernel? (issue 20, Malladi et al., ICML 2023, sections 5 and 6)

For each task, 16-shot split seed, model and setting (``prompt``: LM-BFF's label words at the [MASK];
``noprompt``: a classifier whose head starts from a linear probe on the frozen features, as the paper's no-prompt
kernels start), one cell ``benchmarks/results/kernel/grid/<model>/<setting>/<task>_seed<seed>.json`` holds:

- fine-tuning from that initialisation with plain SGD and with Adam (``gentune finetune --optimizer sgd|adamw``),
  each at the learning rate of SGD_LRS / ADAM_LRS that scores best on the split's k-shot dev (LM-BFF's selection),
  STEPS steps of batch BATCH: the task metric on the evaluation set and its per-example predictions;
- the kernel solvers at the initialisation: lstsq on K_sgd, and for two classes the asym solver on K_asym-signgd
  (``gentune kernel``); their metric and their agreement with each fine-tuning (the fraction of evaluation
  predictions equal);
- the linearization test (``gentune.diagnostics.ntk.linearization``): the share of the change of the outputs under
  fine-tuning (SGD and Adam) that the first-order Taylor expansion at the start explains, the outputs' relative
  change, and the relative change of the training kernel K_sgd over fine-tuning;
- the trivial predictor (the training majority class) on the same evaluation set.

Data: the LM-BFF splits ``k-shot/<TASK>/16-<seed>/``; evaluation on ``benchmarks/fewshot_grid.py eval``'s
deduplicated dev files (the full dev set without that seed's k-shot texts; run that phase first), the first
``--max-eval`` examples of it (default 500; the kernel's cost grows with it). Models: ``splade`` (the shipped
masked LM), ``splade-tapt`` and ``minilm`` (fewshot_grid's task-adaptive MLM runs of splade, and of MiniLM's new
head: run ``fewshot_grid.py mlm`` first). Not run by CI; needs GENTUNE_DATA.

    python benchmarks/kernel_grid.py --tasks sst2 --seeds 13 --models splade      # one task, one split
    python benchmarks/kernel_grid.py                                              # everything, resumable
    python benchmarks/kernel_grid.py --dry-run
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
from _lib.lmbff import kshot
from _lib.lmbff import spec as _spec
from _lib.paths import RESULTS as ALL_RESULTS
from _lib.paths import ROOT
from _lib.provenance import commit, machine

RESULTS = ALL_RESULTS / "kernel" / "grid"
RUNS = ROOT / "runs" / "kernel_grid"
FEWSHOT_RUNS = ROOT / "runs" / "fewshot"  # fewshot_grid.py's evaluation files and MLM runs (read, not imported)
SINGLE = ["sst2", "sst5", "mr", "cr", "mpqa", "subj"]  # the target's six single-sentence tasks
TASKS = [*SINGLE, "trec", "rte", "qnli", "mrpc"]
SEEDS = [13, 21, 42, 87, 100]
SETTINGS = ["prompt", "noprompt"]
# a smoke cell (sst2, splade) chose the top of SGD's 1e-3..1e-1
SGD_LRS, ADAM_LRS = ["1e-2", "1e-1", "1"], ["1e-5", "5e-5", "2e-4"]
STEPS, BATCH, EVAL_EVERY = 250, 8, 50
PROBE = {"lr": "1e-3", "steps": 250}
SPLADE = str((ROOT.parent / "shared" / "models" / "splade_tiny_bert_mlm").resolve())
MODELS = {"splade": None, "splade-tapt": "splade-tapt", "minilm": "minilm-head"}  # -> fewshot_grid's MLM run


def eval_file(task: str, seed: int, max_eval: int) -> Path:
    """The first ``max_eval`` examples of fewshot_grid's deduplicated dev file, written once under runs/."""
    source = FEWSHOT_RUNS / "eval" / task / f"{seed}.json"
    if not source.exists():
        raise SystemExit(f"error: {source.relative_to(ROOT)} is missing: run python benchmarks/fewshot_grid.py eval")
    out = RUNS / "eval" / task / f"{seed}_first{max_eval}.json"
    if not out.exists():
        raw = json.loads(source.read_text())
        cells.write_text(out, json.dumps(dict(list(raw.items())[:max_eval])))
    return out


def start_model(model: str, task: str, seed: int) -> str:
    run = MODELS[model]
    if run is None:
        return SPLADE
    path = FEWSHOT_RUNS / "mlm" / run / task / f"seed{seed}" / "model"
    if not (path / "config.json").exists():
        raise SystemExit(f"error: {path.relative_to(ROOT)} is missing: run python benchmarks/fewshot_grid.py mlm")
    return str(path)


def _gentune(argv: list[str], out: Path, label: str) -> dict:
    """One gentune command into ``out`` (skipped when it finished before); its summary.json or metrics.json."""
    done = out / ("metrics.json" if argv[0] == "kernel" else "summary.json")
    if not done.exists():
        if argv[0] == "finetune" and out.exists() and not (out / "config.yaml").exists():
            shutil.rmtree(out)
        runner.gentune(argv, label=label)
    return cells.read_json(done)


def _predict(checkpoint: str, task: str, data: str):
    """A fine-tuned checkpoint, its encoded inputs of ``data`` and its per-example predictions there."""
    import numpy as np

    from gentune.diagnostics.ntk import outputs
    from gentune.kernel import encode_examples
    from gentune.tasks.text_classification import load, read

    loaded = load(checkpoint, task)
    x = encode_examples(loaded.tokenizer, loaded.task, read(data, loaded), loaded.prompt, loaded.max_length)
    return loaded, x, np.asarray(outputs(loaded.model, x).argmax(1))


def run_cell(model: str, setting: str, task: str, seed: int, max_eval: int) -> dict:
    import numpy as np

    from gentune.diagnostics.ntk import kernel, kernel_change, linearization
    from gentune.metrics import compute

    spec = _spec(task)
    train, dev = kshot(task, seed)
    test = eval_file(task, seed, max_eval)
    base = start_model(model, task, seed)
    where = RUNS / model / setting / task / f"seed{seed}"
    objective = ["--objective", "prompt"] if setting == "prompt" else []
    if setting == "prompt":
        start = ["--model", base]
        init_checkpoint = None
    else:  # the head starts from a linear probe on the frozen CLS features
        probe = where / "probe"
        _gentune(["finetune", "--task", task, "--model", base, "--train", str(train), "--dev", str(dev), "--seed",
                  str(seed), "--linear-probe", "--lr", PROBE["lr"], "--max-steps", str(PROBE["steps"]),
                  "--batch-size", str(BATCH), "--out", str(probe.relative_to(ROOT))], probe, f"probe {task} {seed}")
        start = ["--init", str(probe.relative_to(ROOT))]
        init_checkpoint = str(probe / "best")
    record = {"model": model, "setting": setting, "task": task, "seed": seed, "max_eval": max_eval}
    fits = {}
    for opt, lrs in (("sgd", SGD_LRS), ("adamw", ADAM_LRS)):
        runs = {}
        for lr in lrs:
            out = where / f"{opt}_lr{lr}"
            summary = _gentune(["finetune", "--task", task, *start, *objective, "--train", str(train), "--dev",
                                str(dev), "--seed", str(seed), "--lr", lr, "--max-steps", str(STEPS),
                                "--batch-size", str(BATCH), "--out", str(out.relative_to(ROOT)), "--set",
                                f"optimizer={opt}", f"eval_steps={EVAL_EVERY}", "eval_every_epochs=0"], out,
                               f"{opt} {lr} {task} {seed}")
            runs[lr] = summary["best_dev"][spec.main_metric]
        lr = max(runs, key=runs.get)  # the k-shot dev chooses
        loaded, x_eval, pred = _predict(str(where / f"{opt}_lr{lr}" / "best"), task, str(test))
        labels = np.asarray(json_labels(test, loaded))
        fits[opt] = {"lr": lr, "dev_by_lr": runs, "pred": pred, "model": loaded.model,
                     "metrics": compute(spec.metrics, pred, labels)}
    kern = {}
    binary = spec.num_labels == 2
    for name, kind, solver in (("sgd-lstsq", "sgd", "lstsq"), ("asym-asym", "asym-signgd", "asym")):
        if solver == "asym" and not binary:
            continue
        out = where / f"kernel_{name}"
        source = ["--checkpoint", init_checkpoint] if init_checkpoint else ["--model", base]
        metrics = _gentune(["kernel", *source, "--task", task, "--objective",
                            "prompt" if setting == "prompt" else "classification", "--train", str(train), "--eval",
                            str(test), "--kernel", kind, "--solver", solver, "--out", str(out.relative_to(ROOT)),
                            "--set", "progress=false"], out, f"kernel {name} {task} {seed}")
        kpred = np.asarray(cells.read_json(out / "predictions.json")["prediction"])
        kern[name] = {"metrics": metrics["solver_metrics"], "seconds": metrics["seconds"],
                      "agreement": {opt: float(np.mean(kpred == fits[opt]["pred"])) for opt in fits}}
        record["init_metrics"] = metrics["model_metrics"]
        record["trivial_metrics"] = metrics["trivial_metrics"]
    # the linearization test, and how far the training kernel moves
    init_model = _initial(setting, base, task, init_checkpoint)
    x_train = _train_inputs(init_model, task, train)
    k0 = kernel(init_model["model"], x_train)
    lin = {}
    for opt, fit in fits.items():
        test_lin = linearization(init_model["model"], fit["model"], x_eval)
        lin[opt] = {"explained": test_lin["explained"], "relative_change": test_lin["relative_change"],
                    "cosine": test_lin["cosine"],
                    "kernel_change": kernel_change(k0, kernel(fit["model"], x_train))}
    record.update(
        finetune={opt: {k: v for k, v in fit.items() if k in ("lr", "dev_by_lr", "metrics")} for opt, fit in
                  fits.items()},
        kernels=kern, linearization=lin, n_eval=int(len(labels)),
        finetune_agreement=float(np.mean(fits["sgd"]["pred"] == fits["adamw"]["pred"])))
    for opt in fits:
        shutil.rmtree(where / f"{opt}_lr{fits[opt]['lr']}" / "best", ignore_errors=True)
    return record


def json_labels(path: Path, loaded) -> list:
    from gentune.tasks.text_classification import read

    return list(read(str(path), loaded)["label"])


def _initial(setting: str, base: str, task: str, checkpoint: str | None) -> dict:
    """The model at the start of fine-tuning, loaded the way the fine-tuning runs load it."""
    from gentune.data.prompts import packaged
    from gentune.models.hf import load_tokenizer
    from gentune.tasks.text_classification import load, prompt_model

    if checkpoint:
        loaded = load(checkpoint, task)
        return {"model": loaded.model.eval(), "tokenizer": loaded.tokenizer, "prompt": None, "max_length": 128}
    tok = load_tokenizer(base)
    prompt = packaged(task)
    model, _ = prompt_model(base, tok, prompt, note=False)
    return {"model": model.eval(), "tokenizer": tok, "prompt": prompt, "max_length": 128}


def _train_inputs(init: dict, task: str, train: Path) -> dict:
    from gentune.data.glue import read_file
    from gentune.kernel import encode_examples

    spec = _spec(task)
    return encode_examples(init["tokenizer"], spec, read_file(spec, train), init["prompt"], init["max_length"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    p.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--settings", nargs="+", default=SETTINGS, choices=SETTINGS)
    p.add_argument("--max-eval", type=int, default=500)
    p.add_argument("--dry-run", action="store_true", help="how many cells are left")
    args = p.parse_args()
    todo = [(m, s, t, seed) for m in args.models for s in args.settings for t in args.tasks for seed in args.seeds]
    left = [c for c in todo if not (RESULTS / c[0] / c[1] / f"{c[2]}_seed{c[3]}.json").exists()]
    if args.dry_run:
        print(f"{len(left)} of {len(todo)} cells left")
        return 0
    for model, setting, task, seed in left:
        cell = RESULTS / model / setting / f"{task}_seed{seed}.json"
        t0 = time.time()
        record = run_cell(model, setting, task, seed, args.max_eval)
        record.update(command=shlex.join([sys.executable, *sys.argv]), machine=machine(), commit=commit(),
                      date=dt.date.today().isoformat(), wall_seconds=time.time() - t0)
        cells.write_json(cell, record)
        k = record["kernels"]["sgd-lstsq"]["metrics"]
        print(f"[cell] {model} {setting} {task} {seed}: sgd {record['finetune']['sgd']['metrics']} adam "
              f"{record['finetune']['adamw']['metrics']} kernel {k} [{time.time() - t0:.0f} s]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
