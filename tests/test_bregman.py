"""SMART's Bregman momentum teacher: update arithmetic, schedule, penalty value, state, and the composite."""

import pytest
import torch

from gentune import registry
from gentune.regularizers.bregman import Bregman, Smart, beta_at, momentum_update
from gentune.regularizers.smart import symmetric_kl


def test_momentum_update_arithmetic():
    t = {"w": torch.tensor([1.0, 2.0]), "ids": torch.tensor([0, 1])}
    s = {"w": torch.tensor([3.0, -2.0]), "ids": torch.tensor([5, 6])}
    momentum_update(t, s, 0.9)
    assert torch.allclose(t["w"], torch.tensor([0.1 * 3 + 0.9 * 1, 0.1 * -2 + 0.9 * 2]))
    assert torch.equal(t["ids"], s["ids"])  # integer buffers are copied
    # tied weights (one tensor under two names, as in a masked-LM head) move once, not twice
    w = torch.tensor([1.0, 2.0])
    momentum_update({"emb": w, "decoder": w}, {"emb": torch.zeros(2), "decoder": torch.zeros(2)}, 0.5)
    assert torch.equal(w, torch.tensor([0.5, 1.0]))


def test_beta_schedule():
    assert [beta_at(k, 100, 0.999, 0.99, 0.1) for k in (0, 9, 10, 99)] == [0.99, 0.99, 0.999, 0.999]


def test_teacher_penalty_update_and_state(tiny):
    model, batch = tiny
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    reg = Bregman(mu=2.0, beta=0.5, beta_early=0.5, total_steps=10)
    assert reg(model, batch, model(**inputs))["bregman"].item() == pytest.approx(0.0, abs=1e-12)  # teacher = start
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.classifier.weight.add_(0.3)
    # R_B = mu * symKL(student, teacher) with the teacher at the start point
    student = model(**inputs).logits
    teacher_logits = reg.teacher(**inputs).logits
    assert reg(model, batch, model(**inputs))["bregman"].item() == pytest.approx(
        2.0 * symmetric_kl(student, teacher_logits).item(), rel=1e-9)
    reg.after_step(model)
    want = 0.5 * model.classifier.weight + 0.5 * start["classifier.weight"]
    assert torch.allclose(reg.teacher.classifier.weight, want) and reg.step == 1
    assert not any(p.requires_grad for p in reg.teacher.parameters())
    # a fresh regularizer restores the teacher lazily, when it first sees the model
    other = Bregman(mu=2.0)
    other.load_state_dict(reg.state_dict())
    other(model, batch, model(**inputs))
    assert torch.allclose(other.teacher.classifier.weight, want) and other.step == 1


def test_smart_composite(tiny):
    model, batch = tiny
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    both = registry.create("regularizer", "smart", total_steps=5)
    assert set(both(model, batch, model(**inputs))) == {"smart_adv", "bregman"}
    both.after_step(model)
    again = Smart()
    again.load_state_dict(both.state_dict())
    assert again.adversarial.step == 1 and again.bregman.step == 1
    assert set(Smart(mu=0)(model, batch, model(**inputs))) == {"smart_adv"}
    assert set(Smart(adv_weight=0)(model, batch, model(**inputs))) == {"bregman"}


def test_non_momentum_variant_holds_the_iterate_for_s_steps(tiny):
    """momentum=False, inner_steps=S: the teacher is the iterate at the last multiple of S steps (eq. 4)."""
    model, batch = tiny
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    reg = registry.create("regularizer", "bregman", momentum=False, inner_steps=2, total_steps=10)
    reg(model, batch, model(**inputs))
    start = model.classifier.weight.detach().clone()
    for k in range(1, 5):
        with torch.no_grad():
            model.classifier.weight.add_(0.1)
        reg.after_step(model)
        want = model.classifier.weight if k % 2 == 0 else start
        assert torch.equal(reg.teacher.classifier.weight, want), k
        if k % 2 == 0:
            start = model.classifier.weight.detach().clone()
    with pytest.raises(ValueError, match="inner_steps"):
        Bregman(inner_steps=0)


def test_state_dict_passes_on_a_loaded_teacher_before_first_use(tiny):
    model, batch = tiny
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    reg = Bregman()
    reg(model, batch, model(**inputs))
    other = Bregman()
    other.load_state_dict(reg.state_dict())
    assert other.state_dict()["teacher"] is not None  # not lost when saved again before any forward
