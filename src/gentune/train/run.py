"""``run``: one training run in an output folder, on top of :func:`gentune.train.fit`.

OUT holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one line per optimizer step and per
evaluation), ``best/`` (fine-tuning: the best model on the task's main metric) or the final model (pretraining),
``checkpoint/`` (the resume checkpoint, every ``save_steps`` and at each epoch end; removed at the end unless
``keep_checkpoint``), the plots and ``summary.json``. Rerunning the same command resumes from the checkpoint and
ends with the same metrics as an uninterrupted run; a finished run returns its summary; a different config in the
same OUT is refused.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from ..config import dump_yaml, load_saved
from ..errors import GentuneError
from ..fs import recover_dir, swap_into, write_json_atomic, write_text_atomic
from ..regularizers.base import parse_specs
from ..report import read_log
from .job import Job
from .loop import Fit, Hooks, fit
from .state import STATE_FILE, TrainState, make_accelerator

CHECKPOINT = "checkpoint"
# Keys that do not change the result may differ between the original command and its rerun.
IGNORED_ON_RERUN = {"out", "save_steps", "keep_checkpoint", "eval_batch_size"}


class _Log:
    """Append-only JSONL metrics log; on resume, lines past the checkpoint's step are dropped first."""

    def __init__(self, path: Path, enabled: bool, resume_step: int):
        self.path, self.enabled = path, enabled
        if enabled and path.exists():
            # read_log drops a line cut by a kill; a fresh run (resume_step -1) starts the log anew
            keep = [r for r in read_log(path) if r.get("step", 0) <= resume_step]
            write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in keep))

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def _check_out_writable(out: Path) -> None:
    """OUT is a folder, or can be made one, before any model or data is loaded."""
    if out.exists() and not out.is_dir():
        raise GentuneError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GentuneError(f"--out {out}: cannot create it ({e.strerror or e})") from None


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
    if diff:
        k = diff[0]
        raise GentuneError(f"{out} holds a run with a different config ({k}: {old.get(k)!r} there, {new[k]!r} now); "
                           f"use another --out or delete it")
    if (out / "summary.json").exists():
        return "done"
    return "resume" if recover_dir(out / CHECKPOINT) else "new"


def save_resume_checkpoint(accelerator, out: Path, state: TrainState) -> None:
    """OUT/checkpoint: accelerate's state (model, optimizer, scheduler, regularizers, RNGs) and the loop's, written
    to a temporary folder and swapped in."""
    ckpt = out / CHECKPOINT
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(tmp / STATE_FILE, asdict(state))
        swap_into(tmp, ckpt)
    accelerator.wait_for_everyone()


def begin(cfg):
    """Check the config and OUT; returns ``(accelerator, status)`` to train, or the summary of a finished run.

    Seeds every RNG, so the job built next (model initialisation) depends only on ``cfg.seed``.
    """
    from accelerate.utils import set_seed

    from ..registry import create

    cfg.validate()
    for name, options, _ in parse_specs([{n: cfg.regularizer_options.get(n, {})} for n in cfg.regularizer],
                                        unique=True):
        create("regularizer", name, **options)  # unknown names and bad option values fail before any work
    out = Path(cfg.out)
    _check_out_writable(out)
    status = _check_out_dir(out, cfg)
    if status == "done":
        return json.loads((out / "summary.json").read_text())
    accelerator = make_accelerator(cfg)
    for key in ("batch_size", "eval_batch_size"):
        if getattr(cfg, key) % accelerator.num_processes:
            raise GentuneError(f"{key} {getattr(cfg, key)} is not divisible by {accelerator.num_processes} processes")
    set_seed(cfg.seed)
    return accelerator, status


class _RunFolder(Hooks):
    """:func:`fit`'s results written to OUT: the metrics log, the best model, resume checkpoints."""

    def __init__(self, cfg, job: Job, accelerator, resume_step: int):
        self.cfg, self.job, self.acc, self.out = cfg, job, accelerator, Path(cfg.out)
        self.main = accelerator.is_main_process
        self.metrics = _Log(self.out / "metrics.jsonl", self.main, resume_step)

    def log(self, record: dict) -> None:
        self.metrics.write(record)

    def evaluated(self, model, metrics: dict, state: TrainState, best: bool) -> None:
        if best and self.cfg.save_model and self.job.save is not None and self.job.save_best:
            self.acc.wait_for_everyone()
            if self.main:
                self.job.save(self.acc.unwrap_model(model), self.out / "best",
                              {**self.job.meta, "step": state.step, "dev": metrics})

    def checkpoint(self, state: TrainState) -> None:
        save_resume_checkpoint(self.acc, self.out, state)

    def finished(self, state: TrainState) -> None:
        if self.cfg.keep_checkpoint:  # a final resume checkpoint, for inspection or continued training
            save_resume_checkpoint(self.acc, self.out, state)


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
        "train_examples": len(job.train_set),
        "dev_examples": len(job.dev_set) if job.dev_set is not None and job.evaluate is not None else 0,
        "train_steps": state.step,
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
    """
    started = begin(cfg)
    if isinstance(started, dict):
        return started
    accelerator, status = started
    if not isinstance(job, Job):
        job = job(cfg)
    out = Path(cfg.out)
    checkpoint = recover_dir(out / CHECKPOINT) if status == "resume" else None
    if checkpoint is None and accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "config.yaml", dump_yaml(cfg))
    accelerator.wait_for_everyone()
    resume_step = json.loads((checkpoint / STATE_FILE).read_text())["step"] if checkpoint else -1
    result = fit(job, cfg, accelerator, _RunFolder(cfg, job, accelerator, resume_step), checkpoint)
    summary = summarize(cfg, job, result)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _finish(cfg, job, result, summary)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


__all__ = ["CHECKPOINT", "begin", "run", "save_resume_checkpoint", "summarize"]
