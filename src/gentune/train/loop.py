"""``fit``: the one training loop, in process, writing no files (Hugging Face Accelerate).

Read top to bottom: prepare (data loaders, optimizer, schedule, regularizers) -> resume if asked -> one flat
``while step < total_steps`` loop over micro-batches, evaluating each epoch (and every ``eval_steps``) -> a final
evaluation. What a run does with its results (the output folder, the metrics log, the best model, resume
checkpoints) it does through :class:`Hooks`, so the same loop trains a single CLI run and dozens of short
fine-tunings in one process.

The same code runs on one CPU, one GPU, or ``accelerate launch --num_processes N``. Batches are split across
processes (``split_batches=True``): ``batch_size`` is the global batch, so N processes take the same optimizer
steps on the same examples as one process, except that an epoch's last, partial batch is completed with examples
from the epoch's first batch (accelerate's even batches, which keep the processes in step), so N > 1 repeats up
to ``batch_size - 1`` examples per epoch when ``batch_size`` does not divide the training set. Evaluation sees
every example exactly once either way.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..regularizers.base import (Context, Regularizer, as_regularizer, build_regularizers, collect_terms,
                                 regularized_loss)
from ..errors import GentuneError
from .job import Job
from .resume import load_training, save_training
from .state import Clock, EpochSampler, Progress, TrainState, adamw, make_accelerator

EPOCH_END = object()  # what the batch stream yields between epochs


class Hooks:
    """What a caller of :func:`fit` does with the results as they come (no-ops by default; :func:`run` writes
    them to its output folder)."""

    def log(self, record: dict) -> None:
        """A training step's record (``type`` train) or an evaluation's (``type`` eval)."""

    def evaluated(self, model, metrics: dict, state: TrainState, best: bool) -> None:
        """After each evaluation; ``best``: the main metric improved (``model`` is the prepared model)."""

    def checkpoint(self, state: TrainState, save: Callable[[Path], None]) -> None:
        """A resume point: every ``save_steps`` optimizer steps and at each epoch end (not while steps are being
        skipped for non-finite values). ``save(directory)`` writes what a resume needs into an existing directory;
        under several processes every process must call it."""

    def finished(self, state: TrainState, save: Callable[[Path], None]) -> None:
        """After the final evaluation, while the prepared objects still exist (a last resume checkpoint)."""


@dataclass
class Fit:
    """What :func:`fit` returns: the trained model (unwrapped, on its device), the final evaluation (None without
    dev data), the state (best evaluation, steps, times), and the run's length."""

    model: torch.nn.Module
    final_dev: dict | None
    state: TrainState
    total_steps: int
    steps_per_epoch: int
    regularizers: list[Regularizer]
    accelerator: Any
    final_train: dict | None = None  # ``eval_train``: the final model scored on its training examples


@dataclass
class _Parts:
    """What one fit trains with, after ``accelerator.prepare``."""

    job: Job
    cfg: Any
    accelerator: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sampler: EpochSampler
    train_dl: Any
    dev_dl: Any
    regularizers: list[Regularizer]
    total_steps: int
    steps_per_epoch: int
    train_eval_dl: Any = None  # eval_train: the training examples, evaluated like the dev data
    bad_loss: bool = False  # a micro-batch of the optimizer step in progress had a non-finite loss
    progress: Progress | None = None


def check_job(job: Job, cfg) -> None:
    """The run options that need something of the job: a :class:`GentuneError` naming the option."""
    if cfg.group_by_length and job.lengths is None:
        raise GentuneError("group_by_length: this task gives no example lengths (text tasks do)")
    if cfg.eval_train and (job.train_eval_set is None or job.evaluate is None):
        raise GentuneError("eval_train: this task cannot score its training examples (it gives no train_eval_set)")


def train_sampler(job: Job, cfg, seed: int | None = None) -> EpochSampler:
    """The order the loop draws ``job``'s training examples in: shuffled per epoch from ``seed`` (the run's by
    default), batches grouped by length when ``cfg.group_by_length``."""
    check_job(job, cfg)
    lengths = None
    if cfg.group_by_length:
        lengths = job.lengths() if callable(job.lengths) else job.lengths
    return EpochSampler(len(job.train_set), cfg.seed if seed is None else seed, lengths, cfg.batch_size)


def _prepare(job: Job, cfg, accelerator, regularizers) -> _Parts:
    """Data loaders, optimizer, linear schedule with warm-up, regularizers (set up with the run's length, model
    and the task's data), all through ``accelerator.prepare``."""
    from transformers import get_linear_schedule_with_warmup

    sampler = train_sampler(job, cfg)
    train_dl = torch.utils.data.DataLoader(job.train_set, batch_size=cfg.batch_size, sampler=sampler,
                                           collate_fn=job.collate, generator=torch.Generator())
    dev_dl = None
    if job.dev_set is not None and job.evaluate is not None:
        dev_dl = torch.utils.data.DataLoader(job.dev_set, batch_size=cfg.eval_batch_size, shuffle=False,
                                             collate_fn=job.dev_collate or job.collate)
    train_eval_dl = None
    if cfg.eval_train:
        train_eval_dl = torch.utils.data.DataLoader(job.train_eval_set, batch_size=cfg.eval_batch_size,
                                                    shuffle=False, collate_fn=job.dev_collate or job.collate)
    steps_per_epoch = math.ceil(len(train_dl) / cfg.grad_accum)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.epochs * steps_per_epoch)
    context = Context(total_steps=total_steps, model=job.model, data=dict(job.context))
    if regularizers is None:
        regularizers = build_regularizers([{name: cfg.regularizer_options.get(name, {})} for name in cfg.regularizer],
                                          unique=True)
    else:  # objects given in Python: any callable, with whichever of the protocol's methods it has
        regularizers = [as_regularizer(r) for r in regularizers]
    for reg in regularizers:
        reg.setup(context)
    optimizer = adamw(job.model, cfg.lr, cfg.weight_decay, cfg.adam_eps, cfg.adam_beta2, job.param_groups,
                      cfg.optimizer)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    extra = [dl for dl in (dev_dl, train_eval_dl) if dl is not None]
    model, optimizer, train_dl, *extra = accelerator.prepare(job.model, optimizer, train_dl, *extra)
    dev_dl = extra.pop(0) if dev_dl is not None else None
    train_eval_dl = extra.pop(0) if train_eval_dl is not None else None
    return _Parts(job, cfg, accelerator, model, optimizer, scheduler, sampler, train_dl, dev_dl, regularizers,
                  total_steps, steps_per_epoch, train_eval_dl)


def _batches(p: _Parts, state: TrainState):
    """Micro-batches forever, epoch after epoch, with EPOCH_END between epochs; a resumed epoch skips the batches
    its checkpoint had consumed."""
    while True:
        p.train_dl.set_epoch(state.epoch)  # accelerate re-applies its own epoch counter on iteration
        p.sampler.set_epoch(state.epoch)
        skip = state.batch_in_epoch
        yield from (p.accelerator.skip_first_batches(p.train_dl, skip) if skip else p.train_dl)
        yield EPOCH_END


def _nonfinite(p: _Parts, grad_norm) -> bool:
    """Whether this optimizer step saw a non-finite loss (on any process) or, except under fp16 (whose grad scaler
    skips such steps itself and lowers its scale), a non-finite gradient norm."""
    acc = p.accelerator
    bad = p.bad_loss
    if acc.num_processes > 1:  # one decision for every process, or their weights would part
        flag = acc.reduce(torch.tensor([float(bad)], device=acc.device), "sum")
        bad = bool(flag.item() > 0)
    if bad or acc.mixed_precision == "fp16":
        return bad
    if grad_norm is None:  # no clipping: the norm only for this check
        grads = [q.grad for q in p.model.parameters() if q.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.tensor(0.0)
    return not bool(torch.isfinite(torch.as_tensor(grad_norm)))


def _micro_step(p: _Parts, batch: dict, state: TrainState) -> dict | None:
    """Forward, regularizer terms, backward and (when the accumulation is complete) the optimizer step; returns the
    step's log record, or None for a micro-batch that only accumulated gradients. A step with a non-finite loss or
    gradient does not change the weights (nor, after it, the regularizers' state) and is counted."""
    acc, cfg = p.accelerator, p.cfg
    if p.job.augment is not None:
        batch = p.job.augment(batch)
    with acc.accumulate(p.model):
        result = p.job.objective(p.model, batch)
        # under mixed precision, forwards a regularizer runs itself outside the prepared model's own forward
        # (RadReg's encoder pass, a teacher) get the same autocast
        with acc.autocast():
            reg_terms = collect_terms(p.regularizers, p.model, batch, result["output"], reserved=("task",))
        loss = regularized_loss(result["loss"], reg_terms)
        terms = {"task": result["loss"], **reg_terms}
        acc.backward(loss)
        p.bad_loss = p.bad_loss or not bool(torch.isfinite(loss.detach()))
        grad_norm, skip = None, False
        if acc.sync_gradients:
            for reg in p.regularizers:
                reg.before_step(p.model)
            if cfg.max_grad_norm > 0:
                grad_norm = acc.clip_grad_norm_(p.model.parameters(), cfg.max_grad_norm)
            skip = _nonfinite(p, grad_norm)
        if not (skip and acc.mixed_precision != "fp16"):  # (while accumulating, step() is accelerate's no-op)
            p.optimizer.step()
        p.optimizer.zero_grad()
    state.batch_in_epoch += 1
    state.examples += len(next(v for v in batch.values() if isinstance(v, torch.Tensor))) * acc.num_processes
    if not acc.sync_gradients:
        return None
    p.bad_loss = False
    lr = max(p.scheduler.get_last_lr())  # the rate this step used (the top layer's, under layer decay)
    p.scheduler.step()
    if not skip and not acc.optimizer_step_was_skipped:  # fp16: the grad scaler skips steps with inf gradients
        for reg in p.regularizers:  # the teacher moves, and step counters advance, only with the weights
            reg.after_step(p.model)
    state.step += 1
    state.nonfinite_run = state.nonfinite_run + 1 if skip else 0
    state.nonfinite_steps += int(skip)
    # Logged values are this process's micro-batch; reduced only on the main-metric path (eval).
    record = {"type": "train", "step": state.step, "epoch": state.epoch, "lr": lr,
              **{k: float(v.detach()) for k, v in terms.items()}, "loss": float(loss.detach())}
    if grad_norm is not None:
        record["grad_norm"] = float(grad_norm)
    if state.nonfinite_steps:
        record["nonfinite_steps"] = state.nonfinite_steps  # steps skipped so far
    for reg in p.regularizers:  # values a regularizer reports beside its loss terms (e.g. an unweighted estimate)
        record.update(reg.log())
    # values the objective reports beside its loss (the masked-token accuracy of MLM)
    record.update({k: float(v) for k, v in result.get("log", {}).items()})
    return record


def _check_diverged(p: _Parts, state: TrainState, record: dict) -> None:
    """Stop after ``nonfinite_steps`` steps in a row that were skipped for non-finite values."""
    limit = p.cfg.nonfinite_steps
    if limit and state.nonfinite_run >= limit:
        where = f"step {state.checkpoint_step}" if state.checkpoint_step >= 0 else "none written yet"
        raise GentuneError(f"training diverged at step {state.step} (loss {record['loss']}): a non-finite loss or "
                           f"gradient at {state.nonfinite_run} steps in a row, which did not change the weights; the "
                           f"last good checkpoint is kept ({where}), and so is best/")


def _evaluate(p: _Parts, state: TrainState, hooks: Hooks) -> dict | None:
    """Evaluate on the dev data, log it, track the best main metric; None without dev data."""
    if p.dev_dl is None:
        return None
    metrics = p.job.evaluate(p.model, p.dev_dl, p.accelerator)
    p.model.train()
    state.last_eval_step, state.last_dev = state.step, metrics
    # epochs trained (fractional for mid-epoch evaluations; the final one counts its last epoch)
    hooks.log({"type": "eval", "step": state.step, "epoch": round(state.step / p.steps_per_epoch, 4), **metrics})
    value = (1.0 if p.job.greater_is_better else -1.0) * metrics[p.job.main_metric]
    finite = all(math.isfinite(v) for v in metrics.values() if isinstance(v, (int, float)))
    best = finite and (state.best_metric is None or value > state.best_metric)  # a diverged model is never best
    if best:
        state.best_metric, state.best_step, state.best_dev = value, state.step, metrics
    hooks.evaluated(p.model, metrics, state, best)
    if p.progress is not None:
        p.progress.evaluated(state.step, metrics)
    return metrics


def _epoch_end(p: _Parts, state: TrainState, hooks: Hooks) -> None:
    """Count the epoch; evaluate every ``eval_every_epochs`` (unless ``eval_steps`` just did); a resume point."""
    state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    every = p.cfg.eval_every_epochs
    if every > 0 and state.epoch % every == 0 and state.last_eval_step != state.step:
        _evaluate(p, state, hooks)
    _checkpoint(p, state, hooks)


def _checkpoint(p: _Parts, state: TrainState, hooks: Hooks) -> None:
    """A resume point, unless the run is in a streak of skipped steps (the last good checkpoint stays)."""
    if not state.nonfinite_run:
        state.checkpoint_step = state.step
        hooks.checkpoint(state, _saver(p, state))


def _saver(p: _Parts, state: TrainState) -> Callable[[Path], None]:
    return functools.partial(save_training, p.accelerator, p.model, p.optimizer, p.scheduler, p.regularizers, state)


def _resume(p: _Parts, checkpoint: Path) -> TrainState:
    return load_training(p.accelerator, p.model, p.optimizer, p.scheduler, p.regularizers, checkpoint)


def _train(p: _Parts, hooks: Hooks, resume_from) -> tuple[TrainState, dict | None, dict | None]:
    """The loop itself: (the final state, the final evaluation, the final model on its training examples)."""
    acc, cfg = p.accelerator, p.cfg
    if acc.num_processes > 1:
        # each process its own stream for dropout, noise, masks and augmentations (the weights are synchronised
        # by DDP); a resume restores every process's stream from the checkpoint
        torch.manual_seed(cfg.seed + 1_000_003 * acc.process_index)
    state = _resume(p, Path(resume_from)) if resume_from is not None else TrainState()
    bar = p.progress = Progress(p.total_steps, state.step, acc.is_main_process, p.job.main_metric, cfg.log_every)
    clock = Clock(state)
    stream = _batches(p, state)
    p.model.train()
    while state.step < p.total_steps:
        batch = next(stream)
        if batch is EPOCH_END:
            with clock.paused():
                _epoch_end(p, state, hooks)
            continue
        with clock.step():
            record = _micro_step(p, batch, state)
        if record is None:
            continue
        clock.step_done()
        hooks.log(record)
        _check_diverged(p, state, record)
        if cfg.eval_steps > 0 and state.step % cfg.eval_steps == 0 and state.step < p.total_steps:
            with clock.paused():
                _evaluate(p, state, hooks)
        bar.update(record, state)
        if state.step < p.total_steps and cfg.save_steps > 0 and state.step % cfg.save_steps == 0:
            with clock.paused():
                _checkpoint(p, state, hooks)
    clock.stop()
    bar.close()
    # a run resumed from a checkpoint taken right after its last evaluation has that evaluation in its state
    final_dev = state.last_dev if state.last_eval_step == state.step and state.last_dev is not None \
        else _evaluate(p, state, hooks)
    final_train = None
    if p.train_eval_dl is not None:
        final_train = p.job.evaluate(p.model, p.train_eval_dl, p.accelerator)
        p.model.train()
        hooks.log({"type": "eval_train", "step": state.step, "epoch": round(state.step / p.steps_per_epoch, 4),
                   **final_train})
    hooks.finished(state, _saver(p, state))
    return state, final_dev, final_train


def fit(job: Job, cfg, accelerator=None, hooks: Hooks | None = None, resume_from: str | Path | None = None,
        regularizers: list[Regularizer] | None = None) -> Fit:
    """Train ``job`` in this process as ``cfg`` (a :class:`gentune.config.RunConfig`) says; writes no files.

    Args:
        job: what to train (a task's ``build(cfg)``, or your own :class:`Job`).
        cfg: schedule, optimizer, regularizer names and options, evaluation cadence.
        accelerator: the Accelerator to train with; None: a new one from ``cfg``.
        hooks: what to do with logs, evaluations and resume points (:class:`Hooks`; none by default).
        resume_from: a resume checkpoint folder written through ``hooks.checkpoint``, to continue from.
        regularizers: regularizer objects to use instead of ``cfg.regularizer`` (set up here like those).

    Returns:
        A :class:`Fit`. Callable many times in one process: what it prepared is released at the end.
    """
    acc = accelerator if accelerator is not None else make_accelerator(cfg)
    hooks = hooks or Hooks()
    p = _prepare(job, cfg, acc, regularizers)
    try:
        state, final_dev, final_train = _train(p, hooks, resume_from)
        model = acc.unwrap_model(p.model)
    finally:  # also after an error: the accelerator keeps nothing of this run
        acc.free_memory()
    return Fit(model, final_dev, state, p.total_steps, p.steps_per_epoch, p.regularizers, acc, final_train)


__all__ = ["EPOCH_END", "Fit", "Hooks", "check_job", "fit", "train_sampler"]
