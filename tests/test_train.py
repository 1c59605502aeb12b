"""The training loop on a tiny random BERT: outputs, best checkpoint, accumulation, resume, two processes, and
`fit` in process (a real kill and resume is in tests/test_faults.py)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import gentune
from gentune.errors import GentuneError



def _kshot(glue, task_dir, split):
    folder = glue / "k-shot" / task_dir / "16-13"
    return str(next(p for p in folder.iterdir() if p.stem.startswith(split) and p.suffix in (".tsv", ".csv")))


def _args(glue, tiny, out, task="sst2", task_dir="SST-2", **kw):
    base = dict(task=task, out=str(out), model=tiny, train=_kshot(glue, task_dir, "train"),
                dev=_kshot(glue, task_dir, "dev"), batch_size=8, lr=1e-3, epochs=2, max_length=64, seed=1)
    base.update(kw)
    return base


def test_run_directory_and_best_checkpoint(glue, tiny_model, tmp_path):
    out = tmp_path / "run"
    s = gentune.finetune(**_args(glue, tiny_model, out, eval_steps=2))
    for key in ("task", "model", "seed", "best_dev", "final_dev", "train_steps", "train_seconds",
                "seconds_per_step", "examples_per_second"):
        assert key in s
    assert s["train_steps"] == 8 and s["train_examples"] == 32  # 32 examples / 8 = 4 steps x 2 epochs
    assert s["examples_per_second"] == pytest.approx(64 / s["train_seconds"])
    files = {p.name for p in out.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "summary.json", "loss.png", "dev.png", "best"} <= files
    assert "checkpoint" not in files  # removed after a finished run unless keep_checkpoint
    assert (out / "best" / "model.safetensors").is_file() and (out / "best" / "tokenizer.json").is_file()
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "train"] == list(range(1, 9))
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4, 6, 8]  # every 2 steps, which covers each epoch end, once
    best = max(evals, key=lambda r: r["accuracy"])
    assert s["best_dev"]["accuracy"] == best["accuracy"] and s["final_dev"] == {k: v for k, v in evals[-1].items()
                                                                              if k not in ("type", "step", "epoch")}
    # the saved best model reproduces its dev metrics through `evaluate`
    m = gentune.evaluate(str(out / "best"), "sst2", _kshot(glue, "SST-2", "dev"))
    assert m["accuracy"] == pytest.approx(s["best_dev"]["accuracy"]) and m["loss"] == pytest.approx(s["best_dev"]["loss"], rel=1e-5)
    assert yaml.safe_load((out / "config.yaml").read_text())["lr"] == 1e-3
    # rerunning the same command returns the finished summary; a different config is refused
    assert gentune.finetune(**_args(glue, tiny_model, out, eval_steps=2)) == s
    with pytest.raises(GentuneError, match="different config"):
        gentune.finetune(**_args(glue, tiny_model, out, lr=2e-3, eval_steps=2))


def test_loop_time_leaves_out_evaluation_and_checkpoints(glue, tiny_model, tmp_path, monkeypatch):
    """loop_overhead (issue 4's "loop overhead under 10%") counts data loading and logging, not the 0.4 s each
    evaluation sleeps here: 4 evaluations add 1.6 s to the wall time and nothing to loop_seconds."""
    import gentune.tasks.text_classification as ft

    real = ft.evaluate_model

    def slow(*a, **kw):
        time.sleep(0.4)
        return real(*a, **kw)

    monkeypatch.setattr(ft, "evaluate_model", slow)
    t0 = time.perf_counter()
    s = gentune.finetune(**_args(glue, tiny_model, tmp_path / "run", eval_steps=2, save_steps=3))
    wall = time.perf_counter() - t0
    assert wall > 1.6  # 3 evaluations during training and the final one were slowed
    assert s["train_seconds"] <= s["loop_seconds"] < s["train_seconds"] + 1.0
    assert s["loop_overhead"] == pytest.approx(1 - s["train_seconds"] / s["loop_seconds"])


def test_skipped_optimizer_steps_do_not_advance_the_regularizers(glue, tiny_model, tmp_path, monkeypatch):
    """When the fp16 grad scaler skips an optimizer step (inf gradients) the weights do not move, so neither may
    the teacher nor the step counters: smart-adv with start_step=1 never switches on if every step is skipped."""
    import accelerate

    args = dict(regularizer=["smart-adv"], regularizer_options={"smart-adv": {"start_step": 1}}, epochs=1)
    gentune.finetune(**_args(glue, tiny_model, tmp_path / "normal", **args))
    monkeypatch.setattr(accelerate.Accelerator, "optimizer_step_was_skipped", property(lambda self: True))
    gentune.finetune(**_args(glue, tiny_model, tmp_path / "skipped", **args))
    for name, expected in (("normal", [False, True, True, True]), ("skipped", [False] * 4)):
        records = [json.loads(l) for l in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert ["smart_adv" in r for r in records if r["type"] == "train"] == expected, name


def test_resumed_at_the_last_step_keeps_the_last_evaluation_as_final(glue, tiny_model, tmp_path):
    """A run killed after its final checkpoint but before summary.json resumes with nothing left to train: its
    final metrics are the last evaluation's, restored from the checkpoint (not the best one's)."""
    from gentune.train.run import CHECKPOINT
    from gentune.train.state import STATE_FILE

    out = tmp_path / "run"
    args = _args(glue, tiny_model, out, keep_checkpoint=True)
    first = gentune.finetune(**args)
    (out / "summary.json").unlink()
    state_file = out / CHECKPOINT / STATE_FILE
    state = json.loads(state_file.read_text())
    assert state["step"] == first["train_steps"] and state["last_dev"] == first["final_dev"]
    state["best_dev"] = {k: -1.0 for k in state["best_dev"]}  # a best that must not be reported as final
    state_file.write_text(json.dumps(state))
    again = gentune.finetune(**args)
    assert again["final_dev"] == first["final_dev"]


def test_regression_and_f1_tasks(glue, tiny_model, tmp_path):
    s = gentune.finetune(**_args(glue, tiny_model, tmp_path / "stsb", task="stsb", task_dir="STS-B", epochs=1))
    assert set(s["final_dev"]) == {"pearson", "spearman", "mse", "slope", "loss"} and s["main_metric"] == "pearson"
    assert s["final_dev"]["mse"] == pytest.approx(s["final_dev"]["loss"], rel=1e-5)  # the loss is the MSE
    s = gentune.finetune(**_args(glue, tiny_model, tmp_path / "mrpc", task="mrpc", task_dir="MRPC", epochs=1,
                                 save_model=False))
    assert set(s["final_dev"]) == {"accuracy", "f1", "loss"} and not (tmp_path / "mrpc" / "best").exists()


def _final_weights(out):
    from safetensors.torch import load_file

    return load_file(str(Path(out) / "best" / "model.safetensors"))


def test_gradient_accumulation_matches_the_large_batch(glue, tiny_model_nodrop, tmp_path):
    a = gentune.finetune(**_args(glue, tiny_model_nodrop, tmp_path / "a", batch_size=8, grad_accum=1, epochs=1))
    b = gentune.finetune(**_args(glue, tiny_model_nodrop, tmp_path / "b", batch_size=4, grad_accum=2, epochs=1))
    assert a["train_steps"] == b["train_steps"] == 4
    assert b["final_dev"]["loss"] == pytest.approx(a["final_dev"]["loss"], rel=1e-4)


def test_regularizer_terms_reach_the_loss(glue, tiny_model, tmp_path):
    plain = gentune.finetune(**_args(glue, tiny_model, tmp_path / "plain", epochs=1, keep_checkpoint=True))
    reg = gentune.finetune(**_args(glue, tiny_model, tmp_path / "reg", epochs=1, regularizer=["l2sp"],
                                   regularizer_options={"l2sp": {"alpha": 1e4, "beta": 0.0}}))
    rec = [json.loads(l) for l in (tmp_path / "reg" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rec if r["type"] == "train"]
    assert train[0]["l2sp"] == 0.0 and train[-1]["l2sp"] > 0
    assert all(r["loss"] == pytest.approx(r["task"] + r["l2sp"]) for r in train)
    assert (tmp_path / "plain" / "checkpoint").is_dir()
    # a strong pull to the start keeps the encoder much closer to it than plain fine-tuning
    from safetensors.torch import load_file

    from gentune.models.hf import load_for_task
    from gentune.data import get_task

    start = load_for_task(tiny_model, get_task("sst2")).state_dict()
    key = "bert.encoder.layer.0.attention.self.query.weight"
    dist = {name: (load_file(str(tmp_path / name / "best" / "model.safetensors"))[key] - start[key]).norm().item()
            for name in ("plain", "reg")}
    assert dist["reg"] < 0.2 * dist["plain"]


def test_alike_term_names_are_both_kept_and_a_repeated_name_is_refused(glue, tiny_model, tmp_path):
    gentune.finetune(**_args(glue, tiny_model, tmp_path / "two", max_steps=2, regularizer=["smart", "bregman"],
                             regularizer_options={"bregman": {"mu": 2.0}}))
    train, _ = _train_records(tmp_path / "two")
    assert {"bregman", "bregman/bregman", "smart_adv"} <= set(train[-1])
    assert train[-1]["bregman/bregman"] == pytest.approx(2 * train[-1]["bregman"], rel=1e-5)
    assert train[-1]["loss"] == pytest.approx(
        train[-1]["task"] + train[-1]["smart_adv"] + train[-1]["bregman"] + train[-1]["bregman/bregman"], rel=1e-5)
    with pytest.raises(GentuneError, match="twice"):
        gentune.finetune(**_args(glue, tiny_model, tmp_path / "dup", max_steps=1, regularizer=["l2sp", "l2sp"]))


def _train_records(out):
    rec = [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rec if r["type"] == "train"], [r for r in rec if r["type"] == "eval"]


@pytest.mark.slow
def test_two_processes_match_one(glue, tiny_model_nodrop, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU (torchrun + gloo) takes the same optimizer steps
    on the same examples as one process (batches are split across processes). With SMART the extra forwards run
    beside DDP and the teacher must stay identical on both processes, or the weights would drift apart.
    ``eval_train`` scores the training examples split across processes and gathered: the same numbers as one."""
    regs = ("smart",)
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["finetune", "--task", "sst2", "--model", tiny_model_nodrop, "--train", _kshot(glue, "SST-2", "train"),
              "--dev", _kshot(glue, "SST-2", "dev"), "--batch-size", "8", "--lr", "1e-3", "--epochs", "2",
              "--max-length", "64", "--seed", "5", "--set", "eval_train=true"]
    if regs:
        common += ["--regularizer", *regs]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    from gentune.cli import main

    assert main([*common, "--out", str(one)]) == 0  # one process: this one
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "gentune"]
    r = subprocess.run([*launch, *common, "--out", str(two)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert sb["num_processes"] == 2 and sa["num_processes"] == 1
    assert sb["train_steps"] == sa["train_steps"]
    assert sb["final_dev"]["loss"] == pytest.approx(sa["final_dev"]["loss"], rel=1e-4)
    assert sb["final_dev"]["accuracy"] == sa["final_dev"]["accuracy"]
    assert sb["final_train"]["accuracy"] == sa["final_train"]["accuracy"]
    assert sb["final_train"]["loss"] == pytest.approx(sa["final_train"]["loss"], rel=1e-4)
    assert sb["generalization_gap"]["accuracy_gap"] == pytest.approx(sa["generalization_gap"]["accuracy_gap"])
    wa, wb = _final_weights(one), _final_weights(two)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)


# ------------------------------------------------------------------------------------------ fit, in process


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(3, 1)

    def forward(self, x):
        return self.lin(x)


def _mse(model, batch):
    out = model(batch["x"])
    return {"loss": torch.nn.functional.mse_loss(out.squeeze(-1), batch["y"]), "output": out}


def _linear_job():
    from gentune.train import Job

    g = torch.Generator().manual_seed(1)
    xs = torch.randn(16, 3, generator=g)
    data = [{"x": x, "y": x.sum()} for x in xs]
    collate = lambda rows: {k: torch.stack([r[k] for r in rows]) for k in rows[0]}  # noqa: E731
    evaluate = lambda m, dl, acc: {"loss": sum(_mse(m, b)["loss"].item() for b in dl)}  # noqa: E731
    return Job(model=_Linear(), objective=_mse, train_set=data, collate=collate, dev_set=data, evaluate=evaluate,
               greater_is_better=False)


def _run_cfg(**kw):
    from gentune.config import RunConfig, apply_mapping

    return apply_mapping(RunConfig(), {"out": "never-written", "epochs": 2, "batch_size": 4, "lr": 0.05,
                                       "weight_decay": 0.0, "warmup_ratio": 0.0, **kw}, "test")


def test_fit_runs_many_times_in_one_process_and_writes_no_files(tmp_path, monkeypatch):
    """The grouping search's use: dozens of short fine-tunings in one process. fit returns the trained model and
    its metrics, writes nothing (not even OUT), and leaves the accelerator holding nothing of the run."""
    from accelerate import Accelerator

    from gentune.train import fit

    monkeypatch.chdir(tmp_path)
    acc = Accelerator(cpu=True)
    results = [fit(_linear_job(), _run_cfg(seed=s), acc) for s in range(5)]
    assert list(tmp_path.iterdir()) == []
    for r in results:
        assert r.state.step == 8 and r.final_dev["loss"] < r.state.best_dev["loss"] + 1e-12
        assert r.model.lin.weight.grad is None or torch.all(r.model.lin.weight.grad == 0)
    first = _linear_job().model.lin.weight.detach()
    assert not torch.allclose(results[0].model.lin.weight.detach(), first)  # it trained
    assert acc._models == [] and acc._optimizers == [] and acc._custom_objects == []
    # the same seed trains the same model, whatever ran before it in the process
    again = fit(_linear_job(), _run_cfg(seed=0), acc)
    assert torch.equal(again.model.lin.weight, results[0].model.lin.weight)


def test_before_step_sees_the_gradients_before_the_optimizer(tmp_path):
    """before_step runs once per optimizer step (not per micro-batch), after backward: a regularizer that zeroes
    the gradients there (tied gradients change them the same way) keeps the weights where they were."""
    from gentune.regularizers import Regularizer
    from gentune.train import fit

    class Freeze(Regularizer):
        calls = 0

        def __call__(self, model, batch, outputs):
            return {}

        def before_step(self, model):
            assert all(p.grad is not None for p in model.parameters())
            Freeze.calls += 1
            for p in model.parameters():
                p.grad.zero_()

    job = _linear_job()
    start = job.model.lin.weight.detach().clone()
    r = fit(job, _run_cfg(grad_accum=2), regularizers=[Freeze()])
    assert Freeze.calls == r.state.step == 4  # 16 examples / 4 / 2 micro-batches a step x 2 epochs
    assert torch.equal(r.model.lin.weight.detach(), start)


def test_a_regularizer_bug_keeps_its_traceback(tmp_path):
    """A TypeError or KeyError inside a regularizer is a bug: it reaches the caller as itself, not as a one-line
    'does not work with this model'."""
    from gentune.train import fit

    def broken(model, batch, outputs):
        return {"x": batch["no such key"]}

    with pytest.raises(KeyError, match="no such key"):
        fit(_linear_job(), _run_cfg(), regularizers=[broken])


# ------------------------------------------------------------------------------------------ eval_train


def test_eval_train_scores_the_final_model_on_its_training_examples(glue, tiny_model, tmp_path, capsys):
    """eval_train: summary.json's final_train is the final model scored on the training file, the same numbers
    `gentune evaluate` gives for that file (evaluated once at the end, best/ is the final model), and
    generalization_gap is signed as the diagnostics' (positive: worse on the dev data); a task without a
    train_eval_set is one line of error before training."""
    from conftest import cli_error, cli_ok

    out, train = tmp_path / "gap", _kshot(glue, "SST-2", "train")
    cli_ok(capsys, "finetune", "--task", "sst2", "--model", tiny_model, "--train", train, "--dev",
           _kshot(glue, "SST-2", "dev"), "--out", out, "--epochs", "3", "--batch-size", "8", "--lr", "3e-3",
           "--set", "eval_every_epochs=0", "--set", "eval_train=true", "--seed", "3")
    s = json.loads((out / "summary.json").read_text())
    scored = json.loads(cli_ok(capsys, "evaluate", "--checkpoint", out / "best", "--task", "sst2", "--data", train))
    assert s["final_train"]["accuracy"] == pytest.approx(scored["accuracy"])
    assert s["final_train"]["loss"] == pytest.approx(scored["loss"], rel=1e-5)
    assert s["final_train"]["loss"] < s["final_dev"]["loss"]  # it fits the 32 sentences it trained on
    gap, train_, dev = s["generalization_gap"], s["final_train"], s["final_dev"]
    assert gap["accuracy_gap"] == pytest.approx(train_["accuracy"] - dev["accuracy"])
    assert gap["loss_gap"] == pytest.approx(dev["loss"] - train_["loss"]) and gap["loss_gap"] > 0
    log = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["type"] for r in log].count("eval_train") == 1
    cli_ok(capsys, "finetune", "--task", "sst2", "--model", tiny_model, "--train", train, "--dev",
           _kshot(glue, "SST-2", "dev"), "--out", tmp_path / "plain", "--max-steps", "1", "--batch-size", "8")
    plain = json.loads((tmp_path / "plain/summary.json").read_text())
    assert "final_train" not in plain and "generalization_gap" not in plain  # off by default
    cli_error(capsys, "eval_train: this task cannot score its training examples", "pretrain", "--objective", "mlm",
              "--model", tiny_model, "--data", train, "--set", "text_column=sentence", "--out", tmp_path / "mlm",
              "--max-steps", "1", "--set", "eval_train=true")


def test_a_resumed_log_drops_its_eval_train_record(tmp_path):
    """The end of a run scores the training examples again, so a resumed or extended run's log keeps no earlier
    eval_train record (nor anything past the checkpoint)."""
    from gentune.train.run import _Log

    log = tmp_path / "metrics.jsonl"
    records = [{"type": "train", "step": 1}, {"type": "eval", "step": 2}, {"type": "eval_train", "step": 2},
               {"type": "train", "step": 3}]
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    _Log(log, True, resume_step=2)
    assert [json.loads(l) for l in log.read_text().splitlines()] == records[:2]


# ------------------------------------------------------------------------------------------ group_by_length


def test_group_by_length_sorts_each_window_and_keeps_the_epoch_a_permutation():
    """Each window of 50 batches of the seeded shuffle is sorted by length, longest first (checked against a
    literal re-implementation); every epoch is a permutation that depends only on (seed, epoch); the padding of
    batches drops well below the plain shuffle's."""
    import random

    from gentune.train.state import EpochSampler

    rng = random.Random(0)
    lengths = [rng.randint(1, 200) for _ in range(2_345)]
    batch = 8
    grouped, plain = EpochSampler(len(lengths), 3, lengths, batch), EpochSampler(len(lengths), 3)
    for epoch in (0, 1):
        grouped.set_epoch(epoch), plain.set_epoch(epoch)
        order, base = list(grouped), list(plain)
        assert sorted(order) == list(range(len(lengths)))
        want = []  # literal: cut the plain shuffle into windows of 400, sort each by length (stable), longest first
        for start in range(0, len(base), 50 * batch):
            want += sorted(base[start:start + 50 * batch], key=lambda i: -lengths[i])
        assert order == want
        fresh = EpochSampler(len(lengths), 3, lengths, batch)
        fresh.set_epoch(epoch)
        assert list(fresh) == order  # (seed, epoch) alone: what a resumed run relies on

    def padded(order):
        return sum(batch * max(lengths[i] for i in order[s:s + batch]) for s in range(0, len(order), batch))

    assert padded(order) < 0.6 * padded(base)
    assert list(EpochSampler(len(lengths), 3, lengths, batch)) != order  # epoch 0 is not epoch 1


def test_group_by_length_in_a_run_and_its_error(glue, tiny_model, tmp_path, capsys):
    """A text run trains with it; a task without lengths (image classification) is one line of error."""
    from conftest import cli_error, cli_ok

    cli_ok(capsys, "finetune", "--task", "sst2", "--model", tiny_model, "--train", _kshot(glue, "SST-2", "train"),
           "--dev", _kshot(glue, "SST-2", "dev"), "--out", tmp_path / "g", "--max-steps", "3", "--batch-size", "8",
           "--set", "group_by_length=true")
    assert json.loads((tmp_path / "g/summary.json").read_text())["train_steps"] == 3
    import numpy as np
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "img" / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(tmp_path / "img" / c / f"{i}.png")
    cli_error(capsys, "group_by_length: this task gives no example lengths", "finetune", "--task",
              "image-classification", "--data", tmp_path / "img", "--init", "none", "--model", "conv-small",
              "--set", "val_size=2", "--out", tmp_path / "i", "--max-steps", "1", "--set", "group_by_length=true")
    assert not (tmp_path / "i").exists()  # refused before the run folder got anything


def test_eval_train_on_images_uses_the_evaluation_transform(tmp_path, capsys):
    """Image classification with augmentation on (random crops and flips): final_train is the final model on its
    training images through the evaluation transform, the numbers `gentune evaluate` gives for that folder."""
    import numpy as np
    from PIL import Image

    from conftest import cli_ok

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("dev", 4)):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) // (1 if c == "a" else 3)
                Image.fromarray(img.astype(np.uint8)).save(tmp_path / split / c / f"{i}.png")
    out = tmp_path / "run"
    cli_ok(capsys, "finetune", "--task", "image-classification", "--data", tmp_path / "train", "--dev",
           tmp_path / "dev", "--init", "none", "--model", "conv-small", "--out", out, "--max-steps", "4",
           "--batch-size", "4", "--lr", "3e-3", "--set", "eval_every_epochs=0", "--set", "eval_train=true")
    s = json.loads((out / "summary.json").read_text())
    scored = json.loads(cli_ok(capsys, "evaluate", "--checkpoint", out / "best", "--task", "image-classification",
                               "--data", tmp_path / "train"))
    assert s["train_examples"] == 12 and scored["examples"] == 12
    assert s["final_train"]["accuracy"] == pytest.approx(scored["accuracy"])
    assert s["final_train"]["loss"] == pytest.approx(scored["loss"], rel=1e-5)
