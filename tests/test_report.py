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


def test_plot_run_writes_both_plots_with_signed_values(tmp_path):
    records = [_train(s, smart_adv=0.01 * s, radreg_complexity=(-1) ** s * 0.01) for s in range(1, 30)]
    records.append({"type": "eval", "step": 29, "accuracy": 0.6, "loss": 0.65})
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    written = plot_run(tmp_path, "accuracy")
    assert {p.name for p in written} == {"loss.png", "dev.png"}
    from PIL import Image
    import numpy as np

    # loss.png: the loss panel plus one for the log-scale terms and one for the signed values (6 + 5 x 2 inches at
    # 110 dpi); dev.png: one panel. Both decode and are drawn on (not a blank canvas).
    sizes = {p.name: Image.open(p).size for p in written}
    assert sizes == {"loss.png": (1760, 385), "dev.png": (660, 385)}
    for p in written:
        pixels = np.asarray(Image.open(p).convert("L"), dtype=float)
        assert pixels.std() > 10 and (pixels < 128).mean() > 0.005
    # without the signed values, one panel fewer
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(_train(s, smart_adv=0.01 * s)) for s in range(1, 9)))
    assert Image.open(plot_run(tmp_path, "accuracy")[0]).size == (1210, 385)
