"""What gentune writes and reads back itself: safetensors for tensors, strict JSON for everything else, never a
pickle.

A *state tree* is what ``state_dict()`` methods return: nested dicts (any str, int, float or bool keys), lists and
tuples of tensors, numpy arrays, numbers, strings, booleans and None. :func:`save_tree` writes one as
``NAME.safetensors`` (every tensor and array, keyed by its path in the tree) plus ``NAME.json`` (the structure, with
each tensor replaced by a reference to its key); :func:`load_tree` puts it back together, with the same types.
Reading runs no code: safetensors is a flat header plus raw bytes, and JSON has no constructors. Non-finite floats
outside tensors are written as ``{"__float__": "nan"}``; a JSON file is never written with bare ``NaN`` (for the
JSON files gentune writes for people, see :func:`gentune.fs.dumps_strict`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import GentuneError
from .fs import read_json

FORMAT = "gentune-state/1"


def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = path or "."
        tensors[key] = obj.detach().to("cpu").contiguous().clone()  # a copy: no storage shared between keys
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = path or "."
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj).copy())
        return {"__ndarray__": key}
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else {"__float__": repr(float(obj))}
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, f"{path}/{k}", tensors) for k, v in obj.items()}
        for k in obj:
            if not isinstance(k, (str, int, bool)) or (isinstance(k, str) and k.startswith("__")):
                raise TypeError(f"save_tree: a key of type {type(k).__name__} at {path or '/'}")
        return {"__items__": [[k, _encode(v, f"{path}/{k}", tensors)] for k, v in obj.items()]}
    raise TypeError(f"save_tree: cannot store a {type(obj).__name__} at {path or '/'} (tensors, arrays, numbers, "
                    "strings, lists, tuples and dicts only)")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        (tag, value), = obj.items()
        if tag == "__tensor__":
            return tensors[value]
        if tag == "__ndarray__":
            return tensors[value].numpy()
        if tag == "__float__":
            return float(value)
        if tag == "__tuple__":
            return tuple(_decode(v, tensors) for v in value)
        if tag == "__items__":
            return {k: _decode(v, tensors) for k, v in value}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def save_tree(tree: Any, directory: str | Path, name: str) -> None:
    """Write ``tree`` as ``directory/NAME.safetensors`` and ``directory/NAME.json`` (the directory must exist; the
    caller makes the whole directory atomic)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(tree, "", tensors)
    directory = Path(directory)
    save_file(tensors, str(directory / f"{name}.safetensors"), metadata={"format": FORMAT})
    (directory / f"{name}.json").write_text(json.dumps({"format": FORMAT, "tree": structure}, allow_nan=False))


def load_tree(directory: str | Path, name: str) -> Any:
    """The tree :func:`save_tree` wrote; a missing, damaged or foreign file is a :class:`GentuneError` naming it."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta, data = directory / f"{name}.json", directory / f"{name}.safetensors"
    for f in (meta, data):
        if not f.is_file():
            raise GentuneError(f"{f}: missing")
    doc = read_json(meta, FORMAT, "gentune state file")
    try:
        tensors = load_file(str(data))
    except Exception as e:  # safetensors' header and size checks
        raise GentuneError(f"{data}: damaged ({str(e).splitlines()[0]})") from None
    try:
        return _decode(doc["tree"], tensors)
    except (KeyError, TypeError, ValueError) as e:
        raise GentuneError(f"{meta}: does not match {data.name} ({type(e).__name__}: {e})") from None


__all__ = ["FORMAT", "load_tree", "save_tree"]
