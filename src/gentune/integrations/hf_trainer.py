"""gentune regularizers inside a Hugging Face :class:`transformers.Trainer`.

An existing Trainer script switches to a gentune regularizer (SMART here) by changing two lines::

    from gentune.integrations import RegularizedTrainer  # line 1

    trainer = RegularizedTrainer(regularizers=["smart"], model=model, args=args,  # line 2: was Trainer(
                                 train_dataset=train_ds, eval_dataset=dev_ds, processing_class=tokenizer)
    trainer.train()

What the subclass adds to the Trainer, and nothing else:

- :meth:`RegularizedTrainer.compute_loss` adds each regularizer's terms (``reg(model, batch, outputs)``) to the
  parent's loss during training. Evaluation losses stay the plain task loss.
- The mean of each term since the last log (``smart_adv``, ``bregman``, ``l2sp``, ...) is logged next to ``loss``.
- ``after_step(model)`` runs once per optimizer step (not per micro-batch under gradient accumulation).
- Every regularizer is set up (``setup(context)``, the same protocol as gentune's own loop) at the start of every
  ``train()`` call with the Trainer's ``max_steps`` and the model: SMART's teacher schedule takes the run's length
  from there. Regularizers built from names are rebuilt first (fresh state).
- A term name two regularizers share is kept under ``<regularizer>/<term>`` (the loop's rule), so both count.
- Regularizer state (SMART's momentum teacher, L2-SP's anchor, step counters) is saved as
  ``gentune_regularizers.json`` + ``.safetensors`` (no pickle) in every ``checkpoint-N/`` folder and restored by
  ``trainer.train(resume_from_checkpoint=...)`` (a path or ``True``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from ..errors import GentuneError
from ..regularizers.base import Context, as_regularizer, build_regularizers, collect_terms, parse_specs, \
    regularized_loss
from ..serial import load_tree, save_tree

logger = logging.getLogger(__name__)

#: File name of the regularizer state inside each ``checkpoint-N/`` folder (beside it, the tensors in
#: ``gentune_regularizers.safetensors``: :func:`gentune.serial.save_tree`, no pickle).
REGULARIZER_STATE_NAME = "gentune_regularizers.json"
_STEM = "gentune_regularizers"
_LEGACY = "gentune_regularizers.pt"  # written by earlier versions with torch.save; read with weights_only=True
_FORMAT = 1


def read_regularizer_state(folder: str | os.PathLike) -> dict | None:
    """``{"format", "names", "states"}`` from a ``checkpoint-N`` folder, or None when it has no regularizer file.

    Raises:
        GentuneError: the file is damaged or not a gentune regularizer state file.
    """
    folder = Path(folder)
    if (folder / REGULARIZER_STATE_NAME).is_file():
        blob = load_tree(folder, _STEM)
    elif (folder / _LEGACY).is_file():
        try:
            blob = torch.load(folder / _LEGACY, map_location="cpu", weights_only=True)
        except Exception as e:  # weights_only refuses anything but tensors and plain containers
            raise GentuneError(f"{folder / _LEGACY}: cannot read it ({str(e).splitlines()[0]})") from None
    else:
        return None
    if not isinstance(blob, dict) or blob.get("format") != _FORMAT:
        raise GentuneError(f"{folder}: not a gentune regularizer state file (format {_FORMAT})")
    return blob


class RegularizerCallback(TrainerCallback):
    """The :class:`RegularizedTrainer` events that need no private Trainer API.

    ``on_train_begin`` (re)builds the regularizers for this run and restores a resumed checkpoint's state,
    ``on_step_end`` calls ``after_step`` once per optimizer step, and ``on_save`` writes the regularizer state
    into the new ``checkpoint-N/`` folder. Added by :class:`RegularizedTrainer` itself; do not add it twice.

    Args:
        trainer: The :class:`RegularizedTrainer` whose regularizers this callback drives.
    """

    def __init__(self, trainer: "RegularizedTrainer"):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._begin_regularizers(state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._after_optimizer_step()

    def on_save(self, args, state, control, **kwargs):
        self.trainer._save_regularizers_at_step(state.global_step)


class RegularizedTrainer(Trainer):
    """A :class:`transformers.Trainer` whose training loss also carries gentune regularizer terms.

    Every Trainer argument works as before; ``regularizers`` is the only new one. The training loss is the
    parent's :meth:`~transformers.Trainer.compute_loss` plus the sum of every regularizer's terms; evaluation
    and prediction use the parent's loss unchanged.

    Gradient accumulation: when the Trainer treats the parent's loss as already normalised over the whole
    accumulated batch (``loss_is_scaled_for_ga``, by default when the model accepts ``num_items_in_batch``),
    the terms, which are per-micro-batch means, are divided by the number of micro-batches of the step, so a
    term weighs the same whatever ``gradient_accumulation_steps`` is.

    Args:
        *args: Passed to :class:`transformers.Trainer` (``model`` first).
        regularizers: What to add to the loss. One of: a dict ``{name: options}`` (options a dict or ``None``);
            a single name; a list whose items are registry names (``"smart"``), ``{name: options}`` dicts, or
            regularizer objects already built (``gentune.create("regularizer", "l2sp", alpha=0.1)`` or any
            callable ``reg(model, batch, outputs) -> dict[str, Tensor]``, with any of the protocol's optional
            methods). ``None`` or empty: a plain Trainer.
        **kwargs: Passed to :class:`transformers.Trainer`.

    Raises:
        GentuneError: An unknown regularizer name or option, or an item that is not a name, a dict or a callable.

    Attributes:
        regularizers: The regularizer objects in use, in the order given (objects that are not
            :class:`gentune.regularizers.Regularizer` are wrapped). Those built from names are rebuilt at the start
            of every ``train()`` call (fresh state); every one is set up with the run's length and model.
        regularizer_names: One name per regularizer (the registry name, or the object's class name).
    """

    def __init__(self, *args, regularizers=None, **kwargs):
        self._reg_specs = parse_specs(regularizers)
        # Built now so unknown names and options fail before any work, and compute_loss works before train().
        self.regularizers: list[Any] = [self._build(i) for i in range(len(self._reg_specs))]
        self.regularizer_names: list[str] = [name for name, _, _ in self._reg_specs]
        self._term_sums: dict[str, torch.Tensor] = {}
        self._term_counts: dict[str, int] = {}
        self._resume_dir: str | None = None
        self._reg_trial = None
        self._model_uses_num_items: bool | None = None  # probed on the first regularized micro-batch that matters
        super().__init__(*args, **kwargs)
        self.add_callback(RegularizerCallback(self))

    def _build(self, i: int):
        name, options, obj = self._reg_specs[i]
        return as_regularizer(obj, name) if obj is not None else build_regularizers([{name: options}])[0]

    # ---- training entry point: remember where a resumed run comes from ----

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None,
              **kwargs):
        """:meth:`transformers.Trainer.train`, also restoring the regularizer state when resuming.

        Args:
            resume_from_checkpoint: As for the Trainer: a ``checkpoint-N`` path, or ``True`` for the last one
                in ``args.output_dir``. Its ``gentune_regularizers.pt`` is loaded once training begins.
            trial: As for the Trainer (hyperparameter search).
            ignore_keys_for_eval: As for the Trainer.
            **kwargs: Passed to :meth:`transformers.Trainer.train`.

        Returns:
            The Trainer's ``TrainOutput``.
        """
        if resume_from_checkpoint is True:
            # Resolved the way the Trainer does it; if there is none, the Trainer raises its own error.
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir) or True
        self._resume_dir = resume_from_checkpoint if isinstance(resume_from_checkpoint, (str, os.PathLike)) else None
        self._reg_trial = trial
        try:
            return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial,
                                 ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)
        finally:
            self._resume_dir = None

    # ---- the loss ----

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The parent's loss plus every regularizer term (training only).

        Args:
            model: The model to compute the loss for (possibly wrapped).
            inputs: The batch, ``labels`` included; the regularizers see all of it.
            return_outputs: Whether to return ``(loss, outputs)`` instead of ``loss``.
            num_items_in_batch: Passed through to the parent unchanged.

        Returns:
            ``loss`` or ``(loss, outputs)``, as the parent returns them.
        """
        # A shallow copy: the parent pops "labels" when it computes the loss itself (label smoothing,
        # compute_loss_func), and the regularizers should still see the whole batch.
        parent_inputs = dict(inputs) if isinstance(inputs, Mapping) else inputs
        loss, outputs = super().compute_loss(model, parent_inputs, return_outputs=True,
                                             num_items_in_batch=num_items_in_batch)
        # Evaluation runs under no_grad in eval mode: no regularizers there (SMART's ascent needs gradients).
        if self.regularizers and model.training and torch.is_grad_enabled():
            terms = collect_terms(self.regularizers, model, inputs, outputs)
            if terms:
                for name, term in terms.items():
                    self._record(name, term)
                loss = regularized_loss(loss, terms, self._term_scale(model, inputs, num_items_in_batch))
        return (loss, outputs) if return_outputs else loss

    def _term_scale(self, model, inputs, num_items_in_batch) -> float:
        """The factor that scales a per-micro-batch mean the way the Trainer scales this task loss, so a term keeps
        its weight relative to the task loss whatever the accumulation count k and process count P.

        - The Trainer divides the loss by k itself (the model takes no ``num_items_in_batch``): 1.
        - The task loss is normalised over the whole accumulated batch (a ``compute_loss_func``, or a model whose
          loss uses ``num_items_in_batch``), i.e. about a micro-batch mean / k: 1 / k.
        - The model takes ``**kwargs`` but its loss ignores ``num_items_in_batch`` (sequence classifiers: a plain
          mean): the Trainer does not divide it by k and multiplies it by P (``average_tokens_across_devices``),
          so the terms get the same factor P.
        """
        k = getattr(self, "current_gradient_accumulation_steps", 1)
        if self.loss_is_scaled_for_ga is not None:  # the user's own statement wins, as in Trainer.training_step
            return 1.0 / k if self.loss_is_scaled_for_ga else 1.0
        if self.compute_loss_func is not None:
            return 1.0 / k
        if not (self.model_accepts_loss_kwargs and num_items_in_batch is not None):
            return 1.0
        if self._model_uses_num_items is None:
            self._model_uses_num_items = self._probe_num_items(model, inputs)
        if self._model_uses_num_items:
            return 1.0 / k
        if not self.args.average_tokens_across_devices:
            return 1.0
        return float(self.accelerator.num_processes // self.get_tp_size() if self.args.n_gpu <= 1 else self.args.n_gpu)

    def _probe_num_items(self, model, inputs) -> bool:
        """Whether the model's loss depends on ``num_items_in_batch``: two no-grad forwards with the same dropout
        masks, with and without it (once per trainer)."""
        inner = self.accelerator.unwrap_model(model)
        batch = dict(inputs) if isinstance(inputs, Mapping) else None
        if batch is None or "labels" not in batch:
            return True  # no labels to count: the Trainer's own assumption
        device = batch["labels"].device
        devices = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []
        losses = []
        with torch.no_grad():
            for extra in ({}, {"num_items_in_batch": torch.tensor(7 * batch["labels"].numel(), device=device)}):
                with torch.random.fork_rng(devices=devices):
                    out = inner(**batch, **extra)
                losses.append((out["loss"] if isinstance(out, Mapping) else out[0]).float())
        return not torch.allclose(losses[0], losses[1], rtol=1e-4, atol=0.0)

    # ---- logging ----

    def _record(self, name: str, term: torch.Tensor) -> None:
        # Kept on the device: no synchronisation per micro-batch, one .item() per log.
        value = term.detach().float()
        self._term_sums[name] = self._term_sums[name] + value if name in self._term_sums else value
        self._term_counts[name] = self._term_counts.get(name, 0) + 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """:meth:`transformers.Trainer.log`, with the mean of each regularizer term next to a training ``loss``.

        The means are over the micro-batches since the previous training log, on this process.

        Args:
            logs: The values to log.
            start_time: The start of training.
        """
        if "loss" in logs and self._term_sums:
            for name, total in self._term_sums.items():
                logs[name] = total.item() / self._term_counts[name]
            self._term_sums, self._term_counts = {}, {}
        super().log(logs, start_time)

    # ---- callback targets ----

    def _begin_regularizers(self, max_steps: int) -> None:
        """Rebuild the regularizers made from names (fresh state), set every one up for this run, then restore a
        resumed state."""
        for i, (_, _, obj) in enumerate(self._reg_specs):
            if obj is None:
                self.regularizers[i].close()  # the previous train() call's: release its hooks
                self.regularizers[i] = self._build(i)
        context = Context(total_steps=max_steps, model=self.accelerator.unwrap_model(self.model))
        for reg in self.regularizers:
            reg.setup(context)
        self._term_sums, self._term_counts = {}, {}
        if self._resume_dir is not None:
            self.load_regularizer_state(self._resume_dir)

    def _after_optimizer_step(self) -> None:
        if self.accelerator.optimizer_step_was_skipped:  # fp16: the grad scaler skipped it; the weights did not move
            return
        for reg in self.regularizers:
            reg.after_step(self.model_wrapped)

    def _save_regularizers_at_step(self, step: int) -> None:
        if self.args.save_only_model:  # such checkpoints cannot be resumed: no optimizer, no regularizer state
            return
        # The folder Trainer._save_checkpoint has just written; a hyperparameter-search trial puts it under a
        # per-trial folder that only the (private) _get_output_dir knows.
        run_dir = self.args.output_dir if self._reg_trial is None else self._get_output_dir(self._reg_trial)
        folder = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")
        if not os.path.isdir(folder):
            logger.warning("gentune: checkpoint folder %s not found; regularizer state not saved", folder)
            return
        self.save_regularizer_state(folder)

    # ---- checkpoint files ----

    def save_regularizer_state(self, folder: str | os.PathLike) -> None:
        """Write every regularizer's ``state_dict()`` to ``folder/gentune_regularizers.{json,safetensors}`` (main
        process only; no pickle).

        Args:
            folder: An existing directory, normally a ``checkpoint-N`` folder.
        """
        if not self.args.should_save:
            return
        states = [reg.state_dict() for reg in self.regularizers]
        blob = {"format": _FORMAT, "names": list(self.regularizer_names), "states": states}
        save_tree(blob, folder, _STEM + ".tmp")
        for suffix in (".safetensors", ".json"):  # the JSON last: a file pair is complete once it is there
            os.replace(os.path.join(folder, _STEM + ".tmp" + suffix), os.path.join(folder, _STEM + suffix))

    def load_regularizer_state(self, folder: str | os.PathLike) -> None:
        """Restore every regularizer's state from ``folder/gentune_regularizers.{json,safetensors}`` (or the ``.pt``
        of an earlier version, read with ``weights_only=True``).

        A checkpoint without the file (e.g. one written by a plain Trainer) starts the regularizers fresh,
        with a warning when any of them has state.

        Args:
            folder: A ``checkpoint-N`` folder.

        Raises:
            GentuneError: The file holds other regularizers than this trainer's, or is not a gentune file.
        """
        blob = read_regularizer_state(folder)
        if blob is None:
            if any(reg.state_dict() for reg in self.regularizers):
                logger.warning("gentune: %s has no %s; the regularizers start fresh", folder, REGULARIZER_STATE_NAME)
            return
        if list(blob["names"]) != self.regularizer_names:
            raise GentuneError(f"{folder}: the checkpoint holds regularizers {list(blob['names'])}, this trainer has "
                               f"{self.regularizer_names}")
        for reg, state in zip(self.regularizers, blob["states"]):
            if state is not None:
                reg.load_state_dict(state)
