"""Run reports: which logged values go on which scale, and the plots are written."""

import json

from gentune.report import plot_run, split_terms


def _train(step, **values):
    return {"type": "train", "step": step, "epoch": 0.1 * step, "lr": 1e-3, "loss": 0.7, "grad_norm": 1.0, **values}


def test_split_terms_by_scale():
    train = [_train(1, smart_adv=0.02, radreg_complexity=0.03, radreg_revived_units=12.0, l2sp=0.0),
             _train(2, smart_adv=0.01, radreg_complexity=-0.05, radreg_revived_units=3.0, l2sp=0.004),
             _train(3, bregman=0.5)]  # a term logged on some steps only
    positive, signed, counts = split_terms(train)
    assert positive == ["bregman", "smart_adv"]
    assert signed == ["l2sp", "radreg_complexity"]  # a 0 or a negative value: linear scale
    assert counts == ["radreg_revived_units"]


def test_split_terms_without_extra_values():
    assert split_terms([_train(1), _train(2)]) == ([], [], [])


def _panels(fig):
    return [ax for ax in fig.axes if ax.get_title()]


def test_loss_figure_shows_raw_and_smoothed_loss_and_drops_constant_values():
    from gentune.report import loss_figure

    train = [_train(s, smart_adv=0.01 * s, radreg_complexity=(-1) ** s * 0.01, nonfinite_steps=0.0,
                    radreg_revived_units=float(s % 3)) for s in range(1, 41)]
    for r in train:
        r["loss"] = 1.0 / r["step"]
    fig = loss_figure(train, "run")
    titles = [ax.get_title() for ax in _panels(fig)]
    # the loss, the log-scale terms, the signed values, the counts; the constant-zero counter has no panel
    assert titles == ["run: training loss", "regularizer terms, positive values (log scale)", "other logged values", "counts"]
    labels = [ln.get_label() for ln in fig.axes[-1].get_lines() if not ln.get_label().startswith("_")]
    assert not any("nonfinite" in label for ax in fig.axes for label in
                   [ln.get_label() for ln in ax.get_lines()])
    assert labels and all("revived" in label for label in labels)
    raw, smooth = fig.axes[0].get_lines()[:2]
    assert raw.get_label() == "loss (raw)" and raw.get_alpha() >= 0.4  # visible, not a 0.3 ghost
    assert smooth.get_label() == "loss (2-step mean)" and list(raw.get_ydata()) == [1.0 / s for s in range(1, 41)]
    for ax in fig.axes:  # optimizer steps are whole numbers
        assert all(float(t).is_integer() for t in ax.get_xticks()), ax.get_title()
    assert fig.axes[1].get_yscale() == "log" and fig.axes[2].get_yscale() == "linear"


def test_short_runs_draw_raw_points_only():
    from gentune.report import loss_figure

    fig = loss_figure([_train(s) for s in range(1, 5)], "run")
    lines = fig.axes[0].get_lines()
    assert [ln.get_label() for ln in lines] == ["loss"] and lines[0].get_marker() == "o"
    assert all(float(t).is_integer() for t in fig.axes[0].get_xticks())


def test_dev_figure_puts_metric_and_loss_in_separate_panels():
    from gentune.report import dev_figure

    evals = [{"type": "eval", "step": s, "f1": 0.5 + 0.01 * s, "accuracy": 0.6, "loss": 0.7 - 0.01 * s}
             for s in (3, 6, 9)]
    fig = dev_figure(evals, "f1", "run")
    metric, loss = _panels(fig)
    assert [ln.get_label() for ln in metric.get_lines()] == ["f1 (selects the best)", "accuracy"]
    assert [ln.get_label() for ln in loss.get_lines()] == ["dev loss"]
    assert list(metric.get_lines()[0].get_ydata()) == [0.53, 0.56, 0.59]
    assert all(float(t).is_integer() for ax in (metric, loss) for t in ax.get_xticks())
    # a run selected by its loss (pretraining) has one panel
    assert len(_panels(dev_figure([{"type": "eval", "step": 1, "loss": 0.3}], "loss", "run"))) == 1


def test_plot_run_writes_both_plots(tmp_path):
    records = [_train(s, smart_adv=0.01 * s, radreg_complexity=(-1) ** s * 0.01) for s in range(1, 30)]
    records.append({"type": "eval", "step": 29, "accuracy": 0.6, "loss": 0.65})
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    written = plot_run(tmp_path, "accuracy")
    assert {p.name for p in written} == {"loss.png", "dev.png"}
    from PIL import Image
    import numpy as np

    for p in written:  # both decode and are drawn on (not a blank canvas)
        pixels = np.asarray(Image.open(p).convert("L"), dtype=float)
        assert pixels.std() > 10 and (pixels < 128).mean() > 0.005
