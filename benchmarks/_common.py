"""What every benchmark script records about the machine it ran on."""

import os
import platform
from pathlib import Path


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
