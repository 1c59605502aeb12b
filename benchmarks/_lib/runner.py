"""Running the work: one ``gentune`` subprocess per cell, several calls at once, and the results page after."""

from __future__ import annotations

import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
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


def parallel(calls: list[Callable[[], object]], jobs: int = 1) -> list:
    """Call each zero-argument function, ``jobs`` at a time, and return their results in order.

    Threads suffice: each call waits on its own gentune process. Every call runs to its end before the first
    error is raised, so one failed cell does not lose the others.
    """
    if jobs == 1:
        return [c() for c in calls]
    with ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(c) for c in calls]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]
    return [f.result() for f in futures]


def render_results() -> None:
    """Rebuild docs/results.md and its plots from every cell (``benchmarks/render_results.py``, a subprocess:
    the renderer imports every grid, and a grid never imports another)."""
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "render_results.py")], cwd=ROOT, check=True)
