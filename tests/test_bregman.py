"""SMART's Bregman momentum teacher: update arithmetic, schedule, penalty value, state, and the composite."""

import math

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


class _Scalar(torch.nn.Module):
    """One parameter, set from outside at every step: a student whose trajectory is known."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x):
        return x * self.w


def _teacher_after(reg: Bregman, trajectory: list[float]) -> float:
    """Run the teacher's updates over a student that is at trajectory[t] after optimizer step t (it starts at 0)."""
    from gentune.regularizers.base import Context

    student = _Scalar()
    reg.setup(Context(len(trajectory), student, {}))
    reg._ensure_teacher(student)  # the first call: the teacher is the starting model (w = 0)
    for value in trajectory:
        with torch.no_grad():
            student.w.fill_(value)
        reg.after_step(student)
    return float(reg.teacher.w)


def _literal_teacher(betas: list[float], trajectory: list[float]) -> float:
    """theta~_T = prod(beta) theta_0 + sum_t (1 - beta_t) prod_{s > t} beta_s theta_t, theta_0 = 0, written out."""
    value = 0.0
    for beta, theta in zip(betas, trajectory):
        value = beta * value + (1 - beta) * theta
    return value


def test_the_paper_schedule_leaves_the_teacher_at_the_start_over_a_grid_cell():
    """189 optimizer steps (1,000 examples, batch 16, 3 epochs): with beta 0.99 then 0.999 the teacher is still 0.70
    the starting model, and, for a student that moves linearly from 0 to 1, it ends at about 0.15 of the way."""
    steps = 189
    path = [(t + 1) / steps for t in range(steps)]
    reg = Bregman()
    end = _teacher_after(reg, path)
    betas = [0.99 if t < 0.1 * steps else 0.999 for t in range(steps)]
    assert end == pytest.approx(_literal_teacher(betas, path), rel=1e-12)
    assert reg.init_weight == pytest.approx(0.99 ** 19 * 0.999 ** 170, rel=1e-12) and 0.69 < reg.init_weight < 0.70
    assert reg.log() == {"bregman_init_weight": reg.init_weight}
    assert end < 0.16  # the student is at 1


@pytest.mark.parametrize("steps", [189, 630, 5000])
@pytest.mark.parametrize("half_life", [0.05, 0.2])
def test_a_half_life_teacher_trails_by_the_same_share_of_any_run(steps, half_life):
    """half_life h: the teacher's weight on where the student stood h of the run ago is 1/2 at any run length, and
    on the starting model 2^(-1/h); for a linear student path it ends about h / ln 2 of the run behind."""
    path = [(t + 1) / steps for t in range(steps)]
    reg = Bregman(half_life=half_life)
    end = _teacher_after(reg, path)
    beta = 0.5 ** (1 / (half_life * steps))
    assert end == pytest.approx(_literal_teacher([beta] * steps, path), rel=1e-10)
    assert reg.init_weight == pytest.approx(2 ** (-1 / half_life), rel=1e-9)
    # an exponential average of the ramp t/N from 0 ends beta (1 - beta^N) / ((1 - beta) N) behind it: about
    # h / ln 2 of the run, whatever its length
    assert 1 - end == pytest.approx(beta * (1 - 2 ** (-1 / half_life)) / ((1 - beta) * steps), rel=1e-9)
    assert beta / (1 - beta) == pytest.approx(half_life * steps / math.log(2) - 0.5, rel=0.01)


def test_half_life_with_inner_steps_and_bad_values():
    steps, inner = 200, 4
    path = [(t + 1) / steps for t in range(steps)]
    reg = Bregman(half_life=0.1, inner_steps=inner)
    end = _teacher_after(reg, path)
    beta = 0.5 ** (inner / (0.1 * steps))
    held = [path[t] for t in range(inner - 1, steps, inner)]  # updated after every 4th step only
    assert end == pytest.approx(_literal_teacher([beta] * len(held), held), rel=1e-10)
    assert reg.init_weight == pytest.approx(0.5 ** 10, rel=1e-9)
    with pytest.raises(ValueError, match="half_life"):
        Bregman(half_life=-0.1)
    assert Smart(half_life=0.2).bregman.half_life == 0.2
    assert _teacher_after(Bregman(half_life=0.2, momentum=False), path) == path[-1]  # no momentum: the iterate
