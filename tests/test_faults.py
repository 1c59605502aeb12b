"""Faults: a run killed at a random step (SIGKILL, a real process) and started again with the same command ends
with the uninterrupted run's losses, metrics and weights; a disk that fills up during a save leaves the earlier
checkpoint and best model loadable, and the run resumes once there is room."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, SLOW_CLI, cli, write_images

SEED = int(os.environ.get("GENTUNE_FAULT_SEED", time.time_ns() % 100_000))  # printed with every failure


def _records(out: Path) -> tuple[list[dict], list[dict]]:
    rec = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rec if r["type"] == "train"], [r for r in rec if r["type"] == "eval"]


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _kill_at(argv: list, out: Path, step: int, env: dict) -> None:
    """Run ``gentune ARGV`` (with the sleeping test-slow regularizer) in a real process and SIGKILL it once its
    log reaches ``step``."""
    script = out.parent / "slow_cli.py"
    script.write_text(SLOW_CLI)
    proc = subprocess.Popen([sys.executable, str(script), *map(str, argv)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        log = out / "metrics.jsonl"
        steps = [json.loads(l)["step"] for l in log.read_text().splitlines() if l.strip()] if log.exists() else []
        if steps and max(steps) >= step:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "summary.json").exists(), "the run ended before it could be killed"


def _in_process_twins(argv_full: list, argv_part: list, kill: int, env: dict, capsys) -> None:
    """The uninterrupted run and the rerun of the killed one, in this process, with test-slow minus its sleep."""
    from gentune import registry

    @registry.register("regularizer", "test-slow")
    class NotSlow:
        """Adds no loss."""

        def __call__(self, model, batch, outputs):
            return {}

    try:
        code, _, err = cli(capsys, *argv_full)
        assert code == 0, err
        _kill_at(argv_part, Path(argv_part[argv_part.index("--out") + 1]), kill, env)
        code, _, err = cli(capsys, *argv_part)  # the same command again: it resumes
        assert code == 0, err
    finally:
        registry.unregister("regularizer", "test-slow")


@pytest.mark.slow
def test_sigkill_at_a_random_step_of_smart_fine_tuning(glue, tiny_model, tmp_path, capsys):
    """Dropout on, SMART's random noise and its momentum teacher: all must come back from the checkpoint."""
    kill = random.Random(SEED).randint(2, 10)
    k = glue / "k-shot" / "SST-2" / "16-13"

    def argv(out):
        return ["finetune", "--task", "sst2", "--out", out, "--model", tiny_model, "--train", k / "train.tsv",
                "--dev", k / "dev.tsv", "--batch-size", "8", "--lr", "1e-3", "--epochs", "3", "--max-length", "64",
                "--seed", "3", "--regularizer", "test-slow", "smart", "--set", "save_steps=2", "--set",
                "eval_steps=5"]

    full, part = tmp_path / "full", tmp_path / "part"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    _in_process_twins(argv(full), argv(part), kill, env, capsys)
    (a_train, a_eval), (b_train, b_eval) = _records(full), _records(part)
    where = f"(killed at step {kill}; GENTUNE_FAULT_SEED={SEED})"
    assert [r["step"] for r in b_train] == list(range(1, 13)), where  # no step lost or logged twice
    assert [r["loss"] for r in b_train] == pytest.approx([r["loss"] for r in a_train], rel=1e-5), where
    assert [r["accuracy"] for r in b_eval] == [r["accuracy"] for r in a_eval], where
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (full, part))
    assert sb["final_dev"] == pytest.approx(sa["final_dev"], rel=1e-5) and sb["best_step"] == sa["best_step"], where
    wa, wb = _weights(full / "best"), _weights(part / "best")
    assert all(torch.allclose(wa[key], wb[key], atol=1e-5) for key in wa), where


@pytest.mark.slow
def test_sigkill_at_a_random_step_of_image_pretraining_with_radreg(tmp_path, capsys, monkeypatch):
    """Masks, augmentations, RadReg's downstream stream, its signs and its MLP heads: all from the checkpoint."""
    monkeypatch.setenv("GENTUNE_CACHE", str(tmp_path / "cache"))
    write_images(tmp_path / "pre", ["a", "b"], 10, 16)
    write_images(tmp_path / "down", ["c"], 10, 16, seed=1)
    kill = random.Random(SEED).randint(2, 9)

    def argv(out):
        return ["pretrain", "--data", tmp_path / "pre", "--out", out, "--model", "vit-micro-p4", "--max-steps",
                "12", "--batch-size", "4", "--set", "val_size=4", "--set", "save_steps=2", "--set", "eval_steps=4",
                "--regularizer", "test-slow", "radreg", "--set", f"radreg.data={tmp_path / 'down'}", "--set",
                "radreg.head=mlp", "--set", "radreg.batch_size=4", "--set", "mae.decoder_dim=32"]

    full, part = tmp_path / "full", tmp_path / "part"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "GENTUNE_CACHE": str(tmp_path / "cache")}
    _in_process_twins(argv(full), argv(part), kill, env, capsys)
    where = f"(killed at step {kill}; GENTUNE_FAULT_SEED={SEED})"
    (a_train, _), (b_train, _) = _records(full), _records(part)
    assert [r["step"] for r in b_train] == list(range(1, 13)), where
    for key in ("loss", "radreg", "radreg_complexity"):
        assert [r[key] for r in b_train] == pytest.approx([r[key] for r in a_train], rel=1e-5), (key, where)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (full, part))
    assert sb["final_dev"] == pytest.approx(sa["final_dev"], rel=1e-5), where
    wa, wb = _weights(full / "encoder"), _weights(part / "encoder")
    assert all(torch.allclose(wa[key], wb[key], atol=1e-5) for key in wa), where


def _small_disk(path: Path, megabytes: int) -> bool:
    """A size-limited tmpfs at ``path`` where the machine allows mounting one (root, a mount namespace)."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
                       capture_output=True, text=True)
    return r.returncode == 0


@pytest.mark.parametrize("disk", ["tmpfs", "patched"])
def test_a_full_disk_during_a_save_keeps_the_earlier_copies(disk, tiny_model, tmp_path, capsys, monkeypatch):
    """The disk fills up while a later checkpoint or best model is written: one line of error, exit 2; the
    earlier checkpoint and best/ still load, and once there is room the same command resumes and ends as an
    uninterrupted run does. ``tmpfs``: a real size-limited disk, where this machine can mount one (else, as
    ``patched``); ``patched``: a writer that fails as a full disk does (ENOSPC) once a best/ and a checkpoint are
    there."""
    from gentune.models.checkpoint import load_text_classifier
    from gentune.data import get_task
    from gentune.train.resume import read_state

    data = tmp_path / "data"
    data.mkdir()
    for name, n in (("train", 32), ("dev", 8)):
        rows = "".join(f"{['a fine film', 'dull and slow', 'warm', 'a mess'][i % 4]}\t{i % 2}\n" for i in range(n))
        (data / f"{name}.tsv").write_text("sentence\tlabel\n" + rows)

    def argv(out):
        return ["finetune", "--task", "sst2", "--model", tiny_model, "--train", data / "train.tsv", "--dev",
                data / "dev.tsv", "--out", out, "--batch-size", "4", "--lr", "1e-3", "--max-steps", "8", "--set",
                "save_steps=2", "--set", "eval_steps=2", "--set", "keep_checkpoint=true"]

    full = tmp_path / "full"
    code, _, err = cli(capsys, *argv(full))
    assert code == 0, err
    sizes = {name: sum(f.stat().st_size for f in (full / name).rglob("*") if f.is_file()) >> 20
             for name in ("best", "checkpoint")}
    mount = tmp_path / "disk"
    # room for one best/ and one checkpoint, not for a second of either (a save writes the new copy first)
    real = disk == "tmpfs" and _small_disk(mount, sizes["best"] + sizes["checkpoint"] + 2)
    print(f"disk: {'a real tmpfs' if real else 'a patched writer'}")
    try:
        out = mount / "run"
        if not real:
            import safetensors.torch

            write = safetensors.torch.save_file

            def full_disk(*a, **kw):
                if (out / "best").is_dir() and (out / "checkpoint").is_dir():  # one of each written: now full
                    raise OSError(28, "No space left on device")
                return write(*a, **kw)

            monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
        code, _, err = cli(capsys, *argv(out))
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "no space left on the device" in lines[0], err
        assert "the earlier copy, if any, is kept" in lines[0]
        monkeypatch.undo()
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        model, meta = load_text_classifier(out / "best", get_task("sst2"))  # the earlier best/ loads
        assert meta["step"] >= 2
        state = read_state(out / "checkpoint")  # and so does the earlier checkpoint
        assert 2 <= state.step < 8 and not (out / "summary.json").exists()
        moved = tmp_path / "moved"  # room again: the same run, on a disk with space
        shutil.copytree(out, moved)
    finally:
        if real:
            subprocess.run(["umount", "--lazy", str(mount)], capture_output=True)  # (loaded weights map its files)
    code, _, err = cli(capsys, *argv(moved))
    assert code == 0, err
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (full, moved))
    assert sb["final_dev"] == pytest.approx(sa["final_dev"], rel=1e-5) and sb["train_steps"] == 8
