"""Running the work: one ``gentune`` subprocess per cell, several calls at once, and the results page after."""

from __future__ import annotations

import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from .paths import ROOT


def gentune(argv: list[str], jobs: int = 1, label: str = "") -> None:
    """Run ``gentune ARGV`` from the repository root with this interpreter.

    Args:
        argv: the arguments after ``gentune``; when ``jobs`` > 1 they must hold ``--out``.
        jobs: how many runs go on at once; above 1 the run's output goes to ``OUT.log`` beside its run folder
            (gentune wants the folder itself clean) and only its last line, or its tail on failure, is printed.
        label: what the run is, for the log line.

    Raises:
        subprocess.CalledProcessError: the run failed.
    """
    cmd = [sys.executable, "-m", "gentune", *argv]
    shown = "gentune " + shlex.join(argv)
    print(f"[run ] {label + ': ' if label else ''}{shown}", flush=True)
    if jobs == 1:
        subprocess.run(cmd, cwd=ROOT, check=True)
        return
    log = ROOT / (argv[argv.index("--out") + 1] + ".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        done = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    lines = log.read_text(errors="replace").splitlines()
    if done.returncode:
        print("\n".join(["[fail] " + shown, *lines[-15:]]), flush=True)
        raise subprocess.CalledProcessError(done.returncode, cmd)
    print(f"[done] {lines[-1] if lines else shown}", flush=True)


def same_command(a: str, b: str) -> bool:
    """Whether two recorded ``gentune`` commands are the same protocol: equal but for where the data lies (the value
    of ``--data``, compared by its file or folder name: ``../shared/data/x.npz`` here and ``.device/data/x.npz`` on a
    GPU machine are the same data set)."""
    def norm(command: str) -> list[str]:
        words = shlex.split(command)
        return [Path(w).name if i and words[i - 1] == "--data" else w for i, w in enumerate(words)]

    return norm(a) == norm(b)


def run_cell(cell: Path, argv: list[str], record: dict, out: Path, keep: bool = False, jobs: int = 1,
             redo: bool = False) -> None:
    """One ``gentune ARGV`` run into ``out`` recorded as the JSON cell ``cell`` (the record, the command, machine,
    commit, date, wall time and the run's summary.json); a finished cell is skipped, one made by another command
    is refused. A half-made ``out`` (no config.yaml) is cleared first; ``out/best`` is removed after unless
    ``keep`` (the cell holds what the tables need). ``jobs``: as :func:`gentune` (above 1, the run's output goes to
    a log beside ``out``). ``redo``: run a finished cell again (its run folder is gone and a later cell needs
    what it made); the cell is replaced only when the run has finished, and keeps the first run's final dev metrics
    and whether the rerun reproduced them (:func:`cells.redo_record`)."""
    import datetime as dt
    import os
    import shutil
    import time

    from . import cells
    from .provenance import commit, machine

    where = os.path.relpath(cell, ROOT)
    command = shlex.join(["gentune", *argv])
    if cell.exists() and not same_command(cells.read_json(cell).get("command", ""), command):
        raise SystemExit(f"error: {where} was made by another command; move it away to rerun")
    if not redo and cells.finished(cell, f"{record} -> {where}"):
        return
    if out.exists() and not (out / "config.yaml").exists():
        shutil.rmtree(out)
    original = cells.redo_record(cells.read_json(cell)) if redo and cell.exists() else None
    t0 = time.time()
    gentune(argv, jobs, label=" ".join(f"{k}={v}" for k, v in record.items()))
    summary = cells.read_json(out / "summary.json")
    cells.write_json(cell, {**record, "command": command, "machine": machine(), "commit": commit(),
                            "date": dt.date.today().isoformat(), "wall_seconds": time.time() - t0,
                            "summary": summary, **cells.redone_of(original, summary)})
    if not keep:
        shutil.rmtree(out / "best", ignore_errors=True)


def parallel(calls: list[Callable[[], object]], jobs: int = 1) -> list:
    """Call each zero-argument function, ``jobs`` at a time, and return their results in order.

    Threads suffice: each call waits on its own gentune process. Every call runs to its end before the first
    error is raised, so one failed cell does not lose the others.
    """
    if jobs == 1:
        return [c() for c in calls]
    pool = ThreadPoolExecutor(jobs)
    try:
        futures = [pool.submit(c) for c in calls]
        for f in futures:
            f.exception()  # waits; an interrupt (a time limit's SIGINT) lands here
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)  # no queued cell starts after it; running ones end with it
        raise
    pool.shutdown()
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]
    return [f.result() for f in futures]


def render_results() -> None:
    """Rebuild docs/results.md and its plots from every cell (``benchmarks/render_results.py``, a subprocess:
    the renderer imports every grid, and a grid never imports another)."""
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "render_results.py")], cwd=ROOT, check=True)
