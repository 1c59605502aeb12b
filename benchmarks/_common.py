"""What every benchmark script records about the machine it ran on."""

import os
import platform
from pathlib import Path


def machine() -> str:
    """CPU model, core count, OS and kernel, e.g. ``AMD EPYC, 2 cores, Linux 6.18``."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"
