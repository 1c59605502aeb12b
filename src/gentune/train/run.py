"""``run``: one training run in an output folder, on top of :func:`gentune.train.fit`.

OUT holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one line per optimizer step and per
evaluation), ``best/`` (fine-tuning: the best model on the task's main metric) or the final model (pretraining),
``checkpoint/`` (the resume checkpoint, every ``save_steps`` and at each epoch end; removed at the end unless
``keep_checkpoint``), the plots and ``summary.json``. Rerunning the same command resumes from the checkpoint and
ends with the same metrics as an uninterrupted run; a finished run returns its summary; a different config in the
same OUT is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from ..config import dump_yaml, load_saved
from ..errors import GentuneError
from ..fs import (LOCK, io_error, write_errors, dumps_strict, folder_lock, recover_dir, swap_into, write_json_atomic,
                  write_text_atomic)
from ..regularizers.base import parse_specs
from ..report import read_log
from .job import Job
from .loop import Fit, Hooks, check_job, fit
from .resume import check_files, read_state
from .state import TrainState, make_accelerator

CHECKPOINT = "checkpoint"
# Keys that do not change the result may differ between the original command and its rerun.
IGNORED_ON_RERUN = {"out", "save_steps", "keep_checkpoint", "eval_batch_size", "overwrite", "report_to", "log_every"}
# A finished run that kept its checkpoint trains further when only these grow (the schedule is recomputed for the
# new length, as the Hugging Face Trainer does on resume).
EXTENDABLE = {"epochs", "max_steps"}


class _Log:
    """Append-only JSONL metrics log; on resume, lines past the checkpoint's step are dropped first, and so is an
    ``eval_train`` record (the end of the run scores the training examples again)."""

    def __init__(self, path: Path, enabled: bool, resume_step: int):
        self.path, self.enabled = path, enabled
        if enabled and path.exists():
            # read_log drops a line cut by a kill; a fresh run (resume_step -1) starts the log anew
            keep = [r for r in read_log(path) if r.get("step", 0) <= resume_step and r.get("type") != "eval_train"]
            write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in keep))

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(dumps_strict(record) + "\n")  # a NaN loss is written null, and named in "nonfinite"


def _input_paths(cfg) -> list[Path]:
    """The data and model paths a config reads (its own fields and its methods' ``data`` options) that exist."""
    names = ("data", "dev", "train", "data_dir", "init", "model", "pretrain_data")
    found = [getattr(cfg, n, None) for n in names]
    for options in [*getattr(cfg, "regularizer_options", {}).values(), *getattr(cfg, "objective_options", {}).values()]:
        found.append(options.get("data"))
    return [Path(str(p)).expanduser() for p in found if isinstance(p, str) and p and Path(p).expanduser().exists()]


def _check_out(out: Path, cfg) -> None:
    """OUT can hold this run, before anything is loaded or written: a folder (or one to make), writable, not inside
    any data it reads, and not a folder of something else (unless ``overwrite``)."""
    if out.exists() and not out.is_dir():
        raise GentuneError(f"--out {out}: exists and is not a folder")
    target = out.resolve()
    for p in _input_paths(cfg):
        source = p.resolve()
        if target == source or source in target.parents:
            raise GentuneError(f"--out {out}: inside the input {p}; a run writes its files there (use another --out)")
    if out.is_dir():
        try:
            probe = out / f".gentune-probe-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as e:
            raise GentuneError(f"--out {out}: cannot write in it ({e.strerror or e})") from None
        names = sorted({f.name for f in out.iterdir()} - {LOCK})
        if "config.yaml" not in names and names and not cfg.overwrite:  # no run of ours: whose files are these?
            raise GentuneError(f"--out {out}: holds files of its own ({', '.join(names[:3])}"
                               f"{', ...' if len(names) > 3 else ''}) and no gentune run; use an empty or new folder "
                               "(or --set overwrite=true to write into it anyway)")


def _make_out(out: Path) -> bool:
    """Create OUT if needed; whether it was created (so a failed start can take it away again)."""
    if out.is_dir():
        return False
    try:
        out.mkdir(parents=True)
    except OSError as e:
        raise GentuneError(f"--out {out}: cannot create it ({e.strerror or e})") from None
    return True


def _check_out_dir(out: Path, cfg) -> str:
    """'new', 'resume' or 'done'; a different config in the same OUT is an error, not a silent overwrite."""
    import yaml

    saved = out / "config.yaml"
    if not saved.exists():
        return "new"
    if not (out / "summary.json").exists() and recover_dir(out / CHECKPOINT) is None:
        return "new"  # a run that failed before its first checkpoint: nothing to keep, start over
    try:
        old = yaml.safe_load(saved.read_text()) or {}
        if (out / "summary.json").exists():
            json.loads((out / "summary.json").read_text())
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GentuneError(f"{out} holds a damaged run ({type(e).__name__} in its config.yaml or summary.json); "
                           "use another --out or delete it") from None
    if not isinstance(old, dict):
        raise GentuneError(f"{saved}: not a run's config (expected a mapping); use another --out or delete it")
    try:  # through the same typed path: an earlier version's keys and spellings read as they are meant now
        old = load_saved(type(cfg), old, str(saved)).to_dict()
    except GentuneError:
        pass  # compared as written
    new = cfg.to_dict()
    defaults = type(cfg)().to_dict()  # a key added to the config after the run was made has its default there
    diff = [k for k in new if k not in IGNORED_ON_RERUN and old.get(k, defaults[k]) != new[k]]
    if diff and _extends(out, diff, old, new, defaults):
        return "extend"
    if diff:
        k = diff[0]
        hint = ("; a finished run trains further when it kept its checkpoint (--set keep_checkpoint=true) and "
                "epochs or max_steps grow" if set(diff) <= EXTENDABLE else "")
        raise GentuneError(f"{out} holds a run with a different config ({k}: {old.get(k)!r} there, {new[k]!r} now); "
                           f"use another --out or delete it{hint}")
    if (out / "summary.json").exists():
        return "done"
    return "resume" if recover_dir(out / CHECKPOINT) else "new"


def _extends(out: Path, diff: list[str], old: dict, new: dict, defaults: dict) -> bool:
    """Whether a rerun asks a finished run that kept its checkpoint to train further: only epochs or max_steps
    differ, and neither shrinks."""
    if not set(diff) <= EXTENDABLE or not (out / "summary.json").exists() or recover_dir(out / CHECKPOINT) is None:
        return False
    return all((new[k] or 0) >= (old.get(k, defaults[k]) or 0) for k in diff)


def save_resume_checkpoint(accelerator, out: Path, save: Callable[[Path], None]) -> None:
    """OUT/checkpoint: what ``save(directory)`` writes (the training state, :mod:`gentune.train.resume`), into a
    temporary folder swapped in once complete, so a kill never leaves a half-written checkpoint."""
    ckpt = out / CHECKPOINT
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        save(tmp)
    except write_errors() as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise io_error(ckpt, e) from e
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        swap_into(tmp, ckpt)
    accelerator.wait_for_everyone()


def begin(cfg):
    """Check the config and OUT; returns ``(accelerator, status)`` to train, or the summary of a finished run.

    Seeds every RNG, so the job built next (model initialisation) depends only on ``cfg.seed``.
    """
    from accelerate.utils import set_seed

    out = Path(cfg.out)
    status = _check_out_dir(out, cfg)
    if status == "done":
        return json.loads((out / "summary.json").read_text())
    accelerator = make_accelerator(cfg, str(out))
    for key in ("batch_size", "eval_batch_size"):
        if getattr(cfg, key) % accelerator.num_processes:
            raise GentuneError(f"{key} {getattr(cfg, key)} is not divisible by {accelerator.num_processes} processes")
    set_seed(cfg.seed)
    return accelerator, status


def _check(cfg) -> None:
    """What can be checked before OUT is touched: values, regularizer names and options, OUT itself."""
    from ..registry import create

    cfg.validate()
    for name, options, _ in parse_specs([{n: cfg.regularizer_options.get(n, {})} for n in cfg.regularizer],
                                        unique=True):
        create("regularizer", name, **options)  # unknown names and bad option values fail before any work
    _check_out(Path(cfg.out), cfg)


class _RunFolder(Hooks):
    """:func:`fit`'s results written to OUT: the metrics log, the best model, resume checkpoints."""

    def __init__(self, cfg, job: Job, accelerator, resume_step: int):
        self.cfg, self.job, self.acc, self.out = cfg, job, accelerator, Path(cfg.out)
        self.main = accelerator.is_main_process
        self.metrics = _Log(self.out / "metrics.jsonl", self.main, resume_step)

    def log(self, record: dict) -> None:
        self.metrics.write(record)
        if self.acc.trackers:  # the same values, for TensorBoard, W&B, MLflow, ...
            prefix = {"eval": "eval/", "eval_train": "eval_train/"}.get(record["type"], "train/")
            values = {prefix + k: v for k, v in record.items() if k not in ("type", "step")
                      and isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.acc.log(values, step=record["step"])

    def evaluated(self, model, metrics: dict, state: TrainState, best: bool) -> None:
        if best and self.cfg.save_model and self.job.save is not None and self.job.save_best:
            self.acc.wait_for_everyone()
            unwrapped = self.acc.unwrap_model(model)
            if self.main and finite_weights(unwrapped):  # a diverged model never replaces a good best/
                self.job.save(unwrapped, self.out / "best", {**self.job.meta, "step": state.step, "dev": metrics})

    def checkpoint(self, state: TrainState, save) -> None:
        save_resume_checkpoint(self.acc, self.out, save)

    def finished(self, state: TrainState, save) -> None:
        if self.cfg.keep_checkpoint:  # a final resume checkpoint, for inspection or continued training
            save_resume_checkpoint(self.acc, self.out, save)


def hyperparameters(cfg) -> dict:
    """The resolved config flattened to scalars (``regularizer_options.smart.adv_weight``), as trackers take it."""
    flat = {}

    def walk(value, key):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, (list, tuple)):
            flat[key] = ",".join(map(str, value))
        elif value is None or isinstance(value, (bool, int, float, str)):
            flat[key] = "none" if value is None else value
        else:
            flat[key] = str(value)

    walk(cfg.to_dict(), "")
    return flat


def finite_weights(model: torch.nn.Module) -> bool:
    """Whether every floating-point parameter and buffer of ``model`` is finite."""
    return all(bool(torch.isfinite(t).all()) for t in (*model.parameters(), *model.buffers()) if t.is_floating_point())


def _gap(result: Fit) -> dict:
    """eval_train's fields: the final model on its training examples, and the gap to the final dev evaluation
    (:func:`gentune.diagnostics.generalization_gap`: positive means worse on the dev data)."""
    if result.final_train is None:
        return {}
    from ..diagnostics.transfer import generalization_gap

    gap = generalization_gap(result.final_train, result.final_dev) if result.final_dev else {}
    return {"final_train": result.final_train, "generalization_gap": gap or None}


def summarize(cfg, job: Job, result: Fit) -> dict:
    """summary.json: the job's own fields, the best and final evaluations, the run's size, speed and machine."""
    state, acc = result.state, result.accelerator
    return {
        **job.summary,
        "seed": cfg.seed,
        "regularizers": list(cfg.regularizer),
        "main_metric": job.main_metric,
        "best_dev": state.best_dev,
        "best_step": state.best_step,
        "final_dev": result.final_dev,
        **_gap(result),
        "train_examples": len(job.train_set),
        "dev_examples": len(job.dev_set) if job.dev_set is not None and job.evaluate is not None else 0,
        "train_steps": state.step,
        "nonfinite_steps": state.nonfinite_steps,  # skipped: a non-finite loss or gradient
        "epochs": state.step / result.steps_per_epoch,
        "train_seconds": state.train_seconds,
        "seconds_per_step": state.train_seconds / max(state.step, 1),
        "examples_per_second": state.examples / max(state.train_seconds, 1e-9),
        "loop_seconds": state.loop_seconds,
        # the loop's own share of its time (data loading, logging); step time is the rest
        "loop_overhead": max(0.0, 1.0 - state.train_seconds / state.loop_seconds) if state.loop_seconds else None,
        "num_processes": acc.num_processes,
        "device": str(acc.device),
        "mixed_precision": acc.mixed_precision,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _finish(cfg, job: Job, result: Fit, summary: dict) -> None:
    """On the main process: the final model (pretraining, or fine-tuning without validation data), the job's own
    end (sample images), the plots, summary.json; then the resume checkpoint goes."""
    from ..report import plot_run

    out = Path(cfg.out)
    dev = job.dev_set is not None and job.evaluate is not None
    if cfg.save_model and job.save is not None and (not job.save_best or not dev):
        # pretraining keeps its final model; so does fine-tuning without validation data (no best to pick)
        name = job.final_name if not job.save_best else "best"
        if not finite_weights(result.model):
            raise GentuneError(f"{out}: the final model has non-finite weights; not saved as {name}/")
        job.save(result.model, out / name, {**job.meta, "step": result.state.step, "dev": result.final_dev})
    if job.on_end is not None:
        job.on_end(result.model, out)
    plot_run(out, job.main_metric)
    write_json_atomic(out / "summary.json", summary)
    if not cfg.keep_checkpoint:
        for leftover in (CHECKPOINT, CHECKPOINT + ".old", CHECKPOINT + ".tmp"):
            shutil.rmtree(out / leftover, ignore_errors=True)


def run(cfg, job: Job | Callable) -> dict:
    """Train in OUT as ``cfg`` says and return the run summary (also OUT/summary.json).

    Args:
        cfg: a :class:`gentune.config.RunConfig` (a task's config).
        job: a :class:`Job`, or ``job(cfg) -> Job`` (a task's ``build``), called once OUT is checked and the RNGs
            are seeded, so that nothing is loaded for a finished run or a refused OUT.

    OUT is refused when it is a folder of something else, lies inside the data, or another run holds its lock; a
    start that fails before the run wrote anything leaves no folder behind.
    """
    _check(cfg)
    out = Path(cfg.out)
    main = int(os.environ.get("RANK", "0")) == 0  # before the accelerator exists: torchrun's rank
    created = _make_out(out) if main else False
    try:
        with folder_lock(out) if main else contextlib.nullcontext():
            return _run_in(cfg, job, out)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a failed start: nothing of the run to keep
        raise


def _run_in(cfg, job, out: Path) -> dict:
    started = begin(cfg)
    if isinstance(started, dict):
        return started
    accelerator, status = started
    checkpoint = recover_dir(out / CHECKPOINT) if status in ("resume", "extend") else None
    if checkpoint is not None:
        check_files(checkpoint)  # a damaged checkpoint fails before the model is built
    if not isinstance(job, Job):
        job = job(cfg)
    check_job(job, cfg)  # before config.yaml: a rerun with the option fixed starts clean
    if cfg.report_to:
        accelerator.init_trackers(out.name or "gentune", config=hyperparameters(cfg))
    if (checkpoint is None or status == "extend") and accelerator.is_main_process:
        write_text_atomic(out / "config.yaml", dump_yaml(cfg))  # an extended run: its new length
    if status == "extend" and accelerator.is_main_process:
        (out / "summary.json").unlink()  # unfinished again: a kill from here on resumes
        print(f"{out}: a finished run with its checkpoint kept; training further from step "
              f"{read_state(checkpoint).step}", file=sys.stderr)
    accelerator.wait_for_everyone()
    resume_step = read_state(checkpoint).step if checkpoint else -1
    result = fit(job, cfg, accelerator, _RunFolder(cfg, job, accelerator, resume_step), checkpoint)
    summary = summarize(cfg, job, result)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _finish(cfg, job, result, summary)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


__all__ = ["CHECKPOINT", "begin", "run", "save_resume_checkpoint", "summarize"]
