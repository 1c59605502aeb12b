"""The resume checkpoint: everything a run needs to continue exactly, written by gentune as safetensors and strict
JSON, so that reading it back runs no code (no pickle: accelerate's ``save_state`` pickles the scheduler, the
regularizers and the RNG states, and loads them with ``weights_only=False``).

A checkpoint folder holds ``gentune-resume.json`` (format, processes, regularizer names), ``model.safetensors``
(the unwrapped model; tied weights once), ``optimizer``, ``scheduler``, ``regularizers`` and, under fp16,
``scaler`` (each a :func:`gentune.serial.save_tree` pair), ``rng_<rank>`` for every process (Python, numpy, torch
CPU and CUDA generators) and ``trainer_state.json`` (the loop's :class:`TrainState`).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..errors import GentuneError
from ..fs import read_json, write_json_atomic
from ..serial import load_tree, save_tree
from .state import STATE_FILE, TrainState

MANIFEST = "gentune-resume.json"
FORMAT = "gentune-resume/1"


def _rng() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": [torch.cuda.get_rng_state(i) for i in range(torch.cuda.device_count())]
            if torch.cuda.is_available() else []}


def _set_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    for i, s in enumerate(state.get("cuda") or []):
        if i < torch.cuda.device_count():
            torch.cuda.set_rng_state(s, i)


def save_training(accelerator, model, optimizer, scheduler, regularizers, state: TrainState, directory: Path) -> None:
    """Write the training state into ``directory`` (it exists). Every process calls it: each writes its own RNG
    state, the main process everything else."""
    from safetensors.torch import save_model

    directory = Path(directory)
    save_tree(_rng(), directory, f"rng_{accelerator.process_index}")
    if not accelerator.is_main_process:
        return
    save_model(accelerator.unwrap_model(model), str(directory / "model.safetensors"))
    save_tree(optimizer.state_dict(), directory, "optimizer")
    save_tree(scheduler.state_dict(), directory, "scheduler")
    save_tree([r.state_dict() for r in regularizers], directory, "regularizers")
    if accelerator.scaler is not None:
        save_tree(accelerator.scaler.state_dict(), directory, "scaler")
    write_json_atomic(directory / STATE_FILE, asdict(state))
    write_json_atomic(directory / MANIFEST, {"format": FORMAT, "processes": accelerator.num_processes,
                                             "regularizers": [r.name for r in regularizers]})


def _manifest(directory: Path) -> dict:
    file = directory / MANIFEST
    if not file.is_file():
        if any(f.suffix in (".pkl", ".bin") for f in directory.iterdir()):
            raise GentuneError(f"{directory}: a resume checkpoint of an earlier gentune, in pickle files, which gentune "
                               "no longer reads (they can run code); delete it to start the run over")
        raise GentuneError(f"{directory}: not a gentune resume checkpoint (no {MANIFEST}); delete it to start over")
    try:
        return read_json(file, FORMAT, "gentune resume checkpoint")
    except GentuneError as e:
        raise GentuneError(f"{e}; delete {directory} to start the run over") from None


def read_state(directory: Path) -> TrainState:
    """The loop's state in a resume checkpoint (checked: a gentune checkpoint, readable)."""
    directory = Path(directory)
    _manifest(directory)
    file = directory / STATE_FILE
    try:
        return TrainState(**json.loads(file.read_text()))
    except (OSError, ValueError, TypeError) as e:  # missing, not JSON, not UTF-8, other keys
        raise GentuneError(f"{file}: damaged ({type(e).__name__}); delete {directory} to start the run over") \
            from None


def check_files(directory: Path) -> None:
    """Every file of a resume checkpoint readable as what it should be (the manifest, the loop's state, each JSON
    part and each safetensors header), checked before the run builds its model, so that a damaged checkpoint is
    one line of error at once. Headers only: the tensors are read (and matched to the model) by
    :func:`load_training`."""
    from safetensors import safe_open

    directory = Path(directory)
    manifest = _manifest(directory)
    read_state(directory)
    for f in sorted(directory.iterdir()):
        try:
            if f.suffix == ".safetensors":
                with safe_open(str(f), "pt"):
                    pass
            elif f.suffix == ".json" and f.name not in (MANIFEST, STATE_FILE):
                read_json(f, None, "gentune state file")
        except GentuneError as e:
            raise GentuneError(f"cannot resume: {e}; delete {directory} to start the run over") from None
        except Exception as e:  # safetensors' header checks
            raise GentuneError(f"{f}: damaged ({type(e).__name__}: {str(e).splitlines()[0]}); delete {directory} "
                               "to start the run over") from None
    processes = manifest.get("processes")
    missing = [f"rng_{i}.safetensors" for i in range(processes if isinstance(processes, int) else 0)
               if not (directory / f"rng_{i}.safetensors").is_file()]
    parts = [f"{name}.{ext}" for name in ("optimizer", "scheduler", "regularizers") for ext in ("json", "safetensors")]
    parts += [f"rng_{i}.json" for i in range(processes if isinstance(processes, int) else 0)]
    missing += [f for f in ("model.safetensors", *parts) if not (directory / f).is_file()]
    if missing:
        raise GentuneError(f"{directory}: incomplete, {', '.join(missing)} missing; delete it to start the run over")


def load_training(accelerator, model, optimizer, scheduler, regularizers, directory: Path) -> TrainState:
    """Restore what :func:`save_training` wrote into the prepared objects; returns the loop's state. A missing,
    damaged or foreign part is a :class:`GentuneError` naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    directory = Path(directory)
    manifest = _manifest(directory)
    if manifest.get("processes") != accelerator.num_processes:
        raise GentuneError(f"{directory}: written by {manifest.get('processes')} processes, this run has "
                           f"{accelerator.num_processes}; resume with as many")
    names = [r.name for r in regularizers]
    if manifest.get("regularizers") != names:
        raise GentuneError(f"{directory}: holds regularizers {manifest.get('regularizers')}, this run has {names}")
    try:
        load_model(accelerator.unwrap_model(model), str(directory / "model.safetensors"))
    except (OSError, RuntimeError, SafetensorError) as e:
        raise GentuneError(f"{directory / 'model.safetensors'}: damaged ({type(e).__name__}: "
                           f"{str(e).splitlines()[0]}); delete {directory} to start the run over") from None
    try:
        optimizer.load_state_dict(load_tree(directory, "optimizer"))
        scheduler.load_state_dict(load_tree(directory, "scheduler"))
        for reg, state in zip(regularizers, load_tree(directory, "regularizers")):
            reg.load_state_dict(state)
        if accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(load_tree(directory, "scaler"))
        _set_rng(load_tree(directory, f"rng_{accelerator.process_index}"))
        state = read_state(directory)
    except GentuneError as e:
        raise GentuneError(f"cannot resume: {e}; delete {directory} to start the run over") from None
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as e:  # files, shapes, states
        raise GentuneError(f"{directory}: cannot resume from it ({type(e).__name__}: {str(e).splitlines()[0]}); "
                           "delete it to start the run over") from None
    return state


__all__ = ["FORMAT", "MANIFEST", "check_files", "load_training", "read_state", "save_training"]
