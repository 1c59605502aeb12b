"""Progress of long work that is not a training run (a kernel's blocks): a tqdm bar on a terminal, otherwise (a
pipe, nohup, SLURM, CI) one plain line about every 30 seconds with the time left. ``hms`` is the duration format
both this and the training loop's progress lines use."""

from __future__ import annotations

import sys
import time


def hms(seconds: float) -> str:
    """``12m05s``, or ``1h02m`` from an hour on."""
    seconds = int(max(seconds, 0))
    h, m, s = seconds // 3600, seconds % 3600 // 60, seconds % 60
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class WorkProgress:
    """``total`` units of ``what`` (e.g. "kernel", "block"); ``update(n)`` after each; work found already done
    (``skipped``) advances the count without entering the rate."""

    def __init__(self, total: int, enabled: bool, what: str = "work", unit: str = "unit", stream=None):
        from tqdm.auto import tqdm

        self.stream = stream or sys.stdout
        self.tty = enabled and sys.stderr.isatty()
        self.plain = enabled and not self.tty
        self.what, self.unit = what, unit
        self.bar = tqdm(total=total, disable=not self.tty, unit=unit, desc=what, dynamic_ncols=True)
        self.total, self.done, self.skipped = total, 0, 0
        self.started, self.last = time.perf_counter(), None

    def update(self, n: int = 1, skipped: bool = False) -> None:
        self.done += n
        if skipped:
            self.skipped += n
        self.bar.update(n)
        now = time.perf_counter()
        if self.plain and not skipped and (self.last is None or now - self.last >= 30 or self.done == self.total):
            rate = (now - self.started) / max(self.done - self.skipped, 1)
            print(f"{self.what} {self.unit} {self.done}/{self.total} ({100 * self.done / max(self.total, 1):.0f}%)  "
                  f"{rate:.2f} s/{self.unit}  left {hms(rate * (self.total - self.done))}", file=self.stream,
                  flush=True)
            self.last = now

    def close(self) -> None:
        self.bar.close()
