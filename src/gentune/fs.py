"""Files gentune writes: atomically (an interrupted run never corrupts what an earlier one wrote), as strict JSON
(never a bare NaN), and under a lock (two runs never share an output folder). Shared by every layer; it imports
only :mod:`gentune.errors`."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
from pathlib import Path
from typing import Any

from .errors import GentuneError

LOCK = ".gentune.lock"


def io_error(path: Path, e: BaseException) -> GentuneError:
    """A failed write as a one-line user error: what, where, and that the earlier copy stays."""
    reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
    if "No space left" in str(e) or "StorageFull" in str(e):
        reason = "no space left on the device"
    return GentuneError(f"{path}: cannot write it ({reason}); the earlier copy, if any, is kept")


def write_errors() -> tuple[type[BaseException], ...]:
    """The exception types of a failed write: OSError, and safetensors' own (it wraps ENOSPC)."""
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover - safetensors is a dependency
        return (OSError,)
    return OSError, SafetensorError


@contextlib.contextmanager
def atomic_dir(path: Path):
    """Yield a temporary sibling directory; on success it replaces ``path`` (old copy kept until the swap). A write
    that fails for lack of space or permission leaves ``path`` as it was and is a :class:`GentuneError`."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        swap_into(tmp, path)
    except write_errors() as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise io_error(path, e) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def swap_into(tmp: Path, path: Path) -> None:
    """Replace ``path`` by the complete directory ``tmp``. At every instant either ``path`` or ``path.old`` is a
    complete copy (see :func:`recover_dir`)."""
    old = path.with_name(path.name + ".old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(path: Path) -> Path | None:
    """The complete copy of ``path``: itself, or the ``.old`` copy left by a kill between the two renames."""
    path = Path(path)
    if path.is_dir():
        return path
    old = path.with_name(path.name + ".old")
    return old if old.is_dir() else None


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise io_error(path, e) from e


def read_json(path: Path, fmt: str | None = None, what: str = "gentune file") -> dict:
    """A JSON object from ``path`` (with ``fmt``: its ``format`` key must be that); anything else is a one-line
    :class:`GentuneError` naming the file."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GentuneError(f"{path}: malformed JSON ({e})") from None
    except OSError as e:
        raise GentuneError(f"{path}: cannot read it ({e.strerror or e})") from None
    if not isinstance(doc, dict):
        raise GentuneError(f"{path}: expected a JSON object")
    if fmt is not None and doc.get("format") != fmt:
        raise GentuneError(f"{path}: not a {what} (format {fmt})")
    return doc


def strict_json(obj: Any, where: str = "") -> tuple[Any, list[str]]:
    """(``obj`` with every non-finite float replaced by None, the paths of what was replaced, ``a.b[2]``).
    Zero-dimensional arrays, tensors and numpy scalars become Python numbers."""
    replaced: list[str] = []

    def walk(x, at):
        if hasattr(x, "item") and getattr(x, "ndim", None) == 0:
            x = x.item()
        if isinstance(x, float) and not math.isfinite(x):
            replaced.append(at or "/")
            return None
        if isinstance(x, dict):
            return {k: walk(v, f"{at}.{k}" if at else str(k)) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v, f"{at}[{i}]") for i, v in enumerate(x)]
        return x

    return walk(obj, where), replaced


def dumps_strict(obj: Any, **kw) -> str:
    """JSON with no bare NaN or Infinity: a dict whose non-finite values became null gets a ``nonfinite`` key
    listing them, so the file says what happened."""
    clean, replaced = strict_json(obj)
    if replaced and isinstance(clean, dict):
        clean = {**clean, "nonfinite": replaced}
    return json.dumps(clean, allow_nan=False, **kw)


def write_json_atomic(path: Path, obj) -> None:
    write_text_atomic(path, dumps_strict(obj, indent=2, sort_keys=False) + "\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def folder_lock(folder: Path):
    """Hold ``folder/.gentune.lock`` (the holder's pid and host) while the block runs: a second gentune run on the
    same folder is refused with one line, a lock left by a process that no longer exists (this host) is taken
    over."""
    lock = Path(folder) / LOCK
    mine = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text())
                pid, host = int(holder["pid"]), str(holder["host"])
            except (OSError, ValueError, KeyError, TypeError):
                holder, pid, host = None, None, None  # a lock being written, or damaged: look again
            if holder is not None and (host != mine["host"] or _alive(pid)) and pid != mine["pid"]:
                raise GentuneError(f"{folder}: another gentune run (pid {pid} on {host}) is using it; wait for it to "
                                   f"end or use another --out (if no such run exists, delete {lock})") from None
            if holder is not None:
                lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        except OSError as e:
            raise io_error(lock, e) from e
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(mine))
        break
    else:
        raise GentuneError(f"{lock}: cannot take the lock (another run keeps re-creating it?)")
    try:
        yield
    finally:
        try:
            if json.loads(lock.read_text()).get("pid") == mine["pid"]:
                lock.unlink()
        except (OSError, ValueError):
            pass


__all__ = ["LOCK", "atomic_dir", "dumps_strict", "folder_lock", "io_error", "read_json", "recover_dir", "strict_json",
           "swap_into", "write_errors", "write_json_atomic", "write_text_atomic"]
