"""L2-SP: the penalty against its closed form and gradient, and the hook's anchor (its loop run is a row of
tests/test_matrix.py)."""

import pytest
import torch

from gentune import registry
from gentune.errors import GentuneError
from gentune.regularizers.l2sp import L2SP, l2sp_penalty

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
