"""The examples in examples/ run (on the tiny model, a few steps)."""

import subprocess
import sys

from conftest import ROOT


def test_smart_own_loop_example(glue, tiny_model):
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "smart_own_loop.py"), "--data-dir", str(glue),
                        "--model", tiny_model, "--steps", "2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "step 1: task" in r.stdout and "smart_adv" in r.stdout and "bregman" in r.stdout
