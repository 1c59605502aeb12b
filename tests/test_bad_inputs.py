"""Bad inputs, in process through ``cli.main``: every case exits 2 with exactly one line ``error: ...`` naming the
file, line or key, prints no traceback, and leaves every file that existed before the command byte-identical
(and creates none). Then what is not an error: a warning, an empty class left out, a diverged run, a malicious
pickle in a resume checkpoint, a full disk."""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import cli, write_images

SENTENCES = ["a fine film", "dull , slow and far too long", "warm and funny", "a mess", "the best of the year",
             "nothing works", "lovely", "tedious and flat"]


@dataclass
class Env:
    tmp: Path
    model: str
    train: Path
    dev: Path
    images: Path

    def ft(self, out: Path | str, *extra) -> list:
        return ["finetune", "--task", "sst2", "--model", self.model, "--train", self.train, "--dev", self.dev,
                "--out", out, "--max-steps", "2", "--batch-size", "4", *extra]


def _tsv(path: Path, n: int) -> Path:
    path.write_text("sentence\tlabel\n" + "".join(f"{SENTENCES[i % 8]}\t{i % 2}\n" for i in range(n)))
    return path


@pytest.fixture()
def env(tmp_path, tiny_model, monkeypatch) -> Env:
    monkeypatch.setenv("GENTUNE_CACHE", str(tmp_path / ".cache"))
    data = tmp_path / "data"
    data.mkdir()
    return Env(tmp_path, tiny_model, _tsv(data / "train.tsv", 16), _tsv(data / "dev.tsv", 8),
               write_images(tmp_path / "images", ["cat", "dog"], 6, 16, noise=30))


def _snapshot(*roots: Path) -> dict[str, str]:
    """Every file and folder under ``roots``: a file's sha256, a folder's "dir"."""
    seen = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")):
            if ".cache" in p.parts:
                continue
            seen[str(p)] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return seen


class _Evil:
    """A pickle that, unpickled, creates a file: proof that code ran."""

    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_bytes(marker: Path) -> bytes:
    _Evil.marker = str(marker)
    return pickle.dumps({"state": _Evil()})


def _finished_run(env: Env, name: str = "done", *extra) -> Path:
    """A small finished text run (its resume checkpoint kept)."""
    out = env.tmp / name
    code, _, err = cli_quiet(env.ft(out, "--set", "keep_checkpoint=true", *extra))
    assert code == 0, err
    return out


def cli_quiet(argv):
    from gentune.cli import main

    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(a) for a in argv])
    return code, "", err.getvalue()


_UNFINISHED: list[tuple[Path, Path]] = []  # (a template run, the test folder it was made in)


def _unfinished_run(env: Env) -> Path:
    """A run stopped after its last checkpoint, before summary.json: the same command resumes it. Made once and
    copied, its config's paths moved to this test's folder (the data files are the same in every test)."""
    out = env.tmp / "unfinished"
    if not _UNFINISHED:
        made = _finished_run(env, "unfinished-template")
        (made / "summary.json").unlink()
        _UNFINISHED.append((made, env.tmp))
    template, made_in = _UNFINISHED[0]
    shutil.copytree(template, out)
    config = (out / "config.yaml").read_text()
    (out / "config.yaml").write_text(config.replace(str(template), str(out)).replace(str(made_in), str(env.tmp)))
    return out


# ---------------------------------------------------------------------------------------------- the table
# name -> (argv from the environment, what the one error line must name)


def _out_with_user_files(env):
    out = env.tmp / "mine"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "weights.bin").write_bytes(b"the user's own")
    (out / "notes.txt").write_text("do not delete")
    (out / "best").mkdir()
    (out / "best" / "x").write_text("mine too")
    return env.ft(out)


def _locked(env):
    out = env.tmp / "busy"
    out.mkdir()
    (out / ".gentune.lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    return env.ft(out)


_BEST: list[Path] = []  # one finished run's best/, made once: the checkpoint cases only read a copy of it


def _ckpt(env, mutate):
    if not _BEST:
        _BEST.append(_finished_run(env, "best-template") / "best")
    best = env.tmp / "ckpt" / "best"
    shutil.copytree(_BEST[0], best)
    mutate(best)
    return ["evaluate", "--checkpoint", best, "--task", "sst2", "--data", env.dev]


def _truncate(best):
    f = best / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _bad_header(best):
    f = best / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[:8] = (10 ** 12).to_bytes(8, "little")
    f.write_bytes(bytes(data))


def _pickle_bin(best):
    (best / "model.safetensors").unlink()
    (best / "pytorch_model.bin").write_bytes(_evil_bytes(best.parent / "PWNED"))


def _corrupt_resume(env, name: str):
    out = _unfinished_run(env)
    f = out / "checkpoint" / name
    f.write_bytes(f.read_bytes()[:40])
    return env.ft(out, "--set", "keep_checkpoint=true")


def _legacy_resume(env):
    out = _unfinished_run(env)
    ckpt = out / "checkpoint"
    for f in ckpt.iterdir():
        f.unlink()
    (ckpt / "custom_checkpoint_0.pkl").write_bytes(_evil_bytes(env.tmp / "PWNED"))
    (ckpt / "optimizer.bin").write_bytes(b"old")
    (ckpt / "trainer_state.json").write_text("{}")
    return env.ft(out, "--set", "keep_checkpoint=true")


def _long_csv_field(env):
    f = env.tmp / "data" / "long.csv"
    f.write_text("1,short\n0," + "x" * 200_000 + "\n")
    return ["finetune", "--task", "mr", "--model", env.model, "--train", f, "--dev", f, "--out", env.tmp / "o"]


def _yaml(env, text):
    f = env.tmp / "c.yaml"
    f.write_text(text)
    return env.ft(env.tmp / "o", "--config", f)


CASES = {
    # output folders
    "out-holds-user-files": (_out_with_user_files, "holds files of its own (best, checkpoint, notes.txt)"),
    "out-is-the-image-data": (lambda e: ["finetune", "--task", "image-classification", "--data", e.images,
                                         "--out", e.images, "--max-steps", "1"], "inside the input"),
    "out-inside-the-image-data": (lambda e: ["finetune", "--task", "image-classification", "--data", e.images,
                                             "--out", e.images / "run", "--max-steps", "1"], "inside the input"),
    "out-inside-the-model": (lambda e: e.ft(Path(e.model) / "run"), "inside the input"),
    "out-locked-by-another-run": (_locked, f"another gentune run (pid {os.getppid()}"),
    "out-read-only": (lambda e: e.ft("/proc/self"), "--out /proc/self: cannot write in it"),
    "out-cannot-be-created": (lambda e: e.ft("/proc/self/gentune-run"), "cannot create it"),
    "out-is-a-file": (lambda e: e.ft(e.train), "exists and is not a folder"),
    # values
    "epochs-inf": (lambda e: e.ft(e.tmp / "o", "--epochs", "inf", "--max-steps", "0"),
                   "epochs must be a finite number"),
    "max-steps-negative": (lambda e: e.ft(e.tmp / "o", "--max-steps", "-1"), "max_steps must be >= 0"),
    "lr-inf": (lambda e: e.ft(e.tmp / "o", "--lr", "inf"), "lr must be a finite number"),
    "save-steps-negative": (lambda e: e.ft(e.tmp / "o", "--set", "save_steps=-1"), "save_steps must be >= 0"),
    "eval-steps-negative": (lambda e: e.ft(e.tmp / "o", "--set", "eval_steps=-3"), "eval_steps must be >= 0"),
    "max-grad-norm-nan": (lambda e: e.ft(e.tmp / "o", "--set", "max_grad_norm=nan"),
                          "max_grad_norm must be a finite number"),
    "nonfinite-steps-negative": (lambda e: e.ft(e.tmp / "o", "--set", "nonfinite_steps=-1"),
                                 "nonfinite_steps must be >= 0"),
    "yaml-option-type": (lambda e: _yaml(e, "regularizer: [l2sp]\nregularizer_options: {l2sp: {alpha: abc}}\n"),
                         "c.yaml: regularizer_options.l2sp.alpha: expected a number, got 'abc'"),
    # data
    "data-dir-and-files": (lambda e: e.ft(e.tmp / "o", "--data-dir", e.tmp / "data"),
                           "and --train/--dev both name the data; give one of them"),
    "data-dir-missing": (lambda e: ["finetune", "--task", "sst2", "--model", e.model, "--data-dir",
                                    e.tmp / "nowhere", "--out", e.tmp / "o"], "nowhere: no such folder"),
    "train-is-a-folder": (lambda e: ["finetune", "--task", "sst2", "--model", e.model, "--train", e.tmp / "data",
                                     "--dev", e.dev, "--out", e.tmp / "o"], "data: a folder, not a data file"),
    "csv-field-over-the-limit": (_long_csv_field, "long.csv:2: a field longer than the CSV reader's limit of "
                                                  "131,072 characters (set $GENTUNE_CSV_FIELD_LIMIT"),
    # checkpoints
    "ckpt-truncated-safetensors": (lambda e: _ckpt(e, _truncate), "a damaged safetensors file"),
    "ckpt-bad-header": (lambda e: _ckpt(e, _bad_header), "a damaged safetensors file (Error while deserializing "
                                                         "header: header too large)"),
    "ckpt-malformed-gentune-json": (lambda e: _ckpt(e, lambda b: (b / "gentune.json").write_text("{oops")),
                                    "gentune.json: malformed JSON"),
    "ckpt-malformed-config-json": (lambda e: _ckpt(e, lambda b: (b / "config.json").write_text("{oops")),
                                   "config.json: not a model config"),
    "ckpt-pickled-bin": (lambda e: _ckpt(e, _pickle_bin), "which gentune does not unpickle"),
    "resume-corrupt-optimizer": (lambda e: _corrupt_resume(e, "optimizer.safetensors"),
                                 "optimizer.safetensors: damaged"),
    "resume-corrupt-model": (lambda e: _corrupt_resume(e, "model.safetensors"), "model.safetensors"),
    "resume-corrupt-state": (lambda e: _corrupt_resume(e, "trainer_state.json"), "trainer_state.json: damaged"),
    "resume-pickle-checkpoint-of-an-earlier-version": (_legacy_resume, "in pickle files, which gentune no longer "
                                                                       "reads"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_and_touches_nothing(name, env, capsys):
    setup, needle = CASES[name]
    argv = setup(env)
    before = _snapshot(env.tmp, Path(env.model))
    code, out, err = cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert "Traceback" not in err
    assert _snapshot(env.tmp, Path(env.model)) == before  # nothing changed, nothing added, nothing removed
    assert not (env.tmp / "PWNED").exists() and not (env.tmp / "done" / "PWNED").exists()


# ---------------------------------------------------------------------------------------------- not errors


def test_train_size_above_the_data_is_a_warning(env, capsys):
    code, _, err = cli(capsys, *env.ft(env.tmp / "o", "--train-size", "1000"))
    assert code == 0
    assert [l for l in err.splitlines() if l.strip()] == [
        "warning: --train-size 1000 is more than the 16 training examples; all of them are used"]


def test_an_empty_class_folder_left_out_does_not_block(env, capsys):
    (env.images / "fox").mkdir()
    code, _, err = cli(capsys, "finetune", "--task", "image-classification", "--data", env.images, "--out",
                       env.tmp / "ok", "--classes", "cat,dog", "--max-steps", "1", "--set", "val_size=4",
                       "--model", "vit-micro-p4")
    assert code == 0, err
    code, _, err = cli(capsys, "finetune", "--task", "image-classification", "--data", env.images, "--out",
                       env.tmp / "all", "--max-steps", "1", "--set", "val_size=4", "--model", "vit-micro-p4")
    assert code == 2 and "class folder 'fox' has no images (leave it out with --classes)" in err
    assert not (env.tmp / "all").exists()  # a failed start leaves no folder behind


def test_overwrite_writes_into_a_user_folder_and_keeps_its_files(env, capsys):
    argv = _out_with_user_files(env)
    code, _, err = cli(capsys, *argv, "--set", "overwrite=true")
    assert code == 0, err
    out = env.tmp / "mine"
    assert (out / "notes.txt").read_text() == "do not delete" and (out / "summary.json").is_file()


def test_a_stale_lock_is_taken_over(env, capsys):
    out = env.tmp / "stale"
    out.mkdir()
    dead = 2 ** 22 + 12345  # no process has this pid here (pid_max is lower)
    (out / ".gentune.lock").write_text(json.dumps({"pid": dead, "host": socket.gethostname()}))
    code, _, err = cli(capsys, *env.ft(out))
    assert code == 0, err
    assert not (out / ".gentune.lock").exists()  # released at the end


def test_divergence_stops_with_one_line_and_keeps_the_good_best(env, capsys):
    """lr 1e10: the first step explodes the weights, the next losses are NaN. Those steps are skipped (the
    weights stay finite), counted, and after 5 in a row the run stops; best/ is the finite model of before."""
    from safetensors.torch import load_file

    out = env.tmp / "diverged"
    code, _, err = cli(capsys, *env.ft(out, "--lr", "1e10", "--max-steps", "20", "--set", "eval_steps=1"))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: training diverged at step ") and "(loss nan)" in lines[0]
    assert "5 steps in a row" in lines[0] and "best/" in lines[0]
    weights = load_file(str(out / "best" / "model.safetensors"))
    assert all(bool(t.isfinite().all()) for t in weights.values())
    assert json.loads((out / "best" / "gentune.json").read_text())["step"] == 1  # the only finite evaluation
    text = (out / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON: null, and the key named
    records = [json.loads(l) for l in text.splitlines()]
    skipped = [r for r in records if r["type"] == "train" and r["loss"] is None]
    assert len(skipped) >= 5 and all("loss" in r["nonfinite"] for r in skipped)
    assert records[-1]["nonfinite_steps"] >= 5


def test_a_diverged_pretraining_saves_no_encoder(env, capsys):
    code, _, err = cli(capsys, "pretrain", "--data", env.images, "--out", env.tmp / "mae", "--model", "vit-micro-p4",
                       "--lr", "1e12", "--max-steps", "12", "--batch-size", "4", "--set", "val_size=4",
                       "--set", "warmup_ratio=0", "--set", "max_grad_norm=0")
    assert code == 2 and "training diverged" in err, err
    assert not (env.tmp / "mae" / "encoder").exists()


def test_json_outputs_are_strict(tmp_path):
    from gentune.fs import dumps_strict, write_json_atomic

    write_json_atomic(tmp_path / "s.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -math.inf}})
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc == {"a": None, "b": [1.0, None], "c": {"d": None}, "nonfinite": ["a", "b[1]", "c.d"]}
    assert dumps_strict({"x": 1.5}) == '{"x": 1.5}'


# ---------------------------------------------------------------------------------------------- no pickle


def test_a_pickle_planted_in_any_file_of_a_resume_checkpoint_runs_nothing(env, capsys):
    """Every file of a resume checkpoint, replaced by a pickle whose unpickling would create a file: the resume
    is one line of error, and the file is never created (gentune reads safetensors and JSON only)."""
    out = _unfinished_run(env)
    pristine = env.tmp / "pristine"
    shutil.copytree(out / "checkpoint", pristine)
    marker = env.tmp / "PWNED"
    evil = _evil_bytes(marker)
    names = sorted(f.name for f in pristine.iterdir())
    assert {"model.safetensors", "optimizer.safetensors", "scheduler.json", "regularizers.json", "rng_0.safetensors",
            "trainer_state.json", "gentune-resume.json"} <= set(names)
    for name in names:
        shutil.rmtree(out / "checkpoint")
        shutil.copytree(pristine, out / "checkpoint")
        (out / "checkpoint" / name).write_bytes(evil)
        code, _, err = cli(capsys, *env.ft(out, "--set", "keep_checkpoint=true"))
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (name, err)
        assert not marker.exists(), name
    # all at once, too
    for name in names:
        (out / "checkpoint" / name).write_bytes(evil)
    code, _, err = cli(capsys, *env.ft(out, "--set", "keep_checkpoint=true"))
    assert code == 2 and not marker.exists()
    # and the pristine checkpoint still resumes
    shutil.rmtree(out / "checkpoint")
    shutil.copytree(pristine, out / "checkpoint")
    code, _, err = cli(capsys, *env.ft(out, "--set", "keep_checkpoint=true"))
    assert code == 0, err


def test_no_code_in_gentune_unpickles():
    """torch.load only with weights_only=True, np.load only with allow_pickle=False, no pickle.load anywhere."""
    import re

    root = Path(__file__).resolve().parents[1]
    bad = []
    for f in [*root.joinpath("src").rglob("*.py"), *root.joinpath("benchmarks").rglob("*.py")]:
        for i, line in enumerate(f.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if re.search(r"torch\.load\(", code) and "weights_only=True" not in code:
                bad.append(f"{f.relative_to(root)}:{i}")
            if re.search(r"\bnp\.load\(", code) and "allow_pickle=False" not in code:
                bad.append(f"{f.relative_to(root)}:{i}")
            if re.search(r"pickle\.loads?\(|Unpickler\(|cloudpickle|\bdill\b|joblib\.load", code):
                bad.append(f"{f.relative_to(root)}:{i}")
    assert bad == []
