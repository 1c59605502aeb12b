"""What a Hugging Face user expects around the loop: trackers, progress in logs, their own data and columns, label
names, model cards, LoRA from the command line, `list`/`recipes`/`compare`/`--version`, training a finished run
further, and the diagnose report's warnings."""

import csv
import json
import shutil
from pathlib import Path

import pytest

from conftest import cli, cli_error, cli_ok


def _reviews(path: Path, n: int, seed: int, extra=None):
    """A CSV with a header (id, review, stars): good/bad reviews whose words give the label away."""
    import random

    rng = random.Random(seed)
    words = {"good": ["great", "wonderful", "superb", "loved it"], "bad": ["awful", "boring", "dreadful", "hated it"]}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "review", "stars"])
        for i in range(n):
            label = ("good", "bad")[i % 2]
            w.writerow([i, f"the film was {rng.choice(words[label])}", label])
        for row in extra or []:
            w.writerow(row)
    return path


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    return _reviews(root / "my.csv", 40, 0), _reviews(root / "my_dev.csv", 12, 1)


@pytest.fixture(scope="module")
def sst2_run(glue, tiny_model, tmp_path_factory):
    """A finished tiny SST-2 run with TensorBoard logging, its checkpoint kept, every value logged."""
    from gentune.cli import main

    root = tmp_path_factory.mktemp("sst2run")
    k = glue / "k-shot/SST-2/16-13"
    train = root / "train.tsv"
    shutil.copy(k / "train.tsv", train)
    out = root / "run"
    assert main(["finetune", "--task", "sst2", "--out", str(out), "--model", tiny_model, "--train", str(train),
                 "--dev", str(k / "dev.tsv"), "--max-steps", "4", "--batch-size", "8", "--report-to",
                 "tensorboard", "--set", "eval_steps=2", "keep_checkpoint=true"]) == 0
    return out


def test_tensorboard_event_files_hold_the_logged_scalars(sst2_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((sst2_run / "logs").rglob("events.out.tfevents.*"))
    assert events, list(sst2_run.rglob("*"))
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "eval/accuracy", "eval/loss"} <= tags, tags
    log = [json.loads(l) for l in (sst2_run / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r["loss"] for r in log if r["type"] == "train"}
    evals = {r["step"]: r["accuracy"] for r in log if r["type"] == "eval"}
    assert {e.step: pytest.approx(e.value, rel=1e-6) for e in acc.Scalars("train/loss")} == train
    assert {e.step: pytest.approx(e.value, rel=1e-6) for e in acc.Scalars("eval/accuracy")} == evals
    assert sorted(train) == [1, 2, 3, 4] and sorted(evals) == [2, 4]


def test_unknown_or_missing_tracker_is_one_line(tmp_path, capsys, tiny_model):
    cli_error(capsys, "report_to", "finetune", "--task", "sst2", "--out", tmp_path / "o", "--model", tiny_model,
              "--report-to", "tensorbored")
    assert not (tmp_path / "o").exists()


def test_pipeline_answers_label_names_and_best_has_a_model_card(sst2_run):
    from huggingface_hub import ModelCard
    from transformers import pipeline

    best = sst2_run / "best"
    config = json.loads((best / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    answers = pipeline("text-classification", model=str(best))(["a wonderful film", "a dreadful mess"])
    assert {a["label"] for a in answers} <= {"negative", "positive"} and len(answers) == 2
    card = ModelCard.load(best / "README.md")  # the Hub's own reader: YAML metadata, then the text
    assert card.data.pipeline_tag == "text-classification" and "gentune" in card.data.tags
    metrics = {m["type"]: m["value"] for m in card.data.to_dict()["model-index"][0]["results"][0]["metrics"]}
    meta = json.loads((best / "gentune.json").read_text())
    assert metrics["accuracy"] == pytest.approx(meta["dev"]["accuracy"])
    for needle in ("labels negative, positive", "32 examples", "dev data (picked the checkpoint)", "regularizers: none", "gentune 0.1.0",
                   "pipeline("):
        assert needle in card.text, needle


def test_progress_lines_when_output_is_not_a_terminal(glue, tiny_model, tmp_path, capsys):
    """stdout captured, not a terminal (as under tee, nohup, SLURM, CI): plain step lines and eval lines."""
    import sys

    k = glue / "k-shot/SST-2/16-13"
    code, stdout, err = cli(capsys, "finetune", "--task", "sst2", "--out", tmp_path / "o", "--model", tiny_model,
                            "--train", k / "train.tsv", "--dev", k / "dev.tsv", "--max-steps", "4", "--batch-size",
                            "8", "--set", "log_every=2", "eval_steps=4")
    assert code == 0 and not sys.stdout.isatty(), err[-2000:]
    lines = stdout.splitlines()
    steps = [l for l in lines if l.startswith("step ")]
    assert [l.split()[1] for l in steps] == ["1/4", "2/4", "4/4"], lines
    assert all("loss " in l and "lr " in l and "left " in l for l in steps)
    assert any(l.startswith("eval at step 4: accuracy ") for l in lines), lines
    assert "\r" not in stdout + err  # no progress bar redraws in a log file


def test_own_csv_with_named_columns(own, tiny_model, tmp_path, capsys):
    train, dev = own
    out = tmp_path / "mine"
    printed = cli_ok(capsys, "finetune", "--train", train, "--dev", dev, "--text-column", "review", "--label-column",
                     "stars", "--test", dev, "--out", out, "--model", tiny_model, "--max-steps", "3",
                     "--batch-size", "8")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "text-classification" and summary["train_examples"] == 40
    assert summary["dev_examples"] == 12
    config = json.loads((out / "best/config.json").read_text())
    assert config["id2label"] == {"0": "bad", "1": "good"}  # the training labels, sorted
    assert (out / "best/README.md").is_file()
    scored = json.loads((out / "test.json").read_text())
    assert scored["examples"] == 12 and "accuracy" in scored and f"test {dev}" in printed
    again = json.loads(cli_ok(capsys, "evaluate", "--checkpoint", out / "best", "--task", "text-classification",
                              "--data", dev))
    assert again["accuracy"] == pytest.approx(scored["accuracy"])
    # a label set given in order; a carved dev set instead of a dev file
    out2 = tmp_path / "mine2"
    cli_ok(capsys, "finetune", "--train", train, "--text-column", "review", "--label-column", "stars", "--labels",
           "good,bad", "--set", "dev_from_train=10", "--out", out2, "--model", tiny_model, "--max-steps", "1",
           "--batch-size", "8")
    assert json.loads((out2 / "best/config.json").read_text())["id2label"] == {"0": "good", "1": "bad"}
    summary = json.loads((out2 / "summary.json").read_text())
    assert (summary["train_examples"], summary["dev_examples"]) == (30, 10)


def test_own_data_errors_name_the_file_and_column(own, tiny_model, tmp_path, capsys):
    train, dev = own
    base = ["finetune", "--train", train, "--dev", dev, "--out", tmp_path / "o", "--model", tiny_model]
    cli_error(capsys, f"{train}: no column 'text' (columns: id, review, stars)", *base, "--label-column", "stars")
    cli_error(capsys, f"{train}: no column 'rating'", *base, "--text-column", "review", "--label-column", "rating")
    cli_error(capsys, "label 'bad' in column 'stars' is not one of the labels (good)", *base, "--text-column",
              "review", "--label-column", "stars", "--labels", "good")
    cli_error(capsys, "is not a number (regression)", *base, "--text-column", "review", "--label-column", "stars",
              "--set", "regression=true")
    odd = _reviews(tmp_path / "odd.csv", 4, 2, extra=[[9, "the film was fine", "meh"]])
    cli_error(capsys, f"{odd}: row 5: label 'meh' in column 'stars' is not one of the labels (bad, good)",
              "finetune", "--train", train, "--dev", odd, "--text-column", "review", "--label-column", "stars",
              "--out", tmp_path / "o", "--model", tiny_model)
    cli_error(capsys, "needs a dev set", "finetune", "--train", train, "--text-column", "review", "--out",
              tmp_path / "o", "--model", tiny_model)
    (tmp_path / "x.parquet").write_text("x")
    cli_error(capsys, "unknown file type '.parquet'", "finetune", "--train", tmp_path / "x.parquet", "--dev", dev,
              "--out", tmp_path / "o", "--model", tiny_model)
    assert not (tmp_path / "o").exists()  # no run folder left behind by a refused start


def test_dataset_folder_and_in_memory_datasets(own, tiny_model, tmp_path, capsys, monkeypatch):
    import datasets

    import gentune

    monkeypatch.setenv("GENTUNE_CACHE", str(tmp_path / "cache"))
    train, dev = own
    data = datasets.load_dataset("csv", data_files={"train": str(train), "validation": str(dev)})
    data.save_to_disk(str(tmp_path / "dd"))
    cli_ok(capsys, "finetune", "--dataset", tmp_path / "dd", "--text-column", "review", "--label-column", "stars",
           "--out", tmp_path / "a", "--model", tiny_model, "--max-steps", "2", "--batch-size", "8")
    a = json.loads((tmp_path / "a/summary.json").read_text())
    assert (a["task"], a["train_examples"], a["dev_examples"]) == ("text-classification", 40, 12)
    s = gentune.finetune(train=data["train"], dev=data["validation"], text_column="review", label_column="stars",
                         out=str(tmp_path / "b"), model=tiny_model, max_steps=2, batch_size=8)
    assert s["best_dev"] == pytest.approx(a["best_dev"])  # the same data, seed and model
    again = gentune.finetune(train=data["train"], dev=data["validation"], text_column="review",
                             label_column="stars", out=str(tmp_path / "b"), model=tiny_model, max_steps=2,
                             batch_size=8)
    assert again == s  # in-memory data are saved once: the rerun finds its finished run
    s = gentune.finetune(dataset=data, text_column="review", label_column="stars", out=str(tmp_path / "c"),
                         model=tiny_model, max_steps=2, batch_size=8)
    assert s["best_dev"] == pytest.approx(a["best_dev"])
    only_train = datasets.DatasetDict({"train": data["train"]})
    only_train.save_to_disk(str(tmp_path / "dt"))
    cli_error(capsys, "no validation split (splits: train)", "finetune", "--dataset", tmp_path / "dt",
              "--text-column", "review", "--label-column", "stars", "--out", tmp_path / "d", "--model", tiny_model)


def test_lora_with_smart_from_the_command_line(own, tiny_model, tmp_path, capsys):
    from safetensors.torch import load_file

    train, dev = own
    out = tmp_path / "lora"
    cli_ok(capsys, "finetune", "--train", train, "--dev", dev, "--text-column", "review", "--label-column", "stars",
           "--peft", "lora", "--set", "peft.r=4", "peft.alpha=8", "peft.target_modules=[query,value]",
           "--regularizer", "smart", "--out", out, "--model", tiny_model, "--max-steps", "3", "--batch-size", "8")
    best = out / "best"
    adapter = json.loads((best / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and adapter["r"] == 4 and adapter["lora_alpha"] == 8
    assert sorted(adapter["target_modules"]) == ["query", "value"]
    assert not (best / "model.safetensors").exists()  # the adapter, not a copy of the whole model
    weights = load_file(best / "adapter_model.safetensors")
    assert any("lora_A" in k for k in weights) and any("classifier" in k for k in weights)
    assert all("lora" in k or "classifier" in k for k in weights)
    log = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    train_log = [r for r in log if r["type"] == "train"]
    assert all(r["smart_adv"] >= 0 and "bregman" in r for r in train_log)  # SMART ran on the PEFT model
    assert any(r["smart_adv"] > 0 for r in train_log)
    scored = json.loads(cli_ok(capsys, "evaluate", "--checkpoint", best, "--task", "text-classification", "--data",
                               dev))
    meta = json.loads((best / "gentune.json").read_text())
    assert scored["accuracy"] == pytest.approx(meta["dev"]["accuracy"])  # the adapter reloads to the same model
    assert "PeftModel.from_pretrained" in (best / "README.md").read_text()
    cli_error(capsys, "peft.rank: not an option of LoraConfig", "finetune", "--train", train, "--dev", dev,
              "--text-column", "review", "--label-column", "stars", "--peft", "lora", "--set", "peft.rank=4",
              "--out", tmp_path / "x", "--model", tiny_model)
    cli_error(capsys, "--peft lorax: unknown PEFT method", "finetune", "--train", train, "--dev", dev,
              "--text-column", "review", "--label-column", "stars", "--peft", "lorax", "--out", tmp_path / "x",
              "--model", tiny_model)


def test_a_finished_run_trains_further(sst2_run, glue, tiny_model, tmp_path, capsys):
    """keep_checkpoint=true: the same command with more steps continues from the last step; --init starts a new
    run (another task, another head size) from its best model."""
    work = tmp_path / "run"
    shutil.copytree(sst2_run, work)
    k = glue / "k-shot/SST-2/16-13"
    args = ["finetune", "--task", "sst2", "--out", work, "--model", tiny_model, "--train", sst2_run.parent /
            "train.tsv", "--dev", k / "dev.tsv", "--batch-size", "8", "--set", "eval_steps=2", "keep_checkpoint=true"]
    cli_error(capsys, "trains further when it kept its checkpoint", *args, "--max-steps", "3")
    cli_ok(capsys, *args, "--max-steps", "6")
    log = [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["type"] == "train"] == [1, 2, 3, 4, 5, 6]
    first = [json.loads(l) for l in (sst2_run / "metrics.jsonl").read_text().splitlines()]
    assert log[: len(first)] == first  # the first four steps are the finished run's
    assert json.loads((work / "summary.json").read_text())["train_steps"] == 6
    mnli = tmp_path / "mnli"
    cli_ok(capsys, "finetune", "--task", "mnli", "--init", sst2_run, "--train", glue / "k-shot/MNLI/16-13/train.tsv",
           "--dev", glue / "k-shot/MNLI/16-13/dev_matched.tsv", "--out", mnli, "--max-steps", "1", "--batch-size",
           "8")
    from gentune.data import get_task

    config = json.loads((mnli / "best/config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(get_task("mnli").label_names)}
    assert sorted(config["id2label"].values()) == ["contradiction", "entailment", "neutral"]


def test_list_recipes_version_and_help(capsys, tmp_path):
    import gentune

    out = cli_ok(capsys, "list")
    assert ":class:" not in out and ":func:" not in out and "text-classification" in out
    smart = cli_ok(capsys, "list", "smart")
    for needle in ("adv_weight", "float", "lambda_s, the weight of R_s", "Jiang et al., ACL 2020", "beta_early",
                   "0.99", "--set smart.OPTION=VALUE"):
        assert needle in smart, needle
    recipes = cli_ok(capsys, "recipes")
    names = sorted(p.stem for p in (Path(gentune.__file__).parent / "recipes").rglob("*.yaml"))
    for name in names:
        assert f"--config {name}" in recipes, name
    cli_ok(capsys, "recipes", "cp", "sst2_lora_smart", tmp_path)
    assert (tmp_path / "sst2_lora_smart.yaml").read_text().startswith("# gentune finetune --config sst2_lora_smart")
    cli_error(capsys, "exists", "recipes", "cp", "sst2_lora_smart", tmp_path)
    cli_error(capsys, "no recipe 'nope'", "recipes", "cp", "nope", tmp_path)
    with pytest.raises(SystemExit) as e:
        cli(capsys, "--version")
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"gentune {gentune.__version__}"
    with pytest.raises(SystemExit):
        cli(capsys, "finetune", "--help")
    helped = capsys.readouterr().out
    for needle in ("warmup_ratio (float, default 0.1)", "text_column (str, default 'text')", "every run:",
                   "peft_options", "--report-to", "--peft METHOD"):
        assert needle in helped, needle


def test_compare_runs(sst2_run, own, tiny_model, tmp_path, capsys):
    train, dev = own
    other = tmp_path / "other"
    cli_ok(capsys, "finetune", "--train", train, "--dev", dev, "--text-column", "review", "--label-column", "stars",
           "--regularizer", "l2sp", "--set", "l2sp.alpha=0.01", "eval_steps=1", "--out", other, "--model",
           tiny_model, "--max-steps", "2", "--batch-size", "8")
    printed = cli_ok(capsys, "compare", sst2_run, other, "--out", tmp_path / "cmp")
    md = (tmp_path / "cmp/compare.md").read_text()
    rows = [l for l in md.splitlines() if l.startswith(f"| {sst2_run}") or l.startswith(f"| {other}")]
    assert len(rows) == 2 and "l2sp (alpha=0.01)" in rows[1] and "sst2" in rows[0]
    best = json.loads((sst2_run / "summary.json").read_text())
    assert f"accuracy {best['best_dev']['accuracy']:.4f} ({best['best_step']})" in rows[0]
    assert "![dev curves](compare.png)" in md and (tmp_path / "cmp/compare.png").stat().st_size > 5000
    assert str(other) in printed
    from gentune.compare import plot, read_run
    import matplotlib.pyplot as plt

    plot([read_run(sst2_run), read_run(other)], tmp_path / "p.png")
    cli_error(capsys, "not a gentune run folder", "compare", sst2_run, tmp_path / "cmp")
    cli_error(capsys, "no such run folder", "compare", tmp_path / "nope")
    plt.close("all")


def test_diagnose_warns_when_the_gap_cannot_be_computed(sst2_run, tmp_path, capsys, glue):
    """The gap is recomputed from the run's data; with its training file gone, the rest of the report stands, the
    terminal says so, and the report shows a warning instead of an error message in a table cell."""
    work = tmp_path / "run"
    shutil.copytree(sst2_run, work)
    config = (work / "config.yaml").read_text().replace(str(sst2_run.parent / "train.tsv"),
                                                        str(tmp_path / "gone.tsv"))
    (work / "config.yaml").write_text(config)
    code, out, err = cli(capsys, "diagnose", "--checkpoint", work / "best", "--task", "sst2", "--data",
                         glue / "k-shot/SST-2/16-13/dev.tsv", "--out", tmp_path / "d", "--n-sigma", "8", "--no-mlp")
    assert code == 0, err[-2000:]
    warnings = [l for l in err.splitlines() if l.startswith("warning: ")]
    assert len(warnings) == 1 and "generalization gap not computed" in warnings[0] and "gone.tsv" in warnings[0]
    assert "1 warning(s)" in out
    page = (tmp_path / "d/report.html").read_text()
    assert "<b>Warnings</b>" in page and "not computed</b> (see the warnings)" in page
    assert json.loads((tmp_path / "d/diagnostics.json").read_text())["warnings"] == [warnings[0][len("warning: "):]]
