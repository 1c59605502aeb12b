"""The examples in examples/ run (on the tiny model, a few steps), in this process as `python examples/X.py`."""

import runpy
import sys

from conftest import ROOT


def _run(monkeypatch, capsys, name: str, *args) -> str:
    monkeypatch.setattr(sys, "argv", [name, *map(str, args)])
    runpy.run_path(str(ROOT / "examples" / name), run_name="__main__")
    return capsys.readouterr().out


def test_smart_own_loop_example(glue, tiny_model, monkeypatch, capsys):
    out = _run(monkeypatch, capsys, "smart_own_loop.py", "--data-dir", glue, "--model", tiny_model, "--steps", "2")
    assert "step 1: task" in out and "smart_adv" in out and "bregman" in out


def test_fit_in_process_example(glue, tiny_model, monkeypatch, capsys):
    out = _run(monkeypatch, capsys, "fit_in_process.py", "--data-dir", glue, "--model", tiny_model, "--epochs", "1",
               "--lrs", "1e-4", "1e-3")
    assert out.count("4 steps, dev accuracy") == 2 and "best lr" in out
