"""The one training loop (Hugging Face Accelerate): any objective, with any regularizers.

A task module (:mod:`gentune.finetuning` for text and image classification, :mod:`gentune.pretraining` for
unsupervised image pretraining) builds a :class:`Job`: the model, the objective, the data, how to evaluate and
what to save. :func:`run` trains it. Read top to bottom: optimizer and schedule -> resume if OUT holds a
checkpoint -> train, evaluating each epoch (and every ``eval_steps``), saving the best model and a resume
checkpoint -> summary.

The same code runs on one CPU, one GPU, or ``accelerate launch --num_processes N``. Batches are split across
processes (``split_batches=True``): ``batch_size`` is the global batch, so N processes take the same optimizer
steps on the same examples as one process, except that an epoch's last, partial batch is completed with examples
from the epoch's first batch (accelerate's even batches, which keep the processes in step), so N > 1 repeats up
to ``batch_size - 1`` examples per epoch when ``batch_size`` does not divide the training set. Evaluation sees
every example exactly once either way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from . import registry
from ._fs import recover_dir, swap_into, write_json_atomic, write_text_atomic
from .config import RunConfig, dump_yaml
from .errors import GentuneError
from .report import read_log

CHECKPOINT = "checkpoint"
STATE_FILE = "trainer_state.json"


class EpochSampler(torch.utils.data.Sampler):
    """A shuffle that depends only on (seed, epoch), so a resumed run sees the same data order.

    It owns its generator and never touches the global RNG, which therefore drives only dropout: restoring
    the RNG state on resume reproduces the uninterrupted run exactly.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # epochs completed
    batch_in_epoch: int = 0  # micro-batches consumed in the current epoch
    examples: int = 0  # training examples processed (all processes)
    train_seconds: float = 0.0  # forward/backward/optimizer time only
    loop_seconds: float = 0.0  # wall time of the training loop, evaluation and checkpoint saving excluded
    best_metric: float | None = None
    best_step: int = -1
    best_dev: dict | None = None
    last_eval_step: int = -1
    last_dev: dict | None = None  # the latest evaluation: the final metrics when the run ends right after it


def _mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def _optimizer(model, lr: float, weight_decay: float, eps: float, beta2: float = 0.999, groups: list | None = None):
    """AdamW; by default no weight decay on biases and normalisation weights (the BERT recipe)."""
    if groups is None:
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, eps=eps, betas=(0.9, beta2))


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


def _check_out_dir(out: Path, cfg: RunConfig) -> str:
    """'new', 'resume' or 'done'; a different config in the same OUT is an error, not a silent overwrite."""
    saved = out / "config.yaml"
    if not saved.exists():
        return "new"
    if not (out / "summary.json").exists() and recover_dir(out / CHECKPOINT) is None:
        return "new"  # a run that failed before its first checkpoint: nothing to keep, start over
    import yaml

    try:
        old = yaml.safe_load(saved.read_text()) or {}
        if (out / "summary.json").exists():
            json.loads((out / "summary.json").read_text())
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GentuneError(f"{out} holds a damaged run ({type(e).__name__} in its config.yaml or summary.json); "
                           "use another --out or delete it") from None
    if not isinstance(old, dict):
        raise GentuneError(f"{saved}: not a run's config (expected a mapping); use another --out or delete it")
    new = cfg.to_dict()
    defaults = type(cfg)().to_dict()  # a key added to the config after the run was made has its default there
    # Keys that do not change the result may differ between the original command and its rerun.
    ignore = {"out", "save_steps", "keep_checkpoint", "eval_batch_size"}
    diff = [k for k in new if k not in ignore and old.get(k, defaults[k]) != new[k]]
    if diff:
        k = diff[0]
        raise GentuneError(f"{out} holds a run with a different config ({k}: {old.get(k)!r} there, {new[k]!r} now); "
                           f"use another --out or delete it")
    if (out / "summary.json").exists():
        return "done"
    return "resume" if recover_dir(out / CHECKPOINT) else "new"


def _save_resume_checkpoint(accelerator, out: Path, state: TrainState) -> None:
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


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True, leave=True)


def _accelerator(cfg: RunConfig, cpu: bool):
    from accelerate import Accelerator, DataLoaderConfiguration

    return Accelerator(
        cpu=cpu,
        # batch_size is the global batch: each of N processes gets 1/N of it (the Accelerator(split_batches=)
        # keyword is silently ignored by accelerate 1.x; only the DataLoaderConfiguration form works).
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        gradient_accumulation_steps=cfg.grad_accum,
        mixed_precision=_mixed_precision(cfg.mixed_precision),
    )


@dataclass
class Job:
    """What a run trains, built by a task module; everything else comes from the :class:`RunConfig`.

    Args:
        model: the model to train (before ``accelerator.prepare``).
        objective: ``objective(model, batch) -> {"loss": scalar, "output": ...}``.
        train_set: an indexable dataset of training examples; ``collate`` makes a batch dict of tensors.
        dev_set, dev_collate: the evaluation data, or None for no evaluation.
        evaluate: ``evaluate(model, dev_dataloader, accelerator) -> metrics`` (gathered over processes).
        main_metric: the metric that picks the best model; ``greater_is_better`` its direction.
        save: ``save(unwrapped_model, directory, meta)`` writes a model directory; None: nothing is saved.
        save_best: save the best model on ``main_metric`` to OUT/best (fine-tuning), else the final one to
            OUT/``final_name`` (pretraining).
        param_groups: optimizer parameter groups (e.g. layer-wise lr decay); None: the default decay split.
        meta: written with saved models.
        summary: extra summary.json fields.
        on_end: ``on_end(unwrapped_model, out)`` on the main process after training (e.g. sample images).
        reg_defaults: option values for the regularizers that declare them and were not given (the pixel
            normalisation a regularizer needs to feed its own images to the encoder).
        augment: ``augment(batch) -> batch`` applied to each training batch on the device, just before the
            objective. Random augmentations belong here, not in ``collate``: the data loader collates a batch
            ahead, so collate-time randomness would not come back in step with a resumed checkpoint.
    """

    model: torch.nn.Module
    objective: Callable
    train_set: Any
    collate: Callable
    dev_set: Any = None
    dev_collate: Callable | None = None
    evaluate: Callable | None = None
    main_metric: str = "loss"
    greater_is_better: bool = True
    save: Callable | None = None
    save_best: bool = True
    final_name: str = "final"
    param_groups: list | None = None
    meta: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    on_end: Callable | None = None
    augment: Callable | None = None
    reg_defaults: dict = field(default_factory=dict)


def check_regularizers(cfg: RunConfig) -> list[str]:
    names = list(cfg.regularizer)
    if len(set(names)) < len(names):
        raise GentuneError(f"regularizer: a name is given twice in {names} (options are per name)")
    for name in names:
        registry.get("regularizer", name)  # unknown names fail before any work
    return names


def begin(cfg: RunConfig):
    """Check the config and OUT; returns ``(accelerator, status)`` to train, or the summary of a finished run.

    Seeds every RNG, so the job built next (model initialisation) depends only on ``cfg.seed``.
    """
    from accelerate.utils import set_seed

    cfg.validate()
    check_regularizers(cfg)
    out = Path(cfg.out)
    _check_out_writable(out)
    status = _check_out_dir(out, cfg)
    if status == "done":
        return json.loads((out / "summary.json").read_text())
    # Launched as several processes (torchrun / accelerate launch --multi_gpu) on a machine without CUDA:
    # accelerate only picks its gloo multi-CPU backend when told the run is on CPU.
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    try:
        accelerator = _accelerator(cfg, multi_cpu)
    except ValueError as e:  # e.g. fp16 requested on a machine without a GPU
        raise GentuneError(f"mixed_precision={cfg.mixed_precision}: {str(e).splitlines()[0]}") from None
    for key in ("batch_size", "eval_batch_size"):
        if getattr(cfg, key) % accelerator.num_processes:
            raise GentuneError(f"{key} {getattr(cfg, key)} is not divisible by {accelerator.num_processes} processes")
    set_seed(cfg.seed)
    return accelerator, status


def _batch_len(batch: dict) -> int:
    return len(next(v for v in batch.values() if isinstance(v, torch.Tensor)))


def run(cfg: RunConfig, job: Job, accelerator, status: str) -> dict:
    """Train ``job`` as ``cfg`` says, in OUT; returns the run summary (also written to OUT/summary.json)."""
    out = Path(cfg.out)
    main = accelerator.is_main_process
    reg_names = list(cfg.regularizer)
    model = job.model
    sampler = EpochSampler(len(job.train_set), cfg.seed)
    train_dl = torch.utils.data.DataLoader(job.train_set, batch_size=cfg.batch_size, sampler=sampler,
                                           collate_fn=job.collate, generator=torch.Generator())
    dev_dl = None
    if job.dev_set is not None and job.evaluate is not None:
        dev_dl = torch.utils.data.DataLoader(job.dev_set, batch_size=cfg.eval_batch_size, shuffle=False,
                                             collate_fn=job.dev_collate or job.collate)

    steps_per_epoch = math.ceil(len(train_dl) / cfg.grad_accum)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.epochs * steps_per_epoch)
    regs = []
    for name in reg_names:
        options = dict(cfg.regularizer_options.get(name, {}))
        entry = registry.get("regularizer", name)
        # Config at the edge: a regularizer whose schedule needs the run length declares a total_steps option.
        fields = {f.name for f in dataclasses.fields(entry.config)} if entry.config else set()
        for key, value in {"total_steps": total_steps, **job.reg_defaults}.items():
            if key in fields and options.get(key) in (None, 0):
                options[key] = value
        regs.append(registry.create("regularizer", name, **options))
    optimizer = _optimizer(model, cfg.lr, cfg.weight_decay, cfg.adam_eps, cfg.adam_beta2, job.param_groups)
    from transformers import get_linear_schedule_with_warmup

    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    if dev_dl is not None:
        model, optimizer, train_dl, dev_dl = accelerator.prepare(model, optimizer, train_dl, dev_dl)
    else:
        model, optimizer, train_dl = accelerator.prepare(model, optimizer, train_dl)
    accelerator.register_for_checkpointing(scheduler)
    for r in regs:
        if hasattr(r, "state_dict"):
            accelerator.register_for_checkpointing(r)

    if accelerator.num_processes > 1:
        # each process its own stream for dropout, noise, masks and augmentations (the weights are synchronised
        # by DDP); a resume restores every process's stream from the checkpoint
        torch.manual_seed(cfg.seed + 1_000_003 * accelerator.process_index)
    state = TrainState()
    if status == "resume":
        ckpt = recover_dir(out / CHECKPOINT)
        accelerator.load_state(str(ckpt))
        state = TrainState(**json.loads((ckpt / STATE_FILE).read_text()))
    elif main:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "config.yaml", dump_yaml(cfg))
    accelerator.wait_for_everyone()
    log = _Log(out / "metrics.jsonl", main, state.step if status == "resume" else -1)
    sign = 1.0 if job.greater_is_better else -1.0

    def run_eval() -> dict | None:
        if dev_dl is None:
            return None
        metrics = job.evaluate(model, dev_dl, accelerator)
        model.train()
        state.last_eval_step, state.last_dev = state.step, metrics
        # epochs trained (fractional for mid-epoch evaluations; the final one counts its last epoch)
        log.write({"type": "eval", "step": state.step, "epoch": round(state.step / steps_per_epoch, 4), **metrics})
        value = sign * metrics[job.main_metric]
        if state.best_metric is None or value > state.best_metric:
            state.best_metric, state.best_step, state.best_dev = value, state.step, metrics
            if cfg.save_model and job.save is not None and job.save_best:
                accelerator.wait_for_everyone()
                if main:
                    job.save(accelerator.unwrap_model(model), out / "best",
                             {**job.meta, "step": state.step, "dev": metrics})
        return metrics

    bar = _progress(total_steps, state.step, main and sys.stderr.isatty())
    model.train()
    step_time = 0.0
    # Loop time minus step time is the loop's own overhead (data loading, logging): timed from here, with
    # evaluation and checkpoint saving subtracted (they are not per-step costs).
    mark = time.perf_counter()

    @contextlib.contextmanager
    def untimed():
        """Evaluation and checkpoint saving: not per-step costs, so left out of the loop time."""
        nonlocal mark
        state.loop_seconds += time.perf_counter() - mark
        yield
        mark = time.perf_counter()

    while state.step < total_steps:
        train_dl.set_epoch(state.epoch)  # accelerate re-applies its own epoch counter on iteration
        sampler.set_epoch(state.epoch)
        dl = accelerator.skip_first_batches(train_dl, state.batch_in_epoch) if state.batch_in_epoch else train_dl
        for batch in dl:
            t0 = time.perf_counter()
            if job.augment is not None:
                batch = job.augment(batch)
            with accelerator.accumulate(model):
                result = job.objective(model, batch)
                outputs = result["output"]
                terms = {"task": result["loss"]}
                for name, r in zip(reg_names, regs):
                    try:
                        # under mixed precision, forwards a regularizer runs itself outside the prepared model's
                        # own forward (RadReg's encoder pass, a teacher) get the same autocast
                        with accelerator.autocast():
                            reg_terms = r(model, batch, outputs)
                    except (AttributeError, KeyError, TypeError) as e:
                        if state.step > 0:
                            raise
                        raise GentuneError(f"regularizer {name!r} does not work with this model "
                                           f"({type(e).__name__}: {e})") from e
                    for key, value in reg_terms.items():
                        # two regularizers may name a term alike (smart and bregman): keep both, prefixed
                        terms[f"{name}/{key}" if key in terms else key] = value
                loss = sum(terms.values())
                accelerator.backward(loss)
                grad_norm = None
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            state.batch_in_epoch += 1
            state.examples += _batch_len(batch) * accelerator.num_processes
            step_time += time.perf_counter() - t0
            if not accelerator.sync_gradients:
                continue
            lr = max(scheduler.get_last_lr())  # the rate this step used (the top layer's, under layer decay)
            scheduler.step()
            if not accelerator.optimizer_step_was_skipped:  # fp16: the grad scaler skips steps with inf gradients
                for r in regs:  # the teacher moves, and step counters advance, only with the weights
                    if hasattr(r, "after_step"):
                        r.after_step(model)
            state.step += 1
            state.train_seconds += step_time
            step_time = 0.0
            # Logged values are this process's micro-batch; reduced only on the main-metric path (eval).
            record = {"type": "train", "step": state.step, "epoch": state.epoch, "lr": lr,
                      **{k: float(v.detach()) for k, v in terms.items()}, "loss": float(loss.detach())}
            if grad_norm is not None:
                record["grad_norm"] = float(grad_norm)
            for r in regs:  # values a regularizer reports beside its loss terms (e.g. an unweighted estimate)
                if hasattr(r, "log"):
                    record.update(r.log())
            log.write(record)
            postfix = {"loss": f"{record['loss']:.4f}"}
            if cfg.eval_steps > 0 and state.step % cfg.eval_steps == 0 and state.step < total_steps:
                with untimed():
                    run_eval()
            if state.last_dev:
                postfix[job.main_metric] = f"{state.last_dev[job.main_metric]:.4f}"
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
            if state.step >= total_steps:
                break
            if cfg.save_steps > 0 and state.step % cfg.save_steps == 0:
                with untimed():
                    _save_resume_checkpoint(accelerator, out, state)
        else:
            state.epoch += 1
            state.batch_in_epoch = 0
            if state.step < total_steps:
                with untimed():
                    every = cfg.eval_every_epochs
                    # eval_steps may have just evaluated this step
                    if every > 0 and state.epoch % every == 0 and state.last_eval_step != state.step:
                        run_eval()
                    _save_resume_checkpoint(accelerator, out, state)
            continue
        break
    state.loop_seconds += time.perf_counter() - mark
    bar.close()
    # a run resumed from a checkpoint taken right after its last evaluation has that evaluation in its state
    final_dev = state.last_dev if state.last_eval_step == state.step and state.last_dev is not None else run_eval()
    summary = {
        **job.summary,
        "seed": cfg.seed,
        "regularizers": reg_names,
        "main_metric": job.main_metric,
        "best_dev": state.best_dev,
        "best_step": state.best_step,
        "final_dev": final_dev,
        "train_examples": len(job.train_set),
        "dev_examples": len(job.dev_set) if dev_dl is not None else 0,
        "train_steps": state.step,
        "epochs": state.step / steps_per_epoch,
        "train_seconds": state.train_seconds,
        "seconds_per_step": state.train_seconds / max(state.step, 1),
        "examples_per_second": state.examples / max(state.train_seconds, 1e-9),
        "loop_seconds": state.loop_seconds,
        # the loop's own share of its time (data loading, logging); step time is the rest
        "loop_overhead": max(0.0, 1.0 - state.train_seconds / state.loop_seconds) if state.loop_seconds else None,
        "num_processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if cfg.keep_checkpoint:  # a final resume checkpoint, for inspection or continued training
        _save_resume_checkpoint(accelerator, out, state)
    accelerator.wait_for_everyone()
    if main:
        from .report import plot_run

        final = accelerator.unwrap_model(model)
        if cfg.save_model and job.save is not None and (not job.save_best or dev_dl is None):
            # pretraining keeps its final model; so does fine-tuning without validation data (no best to pick)
            name = job.final_name if not job.save_best else "best"
            job.save(final, out / name, {**job.meta, "step": state.step, "dev": final_dev})
        if job.on_end is not None:
            job.on_end(final, out)
        plot_run(out, job.main_metric)
        write_json_atomic(out / "summary.json", summary)
        if not cfg.keep_checkpoint:
            for leftover in (CHECKPOINT, CHECKPOINT + ".old", CHECKPOINT + ".tmp"):
                shutil.rmtree(out / leftover, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary
