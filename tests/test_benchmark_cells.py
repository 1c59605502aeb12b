"""The benchmarks' cell bookkeeping (benchmarks/_lib): a grid that spans sessions and machines must skip its own
finished cells and refuse cells another protocol made."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _lib import runner  # noqa: E402


def test_same_command_ignores_where_the_data_lies_and_nothing_else():
    here = "gentune pretrain --objective point-contrast --data /work/shared/data/modelnet10/m.npz --seed 0"
    there = "gentune pretrain --objective point-contrast --data .device/data/modelnet10/m.npz --seed 0"
    assert runner.same_command(here, there)
    assert runner.same_command(here, here)
    assert not runner.same_command(here, there.replace("m.npz", "other.npz"))  # another data set
    assert not runner.same_command(here, here.replace("--seed 0", "--seed 1"))
    assert not runner.same_command(here, here + " --lr 1e-3")
    # only the value after --data is a path to compare by name: --out and --init keep their whole paths
    assert not runner.same_command("gentune finetune --init runs/a/enc", "gentune finetune --init runs/b/enc")


def test_run_cell_refuses_a_cell_of_another_protocol(tmp_path):
    cell = tmp_path / "c.json"
    cell.write_text('{"command": "gentune finetune --data /x/d.csv --seed 1"}')
    with pytest.raises(SystemExit, match="made by another command"):
        runner.run_cell(cell, ["finetune", "--data", "/y/d.csv", "--seed", "2"], {}, tmp_path / "out")
    # the same protocol with the data elsewhere: skipped as finished, nothing run
    runner.run_cell(cell, ["finetune", "--data", "/y/d.csv", "--seed", "1"], {}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_run_cell_redo_replaces_a_cell_only_once_its_run_has_finished(tmp_path, monkeypatch):
    import json

    cell, out = tmp_path / "c.json", tmp_path / "out"
    cell.write_text(json.dumps({"command": "gentune pretrain --seed 1", "summary": {"loss": 1.0}}))
    calls = []

    def fake(argv, jobs=1, label=""):
        calls.append(argv)
        if fail:
            raise RuntimeError("the run broke")
        out.mkdir(exist_ok=True)
        (out / "config.yaml").write_text("x: 1\n")
        (out / "summary.json").write_text('{"loss": 0.5}')

    monkeypatch.setattr(runner, "gentune", fake)
    monkeypatch.setattr("_lib.provenance.commit", lambda: "test")
    fail = False
    runner.run_cell(cell, ["pretrain", "--seed", "1"], {}, out)  # finished: skipped
    assert calls == [] and json.loads(cell.read_text())["summary"] == {"loss": 1.0}
    fail = True
    with pytest.raises(RuntimeError):
        runner.run_cell(cell, ["pretrain", "--seed", "1"], {}, out, redo=True)
    assert json.loads(cell.read_text())["summary"] == {"loss": 1.0}  # a failed redo keeps the old cell
    fail = False
    runner.run_cell(cell, ["pretrain", "--seed", "1"], {"phase": "p"}, out, redo=True)
    got = json.loads(cell.read_text())
    assert got["summary"] == {"loss": 0.5} and got["phase"] == "p" and len(calls) == 2
    assert got["redone_of"]["reproduced"] is None  # the first run recorded no final dev metrics
    cell.write_text(json.dumps({"command": "gentune pretrain --seed 1", "date": "then",
                                "summary": {"final_dev": {"loss": 0.5}}}))
    runner.run_cell(cell, ["pretrain", "--seed", "1"], {}, out, redo=True)
    got = json.loads(cell.read_text())["redone_of"]
    assert got["date"] == "then" and got["final_dev"] == {"loss": 0.5} and got["reproduced"] is False


def test_a_pretraining_redone_for_its_encoder_keeps_the_first_runs_numbers_and_says_if_they_reproduce(
        tmp_path, monkeypatch):
    """runs/ is not committed: a later session pretrains a finished cell again for its encoder. The cell must keep
    what the downstream cells were computed from (the first run's final dev metrics) and compare the rerun's."""
    import json
    import types

    from _lib import images

    losses = iter([0.25, 0.25, 0.5])

    def fake(argv, jobs=1):
        out = tmp_path / argv[argv.index("--out") + 1]
        (out / "encoder").mkdir(parents=True)
        (out / "summary.json").write_text(json.dumps({"final_dev": {"loss": next(losses)}, "train_steps": 9}))
        (out / "metrics.jsonl").write_text("")

    monkeypatch.setattr(images, "ROOT", tmp_path)
    monkeypatch.setattr(images.runner, "gentune", fake)
    monkeypatch.setattr(images, "matmul_gflops", lambda: (1.0, "cpu"))
    args = types.SimpleNamespace(data="d.tar.gz", pretrain_extra=[], jobs=1)
    results, runs = tmp_path / "results", tmp_path / "runs"
    cell = images.run_pretrain("p", "mae", "vit-tiny-p4", ["--seed", "0"], args, results, runs)
    first = json.loads(cell.read_text())
    assert first["summary"]["final_dev"] == {"loss": 0.25} and "redone_of" not in first
    images.run_pretrain("p", "mae", "vit-tiny-p4", ["--seed", "0"], args, results, runs, need_encoder=True)
    assert json.loads(cell.read_text()) == first  # encoder still there: nothing redone
    for loss, same in ((0.25, True), (0.5, False)):
        import shutil

        shutil.rmtree(runs / "pretrain" / "p")
        images.run_pretrain("p", "mae", "vit-tiny-p4", ["--seed", "0"], args, results, runs, need_encoder=True)
        got = json.loads(cell.read_text())
        assert got["summary"]["final_dev"] == {"loss": loss}
        # the second redo still compares with the first run, not with the first redo
        assert got["redone_of"]["final_dev"] == {"loss": 0.25} and got["redone_of"]["date"] == first["date"]
        assert got["redone_of"]["reproduced"] is same


def test_fewshot_tables_choose_the_rate_and_the_head_on_kshot_dev_never_on_the_reported_set():
    """Made-up cells where the k-shot dev and the reported dev disagree: the rate and the head are those of the
    better k-shot dev mean (among rates with the most split seeds), and the paired difference is over seeds."""
    import fewshot_grid as fg

    def cell(model, arm, lr, seed, dev, test):
        return {"model": model, "arm": arm, "task": "sst2", "lr": lr, "seed": seed,
                "summary": {"best_dev": {"accuracy": dev}}, "test": {"accuracy": test}}

    train = []
    for seed in (13, 21, 42):
        train += [cell("m", "prompt", "1e-5", seed, 0.9, 0.60 + seed / 1000),  # best on k-shot dev
                  cell("m", "prompt", "1e-3", seed, 0.5, 0.99),  # best on the reported set: never chosen
                  cell("m", "head-cls", "1e-5", seed, 0.7, 0.55), cell("m", "head-mean", "1e-5", seed, 0.6, 0.90)]
    train.append(cell("m", "prompt", "2e-4", 13, 1.0, 0.0))  # best dev, but one seed of three: not comparable
    data = {"train": train, "zero": [], "eval": [], "mlm": [], "diagnose": []}
    picked = fg.chosen(data)
    assert picked[("m", "prompt", "sst2")] == ("1e-5", {13: 0.613, 21: 0.621, 42: 0.642})
    assert fg._head_choice(data, "m", "sst2") == "head-cls"
    row = next(l for l in fg.model_table(data, "m", picked) if l.startswith("| sst2"))
    assert "+7.5 ± 0.9 (n=3) vs head-cls" in row, row  # (61.3, 62.1, 64.2) - 55: mean 7.53, se 0.87


def test_diagnostics_pair_each_measurement_with_the_probes_of_the_very_encoder_measured(tmp_path):
    """A re-test checkpoint pretrained again (runs/ is not committed; a CPU rerun is not bit-identical) is probed
    again: its gaps come from those probes, never from the re-test's cells of the first encoder; a measurement
    whose probe cells name another encoder is left out."""
    import json

    import radreg_diagnostics as rd

    retest, mine = tmp_path / "retest" / "full", tmp_path / "diag"

    def write(path, data):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))

    def probe(folder, arm, seed, sha, gap):
        write(folder / "finetune" / "cat-dog" / f"{arm}_seed{seed}.json",
              {"arm": arm, "seed": seed, "init_sha256": sha,
               "summary": {"generalization_gap": {"accuracy_gap": gap},
                           "final_dev": {"accuracy": 0.5 + gap + seed / 100}}})

    for arm in ("context-encoder_p0", "context-encoder+radreg_p0", "context-encoder_p1"):
        write(retest / "pretrain" / "hetero" / f"{arm}.json", {})
        for kind in rd.PROBES:
            for seed in (1, 2):
                probe(retest, f"hetero.{kind}.{arm}", seed, f"first-{arm}", 0.10)
    # plain p0: measured on the re-test's own encoder; RadReg p0: pretrained again and probed here;
    # plain p1: pretrained again, but measured without its own probes (must not borrow the first encoder's gaps)
    shas = {"context-encoder_p0": "first-context-encoder_p0", "context-encoder+radreg_p0": "again",
            "context-encoder_p1": "again-p1"}
    for arm, sha in shas.items():
        write(mine / "measure" / f"full.hetero.{arm}.json", {"checkpoint": arm, "encoder_sha256": sha})
    for kind in rd.PROBES:
        for seed in (1, 2):
            probe(mine, f"{kind}.full.hetero.context-encoder+radreg_p0", seed, "again", 0.02)
    rows = {r["checkpoint"]: r for r in rd.load(mine, {"full": retest})["rows"]}
    assert set(rows) == {"context-encoder_p0", "context-encoder+radreg_p0"}
    assert rows["context-encoder_p0"]["probes"] == "re-test" and rows["context-encoder_p0"]["linear-probe"] == 10.0
    got = rows["context-encoder+radreg_p0"]
    assert got["probes"] == "own" and got["linear-probe"] == 2.0 and got["mlp-probe_seeds"] == 2
    assert got["linear-probe_accuracy"] == pytest.approx(53.5)  # (0.53 + 0.54) / 2, x100


def test_the_full_run_supremum_table_averages_the_second_half_only():
    import radreg_diagnostics as rd

    trace = [{"step": s, "estimate": 0.1, "supremum": 0.2 if s <= 5 else 0.1, "ratio": 0.5 if s <= 5 else 1.0 - s / 100}
             for s in range(1, 11)]
    rec = {"checkpoint": "c", "steps": 10, "every": 1, "trace": trace, "date": "d", "machine": "m", "command": "x"}
    row = rd.render_supremum([rec]).splitlines()[2]
    # steps 6..10: ratios 0.94..0.90, mean 0.92, population std sqrt(2e-4), lowest 0.90, supremum 0.1
    assert row == "| c | 10 | 10 | 0.920 ± 0.014 | 0.900 | 0.1000 | 0.1000 |"


def test_radreg_penalty_at_its_batch_size_has_the_closed_form_of_identical_features():
    """Identical features: the MLP-head sup is |sum sigma| / n exactly, so the mean over batches and signs is
    E|S_16| / 16 = C(16, 8) / 2^16 = 0.1964 (within Monte Carlo error); centred, nothing is left (undefined); it is
    scale-free, and centred also offset-free (what lets centring ignore a collapse)."""
    import math

    import numpy as np
    import radreg_diagnostics as rd

    same = np.tile(np.random.default_rng(0).normal(size=(1, 8)), (300, 1))
    exact = math.comb(16, 8) / 2 ** 16
    assert rd.batch_penalty(same, batches=100) == pytest.approx(exact, abs=0.02)
    assert rd.batch_penalty(same, batches=5, center=True) is None  # nothing left once centred: 0/0
    spread = np.random.default_rng(1).normal(size=(300, 256))
    a, b = rd.batch_penalty(spread, batches=20), rd.batch_penalty(7.0 * spread, batches=20)
    assert a == pytest.approx(b, rel=1e-4)
    c, d = (rd.batch_penalty(x, batches=20, center=True) for x in (spread, 5.0 + 0.01 * spread))
    assert c == pytest.approx(d, rel=1e-3)
    # non-negative spread-out features (a ReLU encoder's) cost clearly more than identical ones
    assert rd.batch_penalty(np.maximum(spread, 0), batches=100) > exact + 0.03


def test_diagnostics_only_flag_selects_checkpoints_by_shell_pattern():
    import types

    import radreg_diagnostics as rd

    every = types.SimpleNamespace(only=None)
    some = types.SimpleNamespace(only=["full.hetero.*_p2", "random-conv-small"])
    assert rd.selected("full.hetero.context-encoder_p0", every)
    assert rd.selected("full.hetero.context-encoder+radreg_p2", some)
    assert rd.selected("random-conv-small", some)
    assert not rd.selected("full.hetero.context-encoder_p1", some)
    assert not rd.selected("random-vit-tiny-p4", some)


def test_retest_curves_average_each_pretraining_seed_first_and_plot_every_arm(tmp_path):
    """The curve is the mean over pretraining seeds of each seed's own mean curve, so a pretraining seed with more
    fine-tuning seeds does not weigh more; the figure is written for each budget and setting."""
    import radreg_retest as rt

    def cell(*accs):
        return {"evals": [{"epoch": 2.0 * (i + 1), "step": 32 * (i + 1), "accuracy": a} for i, a in enumerate(accs)],
                "seed": 1, "summary": {"final_dev": {"accuracy": accs[-1]}}, "date": "d", "machine": "m",
                "command": "c"}

    plain = {0: {1: cell(0.5, 0.6), 2: cell(0.7, 0.8), 3: cell(0.6, 0.7)}, 1: {1: cell(0.9, 1.0)}}
    per = rt.seed_curves(plain)
    assert per[0] == pytest.approx({2.0: 60.0, 4.0: 70.0}) and per[1] == pytest.approx({2.0: 90.0, 4.0: 100.0})
    data = {"full": {"hetero": {"linear-probe": {"context-encoder": plain,
                                                 "context-encoder+radreg-center": {0: {1: cell(0.5, 0.5)}}}}}}
    (path,) = rt.plots(data, tmp_path)
    assert path == tmp_path / rt.plot_name("full", "hetero") and path.stat().st_size > 1000
    assert f"img/{rt.plot_name('full', 'hetero')}" in rt.sections(data, tmp_path)["radreg_retest/full/hetero"]
