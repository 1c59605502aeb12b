"""The loop's state and the pieces it is made of: the data order, the optimizer and schedule, the Accelerator,
the step clock and the progress bar."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import GentuneError
from ..progress import hms

STATE_FILE = "trainer_state.json"  # the TrainState inside a resume checkpoint


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
    nonfinite_steps: int = 0  # optimizer steps skipped for a non-finite loss or gradient
    nonfinite_run: int = 0  # of those, how many in a row up to now
    checkpoint_step: int = -1  # the step of the last resume checkpoint


class EpochSampler(torch.utils.data.Sampler):
    """A shuffle that depends only on (seed, epoch), so a resumed run sees the same data order.

    It owns its generator and never touches the global RNG, which therefore drives only dropout: restoring
    the RNG state on resume reproduces the uninterrupted run exactly.

    With ``lengths`` (one per example) and ``batch_size``, batches of similar length (Hugging Face's
    ``group_by_length``): the shuffled order is cut into windows of ``GROUP`` batches and each window is sorted by
    length, longest first, so a batch pads to little more than its own examples.
    """

    GROUP = 50  # batches per sorted window (the Hugging Face Trainer's mega-batch)

    def __init__(self, n: int, seed: int, lengths=None, batch_size: int = 1):
        self.n, self.seed, self.epoch = n, seed, 0
        self.lengths = None if lengths is None else torch.as_tensor(list(lengths), dtype=torch.long)
        self.batch_size = batch_size
        if self.lengths is not None and len(self.lengths) != n:
            raise ValueError(f"EpochSampler: {len(self.lengths)} lengths for {n} examples")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g)
        if self.lengths is not None:
            window = self.GROUP * self.batch_size
            order = torch.cat([w[torch.argsort(self.lengths[w], descending=True, stable=True)]
                               for w in order.split(window)]) if self.n else order
        return iter(order.tolist())


def adamw(model, lr: float, weight_decay: float, eps: float = 1e-8, beta2: float = 0.999, groups: list | None = None,
          kind: str = "adamw"):
    """AdamW (``kind="sgd"``: plain SGD, no momentum); by default no weight decay on biases and normalisation
    weights (the BERT recipe)."""
    if groups is None:
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.0)
    return torch.optim.AdamW(groups, lr=lr, eps=eps, betas=(0.9, beta2))


def mixed_precision(choice: str) -> str:
    """``auto``: bf16 where the GPU supports it, else none."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


TRACKER_MODULES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",),
                   "trackio": ("trackio",), "aim": ("aim",), "comet_ml": ("comet_ml",), "clearml": ("clearml",),
                   "dvclive": ("dvclive",), "swanlab": ("swanlab",)}


def make_accelerator(cfg, project_dir: str | None = None):
    """The Accelerator of a run: the global batch split across processes, the config's accumulation and precision,
    the gloo CPU backend when several processes run on a machine without CUDA, and the trackers of ``report_to``
    (logging under ``project_dir``/logs)."""
    import importlib.util

    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import ProjectConfiguration

    trackers = list(getattr(cfg, "report_to", []) or [])
    for name in trackers:
        if not any(importlib.util.find_spec(m) for m in TRACKER_MODULES.get(name, (name,))):
            raise GentuneError(f"report_to {name}: its package is not installed (pip install "
                               f"{TRACKER_MODULES.get(name, (name,))[0]})")
    project = ProjectConfiguration(project_dir=project_dir, logging_dir=str(Path(project_dir) / "logs")) \
        if project_dir and trackers else None

    # Launched as several processes (torchrun / accelerate launch --multi_gpu) on a machine without CUDA:
    # accelerate only picks its gloo multi-CPU backend when told the run is on CPU.
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    try:
        return Accelerator(
            cpu=multi_cpu,
            # batch_size is the global batch: each of N processes gets 1/N of it (the Accelerator(split_batches=)
            # keyword is silently ignored by accelerate 1.x; only the DataLoaderConfiguration form works).
            dataloader_config=DataLoaderConfiguration(split_batches=True),
            gradient_accumulation_steps=cfg.grad_accum,
            mixed_precision=mixed_precision(cfg.mixed_precision),
            log_with=trackers or None,
            project_config=project,
        )
    except ValueError as e:  # e.g. fp16 requested on a machine without a GPU
        raise GentuneError(f"mixed_precision={cfg.mixed_precision}: {str(e).splitlines()[0]}") from None


class Clock:
    """The state's step and loop times. A step's time is its micro-batches' (inside ``step``), added to
    ``train_seconds`` at each optimizer step (``step_done``); the loop time runs from the clock's creation with
    evaluation and checkpoint saving (inside ``paused``) left out, so loop time minus step time is the loop's own
    overhead (data loading, logging). Both are in the state before every checkpoint, so a resumed run keeps them."""

    def __init__(self, state: TrainState):
        self.state = state
        self.mark = time.perf_counter()
        self.pending = 0.0  # micro-batches of the optimizer step in progress

    @contextlib.contextmanager
    def step(self):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.pending += time.perf_counter() - t0

    def step_done(self) -> None:
        self.state.train_seconds += self.pending
        self.pending = 0.0

    @contextlib.contextmanager
    def paused(self):
        self.stop()
        try:
            yield
        finally:
            self.mark = time.perf_counter()

    def stop(self) -> None:
        self.state.loop_seconds += time.perf_counter() - self.mark
        self.mark = time.perf_counter()


class Progress:
    """Where the run stands. On a terminal, a tqdm bar of optimizer steps with the loss and the latest main metric;
    otherwise (a pipe, nohup, SLURM, CI) one plain line on stdout every ``every`` optimizer steps (0: about every
    30 seconds, and the first and last steps) with step, loss, learning rate and the time left, and a line per
    evaluation."""

    def __init__(self, total: int, initial: int, enabled: bool, main_metric: str, every: int = 0,
                 stream=None):
        from tqdm.auto import tqdm

        self.stream = stream or sys.stdout
        self.tty = enabled and sys.stderr.isatty()
        self.plain = enabled and not self.tty
        self.bar = tqdm(total=total, initial=initial, disable=not self.tty, unit="step", dynamic_ncols=True,
                        leave=True)
        self.main_metric, self.total, self.every, self.first = main_metric, total, every, initial
        self.started = self.last = time.perf_counter()

    def update(self, record: dict, state: TrainState) -> None:
        if self.tty:
            postfix = {"loss": f"{record['loss']:.4f}"}
            if state.last_dev:
                postfix[self.main_metric] = f"{state.last_dev[self.main_metric]:.4f}"
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(1)
        if not self.plain:
            return
        now = time.perf_counter()
        due = state.step % self.every == 0 if self.every else now - self.last >= 30
        if due or state.step in (self.first + 1, self.total):
            per_step = (now - self.started) / max(state.step - self.first, 1)
            print(f"step {state.step}/{self.total} ({100 * state.step / max(self.total, 1):.0f}%)  loss "
                  f"{record['loss']:.4f}  lr {record['lr']:.2e}  {per_step:.2f} s/step  left "
                  f"{hms(per_step * (self.total - state.step))}", file=self.stream, flush=True)
            self.last = now

    def evaluated(self, step: int, metrics: dict) -> None:
        if self.plain:
            values = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
            print(f"eval at step {step}: {values}", file=self.stream, flush=True)

    def close(self) -> None:
        self.bar.close()
