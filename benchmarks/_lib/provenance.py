"""What a cell records about where it was made: the machine, the device's matmul rate, the git commit."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

from .paths import ROOT


def machine() -> str:
    """CPU model, core count, OS and kernel, e.g. ``AMD EPYC, 2 cores, Linux 6.18``; the GPU first when torch
    sees one (``NVIDIA H200 + ...``), since the runs then used it."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    host = f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)} + {host}"
    except ImportError:
        pass
    return host


def matmul_gflops() -> tuple[float, str]:
    """The float32 matmul rate of the device the runs use (the GPU when torch sees one, as gentune picks it; else
    the CPU with torch's threads) and that device's name: the ceiling a training step can approach."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    n, repeats = (8192, 50) if device == "cuda" else (1024, 20)  # enough work to fill the device
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a @ b
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0) / 1e9, device


def commit(short: bool = False) -> str | None:
    """The repository's commit, with ``+dirty`` when tracked files differ from it; None outside git.

    Args:
        short: the abbreviated hash (``git rev-parse --short``).
    """
    try:
        head = subprocess.run(["git", "rev-parse", *(["--short"] if short else []), "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")
