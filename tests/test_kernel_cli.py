"""`gentune kernel` end to end on tiny models and the real SST-2/SST-5 16-shot files: what it writes, that its
numbers are the library's, the resume by blocks, the head probe, LoRA, and its one-line refusals."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import cli_error, cli_ok


def _files(glue, task="SST-2", ext="tsv"):
    k = glue / "k-shot" / task / "16-13"
    return str(k / f"train.{ext}"), str(k / f"dev.{ext}")


def test_kernel_command_writes_what_the_library_computes(tmp_path, tiny_mlm, glue, capsys):
    from safetensors.torch import load_file

    from gentune.diagnostics import kernels as ks

    train, dev = _files(glue)
    out = tmp_path / "k"
    args = ["kernel", "--model", tiny_mlm, "--task", "sst2", "--train", train, "--eval", dev, "--out", str(out),
            "--set", "max_eval=12", "chunk=8", "panel=16", "progress=false"]
    printed = cli_ok(capsys, *args)
    assert "solver lstsq" in printed and "trivial predictor" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_train"] == 32 and metrics["n_eval"] == 12 and metrics["outputs"] == 2
    assert metrics["trivial_metrics"]["accuracy"] >= 0.5 - 1e-9
    tt, et = load_file(str(out / "train_train.safetensors")), load_file(str(out / "eval_train.safetensors"))
    assert tt["kernel"].shape == (32, 2, 32, 2) and et["kernel"].shape == (12, 2, 32, 2)
    k = tt["kernel"].reshape(64, 64)
    assert torch.equal(k, k.T)
    scores = ks.solve("lstsq", tt["kernel"], tt["labels"].long(), et["kernel"])
    pred = json.loads((out / "predictions.json").read_text())
    assert pred["prediction"] == ks.predictions(scores).tolist()
    assert metrics["solver_metrics"]["accuracy"] == pytest.approx(
        float((torch.tensor(pred["prediction"]) == et["labels"].long()).double().mean()))
    # the rerun resumes: the saved panels are read, not recomputed, and the result is the same
    panels = sorted((out / "blocks").rglob("panel-*.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in panels]
    cli_ok(capsys, *args)
    assert [p.stat().st_mtime_ns for p in panels] == stamps
    assert json.loads((out / "metrics.json").read_text())["solver_metrics"] == metrics["solver_metrics"]
    cli_error(capsys, "holds a kernel computation with other options", *args[:-1], "progress=false",
              "reg=0.1")


def test_asym_and_classification_with_a_probed_head_and_lora(tmp_path, tiny_mlm, tiny_model, glue, capsys):
    train, dev = _files(glue)
    out = tmp_path / "asym"
    cli_ok(capsys, "kernel", "--model", tiny_mlm, "--task", "sst2", "--train", train, "--eval", dev, "--out",
           str(out), "--kernel", "asym-signgd", "--set", "max_eval=8", "progress=false", "adjust_for_init=true")
    m = json.loads((out / "metrics.json").read_text())
    assert m["solver"] == "asym" and m["outputs"] == 1  # the asym solver takes the logit difference
    out = tmp_path / "probe"
    cli_ok(capsys, "kernel", "--model", tiny_model, "--task", "sst2", "--objective", "classification", "--train",
           train, "--eval", dev, "--out", str(out), "--params", "lora", "--set", "max_eval=8", "progress=false",
           "lora_r=2")
    m = json.loads((out / "metrics.json").read_text())
    assert m["params"] == "lora" and 0 < m["parameters"] < 20000  # rank-2 LoRA on query and value, and the head
    import numpy as np

    from gentune.data import get_task
    from gentune.data.glue import read_file
    from gentune.kernel import KernelConfig, _model, encode_examples, probe_head

    cfg = KernelConfig(model=tiny_model, task="sst2", train=train, eval=dev, out="x", objective="classification")
    task = get_task("sst2")
    model, tokenizer, _ = _model(cfg, task)
    data = read_file(task, train)
    x = encode_examples(tokenizer, task, data, None, cfg.max_length)
    labels = np.asarray(data["label"])
    probe_head(model, x, labels, False)
    seen = []
    hook = model.classifier.register_forward_hook(lambda m, a, o: seen.append(a[0].double()))
    with torch.no_grad():
        logits = model(**x).logits.double()
    hook.remove()
    from sklearn.linear_model import LogisticRegressionCV

    want = LogisticRegressionCV(max_iter=5000, random_state=0).fit(seen[0].numpy(), labels)
    # the head's logit difference is scikit-learn's decision function, on the features it reads
    assert np.allclose((logits[:, 1] - logits[:, 0]).numpy(), want.decision_function(seen[0].numpy()), atol=1e-5)


def test_kernel_refusals(tmp_path, tiny_mlm, glue, capsys):
    train, dev = _files(glue)
    base = ["kernel", "--model", tiny_mlm, "--task", "sst2", "--train", train, "--eval", dev]
    cli_error(capsys, "no such file", *base[:-2], "--eval", str(tmp_path / "missing.tsv"), "--out",
              str(tmp_path / "a"))
    cli_error(capsys, "exactly one of --model and --checkpoint", *base, "--checkpoint", "x", "--out",
              str(tmp_path / "b"))
    cli_error(capsys, "asym solver is for --kernel asym-signgd", *base, "--solver", "asym", "--out",
              str(tmp_path / "c"))
    t5, d5 = _files(glue, "sst-5", "csv")
    cli_error(capsys, "the logit difference is for two classes", "kernel", "--model", tiny_mlm, "--task", "sst5",
              "--train", t5, "--eval", d5, "--kernel", "asym-signgd", "--out", str(tmp_path / "d"))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("keep")
    cli_error(capsys, "holds no kernel computation", *base, "--out", str(busy))
    assert (busy / "mine.txt").read_text() == "keep"
    cli_error(capsys, "regression task", "kernel", "--model", tiny_mlm, "--task", "stsb", "--train",
              *_files(glue, "STS-B")[:1], "--eval", _files(glue, "STS-B")[1], "--out", str(tmp_path / "e"))


def test_plain_sgd_is_the_kernels_optimizer(tmp_path, tiny_model_nodrop, glue, capsys):
    """optimizer=sgd: one step moves every weight by exactly -lr (grad + weight decay where it applies)."""
    from gentune.train.state import adamw

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = adamw(model, 0.1, 0.01, kind="sgd")
    assert isinstance(opt, torch.optim.SGD) and all(g["momentum"] == 0 for g in opt.param_groups)
    model(torch.randn(4, 3)).pow(2).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    for n, p in model.named_parameters():
        decay = 0.01 if n == "0.weight" else 0.0  # biases and norms: no decay
        assert torch.allclose(p, before[n] - 0.1 * (grads[n] + decay * before[n]), atol=1e-7)
    train, dev = _files(glue)
    cli_error(capsys, "optimizer must be adamw or sgd", "finetune", "--task", "sst2", "--model", tiny_model_nodrop,
              "--train", train, "--dev", dev, "--out", str(tmp_path / "r"), "--set", "optimizer=adam")


def test_the_kernel_of_a_fine_tuned_prompt_checkpoint(tmp_path, tiny_mlm, glue, capsys):
    """--checkpoint: the kernel after training, of the model gentune evaluate scores; its own metric is that
    model's accuracy; the wrong objective for the checkpoint is refused."""
    train, dev = _files(glue)
    run = tmp_path / "run"
    cli_ok(capsys, "finetune", "--task", "sst2", "--objective", "prompt", "--model", tiny_mlm, "--train", train,
           "--dev", dev, "--out", str(run), "--max-steps", "3", "--batch-size", "8", "--lr", "1e-3")
    out = tmp_path / "k"
    cli_ok(capsys, "kernel", "--checkpoint", str(run / "best"), "--task", "sst2", "--train", train, "--eval", dev,
           "--out", str(out), "--set", "progress=false")
    scored = json.loads(cli_ok(capsys, "evaluate", "--checkpoint", str(run / "best"), "--task", "sst2", "--data",
                               dev))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model_metrics"]["accuracy"] == pytest.approx(scored["accuracy"])
    cli_error(capsys, "a prompt checkpoint; give --objective prompt", "kernel", "--checkpoint", str(run / "best"),
              "--task", "sst2", "--train", train, "--eval", dev, "--out", str(tmp_path / "k2"), "--objective",
              "classification")
