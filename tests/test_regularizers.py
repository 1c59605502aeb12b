"""Every registered regularizer: its function against a closed form / finite differences, and its hook shape.

``test_every_regularizer_has_a_test_row`` fails when a new regularizer is registered without a row here.
"""

import pytest
import torch

from gentune import registry
from gentune.errors import GentuneError
from gentune.regularizers.l2sp import L2SP, l2sp_penalty

TESTED = {"bregman", "l2sp", "r3f", "smart", "smart-adv"}  # text fine-tuning rows of the matrix below
PRETRAINING = {"radreg"}  # its two loop steps are in tests/test_radreg.py (it needs an image encoder)


def test_every_regularizer_has_a_test_row():
    assert set(registry.list_methods("regularizer")) == TESTED | PRETRAINING


def test_l2sp_closed_form_and_gradient():
    torch.manual_seed(0)
    params = {"enc.w": torch.randn(4, 3, dtype=torch.float64, requires_grad=True),
              "classifier.w": torch.randn(2, 4, dtype=torch.float64, requires_grad=True)}
    anchor = {"enc.w": torch.randn(4, 3, dtype=torch.float64)}
    alpha, beta = 0.3, 0.7
    value = l2sp_penalty(params, anchor, {"classifier.w"}, alpha, beta)
    expected = alpha / 2 * ((params["enc.w"] - anchor["enc.w"]) ** 2).sum() + beta / 2 * (params["classifier.w"] ** 2).sum()
    assert value.item() == pytest.approx(expected.item())
    # gradient: alpha (w - w0) on the backbone, beta w on the head
    value.backward()
    assert torch.allclose(params["enc.w"].grad, alpha * (params["enc.w"] - anchor["enc.w"]).detach())
    assert torch.allclose(params["classifier.w"].grad, beta * params["classifier.w"].detach())
    assert torch.autograd.gradcheck(lambda w: l2sp_penalty({"enc.w": w}, anchor, set(), alpha, beta),
                                    (params["enc.w"].detach().requires_grad_(),))


def test_l2sp_hook_anchors_at_first_call_and_round_trips():
    model = torch.nn.Sequential()
    model.add_module("enc", torch.nn.Linear(3, 3))
    model.add_module("classifier", torch.nn.Linear(3, 2))
    reg = registry.create("regularizer", "l2sp", alpha=1.0, beta=0.0)
    assert isinstance(reg, L2SP)
    terms = reg(model, {}, None)
    assert set(terms) == {"l2sp"} and terms["l2sp"].item() == 0.0  # at the starting point
    with torch.no_grad():
        model.enc.weight.add_(1.0)
    assert reg(model, {}, None)["l2sp"].item() == pytest.approx(0.5 * 9)
    fresh = L2SP(alpha=1.0, beta=0.0)
    fresh.load_state_dict(reg.state_dict())
    assert fresh(model, {}, None)["l2sp"].item() == pytest.approx(0.5 * 9)


def test_registry_errors():
    with pytest.raises(GentuneError, match="unknown regularizer 'nope'"):
        registry.create("regularizer", "nope")
    with pytest.raises(GentuneError, match="unknown option l2sp.gamma"):
        registry.create("regularizer", "l2sp", gamma=1.0)


@pytest.mark.parametrize("name", sorted(TESTED))
def test_matrix_two_steps_through_the_loop(name, glue, tiny_model, tmp_path):
    """Every registered regularizer runs two optimizer steps of the real loop and logs its terms."""
    import json

    import gentune

    k = glue / "k-shot/SST-2/16-13"
    s = gentune.finetune(task="sst2", out=str(tmp_path / name), model=tiny_model, train=str(k / "train.tsv"),
                         dev=str(k / "dev.tsv"), max_steps=2, batch_size=8, regularizer=[name], save_model=False)
    assert s["train_steps"] == 2 and s["regularizers"] == [name]
    rec = [json.loads(l) for l in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rec if r["type"] == "train"]
    assert len(train) == 2 and all(set(r) - {"type", "step", "epoch", "lr", "task", "loss", "grad_norm"} for r in train)
