"""The command line: every user error is one line `error: ...` on stderr with exit status 2."""

import json

import pytest

from gentune.fs import atomic_dir
from gentune.cli import main
from gentune.errors import GentuneError

from conftest import run_cli


@pytest.fixture(scope="module")
def sst2_checkpoint(glue, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "run"
    k = glue / "k-shot/SST-2/16-13"
    assert main(["finetune", "--task", "sst2", "--out", str(out), "--model", tiny_model, "--train",
                 str(k / "train.tsv"), "--dev", str(k / "dev.tsv"), "--max-steps", "2", "--batch-size", "8"]) == 0
    return out


def _one_line_error(capsys, argv, needle):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    return err[0]


def _folder(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_finetune_input_errors(capsys, tmp_path, glue, tiny_model):
    good = str(glue / "k-shot/RTE/16-13/dev.tsv")
    ft = ["finetune", "--task", "rte", "--out", str(tmp_path / "o"), "--model", tiny_model, "--max-steps", "1"]
    cases = [
        (["--train", str(tmp_path / "missing.tsv"), "--dev", good], "missing.tsv: no such file"),
        (["--train", _write(tmp_path, "empty.tsv", ""), "--dev", good], "empty.tsv: empty file"),
        (["--train", _write(tmp_path, "bad.json", "{oops"), "--dev", good], "bad.json:1: malformed JSON"),
        (["--train", _write(tmp_path, "short.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\n"),
          "--dev", good], "short.tsv:3: expected 4 tab-separated fields, found 3"),
        (["--train", _write(tmp_path, "lab.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tcontradiction\n"),
          "--dev", good], "lab.tsv:2: label 'contradiction' is not in the label set of rte"),
        (["--train", good, "--dev", good, "--set", "bogus=1"], "unknown config key 'bogus'"),
        (["--train", good, "--dev", good, "--regularizer", "nope"], "unknown regularizer 'nope'"),
        (["--train", good, "--dev", good, "--regularizer", "smart", "--set", "smart.dropout=maybe"],
         "regularizer 'smart': smart-adv: dropout must be one of"),
        (["--train", good, "--dev", good, "--regularizer", "smart", "--set", "smart.epsilon=1"],
         "--set smart.epsilon: regularizer 'smart' has no option 'epsilon'"),
        (["--train", good, "--dev", good, "--config", str(tmp_path / "none.yaml")], "none.yaml: no such config file"),
        (["--data-dir", str(_folder(tmp_path / "nodata"))], f"no data for task rte: tried --data-dir={tmp_path}/nodata"),
    ]
    (tmp_path / "bin.tsv").write_bytes(b"\xff\xfe\x00 not text\n")
    cases += [
        (["--train", str(tmp_path / "bin.tsv"), "--dev", good], "bin.tsv: not UTF-8 text"),
        (["--train", good, "--dev", good, "--config", _write(tmp_path, "t.yaml", "lr: abc\n")],
         "t.yaml: lr: expected a number, got 'abc'"),
        (["--train", good, "--dev", good, "--config",
          _write(tmp_path, "r.yaml", "regularizer: [l2sp]\nregularizer_options: {l2sp: {alpha: abc}}\n")],
         "r.yaml: regularizer_options.l2sp.alpha: expected a number, got 'abc'"),
        (["--train", good, "--dev", good, "--data", good], "--data applies to image-classification"),
        (["--train", good, "--dev", good, "--labels-per-class", "3"], "--labels-per-class applies to image-classification"),
        (["--train", good, "--dev", good, "--regularizer", "smart", "--set", "smart.norm=foo"],
         "norm must be one of ('inf', 'l2'), got 'foo'"),
    ]
    for extra, needle in cases:
        _one_line_error(capsys, ft + extra, needle)
    # OUT: a file, or a damaged earlier run, is one line too (before any model or data is loaded)
    _write(tmp_path, "outfile", "x")
    _one_line_error(capsys, ft[:4] + [str(tmp_path / "outfile")] + ft[5:] + ["--train", good, "--dev", good],
                    "outfile: exists and is not a folder")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.yaml").write_text("task: [rte\n")
    (damaged / "summary.json").write_text("{")
    _one_line_error(capsys, ft[:4] + [str(damaged)] + ft[5:] + ["--train", good, "--dev", good],
                    "holds a damaged run")
    _one_line_error(capsys, ["finetune", "--task", "nope", "--out", "x"], "unknown task 'nope'")
    _one_line_error(capsys, ft[:-4] + ["--model", str(tmp_path / "no-model"), "--train", good, "--dev", good],
                    "no-model': no such directory")
    assert not (tmp_path / "o" / "summary.json").exists()


def test_evaluate_errors_and_output(capsys, sst2_checkpoint, glue, tmp_path):
    best = str(sst2_checkpoint / "best")
    assert main(["evaluate", "--checkpoint", best, "--task", "sst2",
                 "--data", str(glue / "k-shot/SST-2/16-21/dev.tsv")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["examples"] == 32 and 0 <= metrics["accuracy"] <= 1
    _one_line_error(capsys, ["evaluate", "--checkpoint", best, "--task", "mnli",
                             "--data", str(glue / "k-shot/MNLI/16-13/dev_matched.tsv")],
                    "checkpoint does not fit task mnli")
    _one_line_error(capsys, ["evaluate", "--checkpoint", best, "--task", "stsb",
                             "--data", str(glue / "k-shot/STS-B/16-13/dev.tsv")], "does not fit task stsb")
    _one_line_error(capsys, ["evaluate", "--checkpoint", str(tmp_path), "--task", "sst2",
                             "--data", str(glue / "k-shot/SST-2/16-21/dev.tsv")], "not a checkpoint directory")
    _one_line_error(capsys, ["evaluate", "--checkpoint", best, "--task", "sst2",
                             "--data", _write(tmp_path, "x.tsv", "sentence\tlabel\nfine\t2\n")], "x.tsv:2: label '2'")
    _one_line_error(capsys, ["evaluate", "--checkpoint", best, "--task", "sst2", "--batch-size", "0",
                             "--data", str(glue / "k-shot/SST-2/16-21/dev.tsv")], "batch_size must be positive")


def test_argparse_errors_follow_the_contract(capsys):
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--task", "rte"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--checkpoint" in err[0]


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("rte", "stsb", "sst5", "all-MiniLM-L6-v2", "sequence-classification", "l2sp"):
        assert word in out


def test_real_process_exit_code_and_no_traceback(tmp_path):
    """The contract in a real process (the entry point, exit status 2, no traceback); --debug re-raises."""
    r = run_cli("finetune", "--task", "rte", "--out", tmp_path / "o", "--train", tmp_path / "nope.tsv",
                "--dev", tmp_path / "nope.tsv")
    assert r.returncode == 2 and r.stderr.strip().startswith("error: ") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    with pytest.raises(GentuneError, match="nope.tsv"):  # --debug shows where
        main(["--debug", "finetune", "--task", "rte", "--out", str(tmp_path / "o"), "--train",
              str(tmp_path / "nope.tsv"), "--dev", str(tmp_path / "nope.tsv")])


def test_interrupted_write_keeps_the_earlier_copy(tmp_path):
    target = tmp_path / "best"
    with atomic_dir(target) as tmp:
        (tmp / "model").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "model").write_text("half")
            raise RuntimeError("killed mid-write")
    assert (target / "model").read_text() == "v1"
