"""The CIFAR-10 protocol the image benchmarks share (pretrain_grid.py, radreg_grid.py, diagnostics_study.py):
the tasks, the pretraining and fine-tuning recipes, where each grid's runs live, and the cell runners.

A pretraining cell is ``RESULTS/pretrain/NAME.json`` beside its run ``RUNS/pretrain/NAME``; a fine-tuning cell is
``RESULTS/finetune/TASK/ARM_seedS.json`` beside ``RUNS/finetune/TASK/ARM/seedS``. Both are skipped once written;
an interrupted run resumes from its checkpoint.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import shutil
import time
from pathlib import Path

from . import cells, runner
from .paths import RESULTS, ROOT, RUNS
from .provenance import machine, matmul_gflops

DEFAULT_DATA = "../shared/data/cifar10/cifar10_train_jpg.tar.gz"  # relative to the repository root
SEEDS = [13, 21, 42, 87, 100]
TASKS = {"cat-dog": ["--classes", "cat,dog", "--labels-per-class", "500"],
         "cifar10": ["--labels-per-class", "100"]}
# objective -> (encoder, pretraining flags); the budgets fit about 30 minutes of 2 cores each (see the README)
PRETRAIN = {"mae": ("vit-tiny-p4", ["--epochs", "8"]),
            # random regions, not the central square: Pathak et al. found them the better features for classification
            "context-encoder": ("conv-small", ["--epochs", "30", "--lr", "1e-3", "--set", "context-encoder.mask=regions"])}
TUNE_LRS = ["1e-3", "3e-4"]  # the fine-tuning rates pretrain_grid.py chooses from; the first is the default
# the tuning split: the reported held-out images (split seed 0) removed, then 5,000 of the rest held out with
# split seed 1; tuning runs (pretraining and fine-tuning alike) use it, with seed 7, not a reported seed
TUNE_SPLIT = ("--set", "split_seed=1", "--set", "exclude_split_seed=0")
TUNE_SEED = 7
TUNE_EPOCHS = "2"  # the shortened pretraining of radreg_grid.py's tuning runs
SHORT = {"mae": "mae-short", "context-encoder": "context-encoder-short"}  # those runs of the plain objectives
FINETUNE = ["--epochs", "30", "--batch-size", "64", "--lr", TUNE_LRS[0], "--set", "weight_decay=0.05",
            "--set", "warmup_ratio=0.1", "--set", "eval_every_epochs=5", "--set", "eval_batch_size=500",
            "--set", "save_model=false"]
# each grid's cells and runs; the other image scripts read them (plain arms, checkpoints)
PLAIN_RESULTS, PLAIN_RUNS = RESULTS / "pretrain", RUNS / "pretrain_grid"
RADREG_RESULTS, RADREG_RUNS = RESULTS / "radreg", RUNS / "radreg_grid"


def add_jobs_flag(parser) -> None:
    """The image grids' ``--jobs N`` (``args.jobs``, at least 1): runs at once, each run's output then in a log."""
    parser.add_argument("--jobs", type=_at_least_1, default=1, metavar="N",
                        help="runs at once (default 1); each run's output then goes to RUN_FOLDER.log")


def _at_least_1(text: str) -> int:
    return max(1, int(text))


def evals(out: Path) -> list[dict]:
    """The evaluation records of a run's metrics.jsonl."""
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if r.get("type") == "eval"]


def run_pretrain(name: str, objective: str, encoder: str, flags: list[str], args, results: Path, runs: Path,
                 need_encoder: bool = False) -> Path:
    """One pretraining run as a cell: ``results/pretrain/NAME.json``, the run in ``runs/pretrain/NAME``.

    Args:
        name: the cell's and run's name.
        objective, encoder: ``gentune pretrain --objective --model``.
        flags: the rest of the command (budget, options).
        args: the script's arguments: ``data``, ``pretrain_extra`` (appended flags), ``jobs``.
        results, runs: the grid's folders.
        need_encoder: a finished cell whose encoder is gone (runs/ is not committed, a later session may lack
            it) is pretrained again with the same command and seed, for the fine-tuning cells that still need it.
    """
    cell = results / "pretrain" / f"{name}.json"
    out = runs / "pretrain" / name
    encoder_kept = not need_encoder or (out / "encoder").is_dir()
    if encoder_kept and cells.finished(cell, f"pretrain {name}"):
        return cell
    original = None
    if cell.exists():
        print(f"[redo] pretrain {name}: its encoder is not in {out.relative_to(ROOT)} any more", flush=True)
        original = cells.redo_record(cells.read_json(cell))
        shutil.rmtree(out, ignore_errors=True)  # else gentune would return the finished run's summary
    cmd = ["pretrain", "--objective", objective, "--model", encoder, "--data", args.data,
           "--out", str(out.relative_to(ROOT)), *flags, *args.pretrain_extra]
    resumed = resumed_step(out)
    t0 = time.time()
    runner.gentune(cmd, args.jobs)
    summary = cells.read_json(out / "summary.json")
    # a run cut by a session's end resumes from its checkpoint: wall_seconds is then this process's part only,
    # and summary.train_seconds (the loop's, carried by the checkpoint) the whole run's
    cells.write_json(cell, {"objective": objective, "encoder": encoder, "command": "gentune " + shlex.join(cmd),
                            "date": dt.date.today().isoformat(), "machine": machine(),
                            "wall_seconds": time.time() - t0, "resumed_from_step": resumed, "summary": summary,
                            **dict(zip(("matmul_gflops", "matmul_device"), matmul_gflops())), "evals": evals(out),
                            **cells.redone_of(original, summary)})
    return cell


def resumed_step(out: Path) -> int | None:
    """The optimizer step a rerun of the run in OUT resumes from (its resume checkpoint's), None for a fresh run or
    one whose checkpoint gentune will refuse anyway."""
    from gentune.errors import GentuneError
    from gentune.train.resume import read_state

    if not (out / "checkpoint").is_dir():
        return None
    try:
        return read_state(out / "checkpoint").step
    except GentuneError:
        return None


def run_finetune(task: str, arm: str, seed: int, init: Path | None, encoder: str, args, results: Path,
                 runs: Path, extra: tuple[str, ...] = (), make_init=None) -> Path:
    """One fine-tuning cell with the grid recipe (:data:`FINETUNE`): ``results/finetune/TASK/ARM_seedS.json``.

    Args:
        task: a key of :data:`TASKS`.
        arm: the cell's arm name.
        seed: the fine-tuning seed.
        init: the encoder folder to start from; None: ``encoder`` from scratch.
        encoder: the encoder's name (used from scratch).
        args: the script's arguments: ``data``, ``finetune_extra`` (appended flags), ``jobs``.
        results, runs: the grid's folders.
        extra: flags after the recipe (they override it: ``--lr``, the tuning split).
        make_init: called to pretrain ``init`` again when it is missing.
    """
    cell = results / "finetune" / task / f"{arm}_seed{seed}.json"
    if cells.finished(cell, f"{task} {arm} seed {seed}"):
        return cell
    if init is not None and not init.exists() and make_init is not None:
        make_init()
    start = ["--init", str(init.relative_to(ROOT))] if init else ["--init", "none", "--model", encoder]
    out = runs / "finetune" / task / arm / f"seed{seed}"
    cmd = ["finetune", "--task", "image-classification", "--data", args.data, *start, *TASKS[task],
           "--out", str(out.relative_to(ROOT)), "--seed", str(seed), *FINETUNE, *extra, *args.finetune_extra]
    t0 = time.time()
    runner.gentune(cmd, args.jobs)
    summary = cells.read_json(out / "summary.json")
    weights = init / "model.safetensors" if init is not None else None
    cells.write_json(cell, {"task": task, "arm": arm, "seed": seed, "command": "gentune " + shlex.join(cmd),
                            "date": dt.date.today().isoformat(), "machine": machine(),
                            "wall_seconds": time.time() - t0,
                            "init_sha256": cells.file_sha256(weights) if weights else None,
                            "summary": summary, "evals": evals(out)})
    return cell


def chosen_lr(task: str, arm: str, results: Path = PLAIN_RESULTS) -> str:
    """The fine-tuning rate pretrain_grid.py chose for an arm on a task (``results/tune/choice.json``; the default
    before its ``--stage tune`` has run). RadReg's pairs fine-tune with the plain arm's."""
    path = results / "tune" / "choice.json"
    choice = cells.read_json(path) if path.exists() else {}
    return choice.get(task, {}).get(arm, {}).get("lr", TUNE_LRS[0])


def pretrain_flags(objective: str, epochs: str | None = None, tuning: bool = False) -> list[str]:
    """The grid's pretraining flags for ``objective``; ``epochs`` replaces its budget, ``tuning`` adds the
    tuning split (:data:`TUNE_SPLIT`)."""
    flags = [*PRETRAIN[objective][1], *(TUNE_SPLIT if tuning else ())]
    if epochs is not None:
        flags[flags.index("--epochs") + 1] = epochs
    return flags


def plain_pretrain(objective: str, args, results: Path, runs: Path, need_encoder: bool = False) -> Path:
    """The objective's full pretraining (cell and run named after it), as pretrain_grid.py runs it."""
    return run_pretrain(objective, objective, PRETRAIN[objective][0], pretrain_flags(objective), args, results, runs,
                        need_encoder)


def short_pretrain(objective: str, args, results: Path, runs: Path, need_encoder: bool = False) -> Path:
    """The plain objective pretrained for :data:`TUNE_EPOCHS` on the tuning split, in ``results/tune`` and
    ``runs/tune``: radreg_grid.py's tuning reference (MAE's is also a checkpoint of diagnostics_study.py)."""
    return run_pretrain(SHORT[objective], objective, PRETRAIN[objective][0],
                        pretrain_flags(objective, TUNE_EPOCHS, tuning=True), args, results / "tune", runs / "tune",
                        need_encoder)


def radreg_flags(choice: dict, task: str, objective: str, args, runs: Path, tuning: bool = False) -> list[str]:
    """OBJECTIVE + RadReg pretraining flags: the full budget, or (``tuning``) :data:`TUNE_EPOCHS` on the tuning
    split, with ``task``'s training pool as RadReg's unlabeled data and ``choice``'s weight and head."""
    budget = pretrain_flags(objective, TUNE_EPOCHS if tuning else None, tuning)
    pool = downstream_pool(task, args.data, runs, tuning)
    return [*budget, "--radreg-data", str(pool.relative_to(ROOT)),
            "--set", f"radreg.weight={choice['weight']}", "--set", f"radreg.head={choice['head']}"]


def radreg_pretrain(task: str, choice: dict, objective: str, args, results: Path, runs: Path,
                    need_encoder: bool = False) -> Path:
    """OBJECTIVE + RadReg at the full budget, ``task``'s training pool as RadReg's data: the cell and run
    ``OBJECTIVE+radreg-TASK`` of radreg_grid.py."""
    return run_pretrain(f"{objective}+radreg-{task}", objective, PRETRAIN[objective][0],
                        radreg_flags(choice, task, objective, args, runs), args, results, runs, need_encoder)


def write_image_folder(folder: Path, stream, classes: list[str], indices=None) -> Path:
    """Images of ``stream`` (all, or those at ``indices``) as ``FOLDER/CLASS/NNNNN.png``, ``CLASS`` being
    ``classes[label]``; a ``.complete`` marker is written last, so a folder cut short by a kill is written again
    (a folder that has it is returned as it is)."""
    done = folder / ".complete"
    if done.exists():
        return folder
    from PIL import Image

    indices = range(len(stream)) if indices is None else indices
    for i in indices:
        target = folder / classes[stream.labels[i]]
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(stream.images[i]).save(target / f"{i:05d}.png")
    done.write_text(f"{len(indices)} images\n")
    return folder


def random_encoder(model: str, runs: Path) -> Path:
    """A randomly initialised encoder MODEL (torch seed 0) saved as an encoder checkpoint in ``runs/random/MODEL``
    (once): the untrained reference point of the diagnostics studies."""
    target = runs / "random" / model
    if not (target / "model.safetensors").exists():
        import torch

        from gentune.models.checkpoint import save_encoder
        from gentune.models.vision import create_encoder

        torch.manual_seed(0)
        save_encoder(create_encoder(model), target, {"objective": "none (random init)"})
    return target


def downstream_pool(task: str, data: str, runs: Path, tuning: bool = False) -> Path:
    """The task's training images without labels, written once as an image folder ``runs/downstream/TASK`` for
    ``--radreg-data``: the validation images held out (split seed 0), and with ``tuning`` the tuning split's
    validation images too (``runs/downstream-tune/TASK``)."""
    folder = runs / ("downstream-tune" if tuning else "downstream") / task
    if (folder / ".complete").exists():
        return folder
    from gentune.data.splits import held_out_split, select_classes

    train, _ = (held_out_split(data, None, 5000, 1, exclude_seed=0) if tuning
                else held_out_split(data, None, 5000, 0))
    classes = TASKS[task][1].split(",") if TASKS[task][0] == "--classes" else train.classes
    return write_image_folder(folder, select_classes(train, classes), classes)


def step_time_ratio(data: str, objective: str, radreg: dict, steps: int = 12, batch: int = 256) -> dict:
    """RadReg's extra pretraining step time: OBJECTIVE's steps (its grid encoder and options, batch 256) with and
    without RadReg (``radreg``: its options, e.g. weight, head, estimator), alternating, in one process (these
    machines are noisy: the two kinds of step see the same load); the median of ``steps`` after 2 warm-up ones.
    RadReg's pool is the training images (its cost does not depend on which images they are)."""
    import statistics

    import torch

    from gentune import registry
    from gentune.config import apply_overrides
    from gentune.data.images import TrainTransform
    from gentune.data.splits import held_out_split, pixel_stats
    from gentune.models.vision import create_encoder
    from gentune.regularizers.radreg import RadReg
    from gentune.tasks.image_pretraining import ImagePretrainingConfig

    encoder, flags = PRETRAIN[objective]
    # the grid's --set options, read as gentune pretrain reads them
    cfg = apply_overrides(ImagePretrainingConfig(objective=objective),
                          [flags[i + 1] for i, f in enumerate(flags) if f == "--set"])
    options = cfg.objective_options.get(objective, {})
    lr = float(flags[flags.index("--lr") + 1]) if "--lr" in flags else 1e-4
    train, _ = held_out_split(data, None, 5000, 0)
    mean, std = pixel_stats(train.images)
    transform = TrainTransform(32, (0.2, 1.0), mean=tuple(mean), std=tuple(std))
    loss_fn = registry.create("objective", objective, **options)
    times = {objective: [], f"{objective}+radreg": []}
    arms = {}
    for name in times:
        torch.manual_seed(0)
        model = loss_fn.build(create_encoder(encoder))
        regs = [RadReg(**radreg, mean=mean, std=std, images=train.images)] if name != objective else []
        arms[name] = (model, torch.optim.AdamW(model.parameters(), lr=lr), regs)
    for step in range(steps + 2):
        x = {"pixel_values": transform(torch.from_numpy(train.images[step * batch:(step + 1) * batch]))}
        for name, (model, opt, regs) in arms.items():
            t0 = time.perf_counter()
            loss = loss_fn(model, x)["loss"] + sum(sum(r(model, x, None).values()) for r in regs)
            loss.backward()
            opt.step()
            opt.zero_grad()
            if step >= 2:  # two warm-up steps
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"seconds_per_step": med, "ratio": med[f"{objective}+radreg"] / med[objective], "steps": steps,
            "batch": batch, "objective": objective, "encoder": encoder, "radreg": dict(radreg),
            "threads": torch.get_num_threads(), "machine": machine()}


RADREG_WEIGHTS = {"mae": 0.1, "context-encoder": 1.0}  # radreg_grid.py's tuned lambdas, used before its choice exists


def radreg_weight(objective: str) -> float:
    """lambda for OBJECTIVE + RadReg: radreg_grid.py's tuned one (its choice file), else :data:`RADREG_WEIGHTS`."""
    path = RADREG_RESULTS / ("choice.json" if objective == "mae" else f"choice-{objective}.json")
    return float(cells.read_json(path)["weight"]) if path.exists() else RADREG_WEIGHTS[objective]
