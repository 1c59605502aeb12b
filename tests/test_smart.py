"""SMART's adversarial regularizer and R3F: closed forms, literal re-implementations and finite differences."""

import numpy as np
import pytest
import torch

from gentune.regularizers.smart import (R3F, SmartAdversarial, adversarial_delta, ascent_step, mtdnn_step,
                                        perturbed_embeddings, project, smoothness_divergence, symmetric_kl)


def test_symmetric_kl_literal():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    p = np.exp(a) / np.exp(a).sum(1, keepdims=True)
    q = np.exp(b) / np.exp(b).sum(1, keepdims=True)
    want = np.mean((p * np.log(p / q)).sum(1) + (q * np.log(q / p)).sum(1))
    got = symmetric_kl(torch.tensor(a), torch.tensor(b)).item()
    assert got == pytest.approx(want, rel=1e-5)
    assert symmetric_kl(torch.tensor(b), torch.tensor(a)).item() == pytest.approx(got, rel=1e-6)
    assert symmetric_kl(torch.tensor(a), torch.tensor(a)).item() == pytest.approx(0.0, abs=1e-7)
    assert smoothness_divergence(torch.tensor([[1.0], [2.0]]), torch.tensor([[0.0], [0.0]]), True).item() == 2.5


def test_projection_and_steps_literal():
    torch.manual_seed(0)
    d, g = torch.randn(2, 3, 4) * 1e-5, torch.randn(2, 3, 4)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]).unsqueeze(-1)
    eta, eps = 1e-3, 1e-5
    # paper step, inf norm per token
    want = (d + eta * g / g.abs().amax(-1, keepdim=True)).clamp(-eps, eps) * mask
    assert torch.allclose(ascent_step(d, g, eta, eps, "inf", "token", mask), want)
    # l2 per sequence: direction normalised over the whole sequence, then projected onto the l2 ball
    raw = d + eta * g / g.pow(2).sum((1, 2), keepdim=True).sqrt()
    n = raw.pow(2).sum((1, 2), keepdim=True).sqrt()
    assert torch.allclose(ascent_step(d, g, eta, eps, "l2", "sequence"), raw * torch.clamp(eps / n, max=1.0))
    # projection leaves points inside the ball alone
    small = torch.full((1, 1, 4), 1e-6)
    assert torch.equal(project(small, eps, "l2", "token"), small * torch.clamp(eps / small.norm(), max=1.0))
    # mt-dnn: (delta + eta g) divided by its per-token inf-norm plus 1e-6 (the official _norm_grad), no eps-ball
    raw = d + eta * g
    assert torch.allclose(mtdnn_step(d, g, eta, "inf", "token"), raw / (raw.abs().amax(-1, keepdim=True) + 1e-6))


def test_hook_perturbs_word_embeddings_only_once(tiny):
    """The hook equals feeding word_embeddings(ids) + delta as inputs_embeds (positions added once, by BERT)."""
    model, batch = tiny
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    delta = torch.randn(*batch["input_ids"].shape, 32, dtype=torch.float64) * 0.1
    with perturbed_embeddings(model.get_input_embeddings(), delta):
        hooked = model(**inputs).logits
    e = model.bert.embeddings.word_embeddings(batch["input_ids"])
    literal = model(inputs_embeds=e + delta, attention_mask=batch["attention_mask"],
                    token_type_ids=batch["token_type_ids"]).logits
    assert torch.allclose(hooked, literal, atol=1e-10)


def test_smart_adv_equals_literal_reimplementation(tiny):
    """R_s through the class == the paper's equations written out with inputs_embeds (same seed, 1e-6)."""
    model, batch = tiny
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    sigma, eps, eta = 1e-3, 1e-3, 1e-2
    out = model(**inputs)
    reg = SmartAdversarial(sigma=sigma, eps=eps, eta=eta, steps=2)
    torch.manual_seed(7)
    got = reg(model, batch, out)["smart_adv"]

    torch.manual_seed(7)
    mask = batch["attention_mask"].unsqueeze(-1).double()
    e = model.bert.embeddings.word_embeddings(batch["input_ids"])

    def f(delta):
        return model(inputs_embeds=e + delta, attention_mask=batch["attention_mask"],
                     token_type_ids=batch["token_type_ids"]).logits

    def sym_kl(a, b):
        p, q = torch.softmax(a, -1), torch.softmax(b, -1)
        return ((p * (p / q).log()).sum(-1) + (q * (q / p).log()).sum(-1)).mean()

    delta = (torch.randn(*e.shape, dtype=torch.float32) * sigma).double() * mask
    for _ in range(2):
        delta.requires_grad_(True)
        (g,) = torch.autograd.grad(sym_kl(f(delta), out.logits.detach()), delta)
        # padding tokens get exactly zero gradient: 1e-12 keeps 0/0 out, as in the implementation
        delta = ((delta + eta * g / (g.abs().max(-1, keepdim=True).values + 1e-12)).clamp(-eps, eps) * mask).detach()
    want = sym_kl(f(delta), out.logits)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    # gradient flows through both branches into the parameters
    got.backward()
    assert model.classifier.weight.grad is not None and model.classifier.weight.grad.abs().sum() > 0
    model.zero_grad()


def test_noise_gradient_by_finite_differences(tiny):
    model, batch = tiny
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    clean = model(**inputs).logits.detach()
    module = model.get_input_embeddings()
    torch.manual_seed(1)
    delta = (torch.randn(*batch["input_ids"].shape, 32, dtype=torch.float64) * 1e-2).requires_grad_(True)

    def loss(d):
        with perturbed_embeddings(module, d):
            return smoothness_divergence(model(**inputs).logits, clean, False)

    (g,) = torch.autograd.grad(loss(delta), delta)
    h = 1e-6
    for idx in [(0, 1, 3), (1, 4, 10), (1, 0, 31)]:
        e = torch.zeros_like(delta)
        e[idx] = h
        fd = (loss(delta.detach() + e) - loss(delta.detach() - e)) / (2 * h)
        assert g[idx].item() == pytest.approx(fd.item(), rel=1e-4, abs=1e-10)


def test_padding_gets_no_noise_and_guard_skips_non_finite(tiny):
    model, batch = tiny
    mask = batch["attention_mask"].unsqueeze(-1).double()
    shape = (*batch["input_ids"].shape, 32)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    clean = model(**inputs).logits
    module = model.get_input_embeddings()

    def forward(d):
        with perturbed_embeddings(module, d):
            return model(**inputs).logits

    delta = adversarial_delta(forward, clean, shape, mask.float(), 1e-3, 1e-3, 1e-2, 1, "inf", "token", False)
    assert delta.shape == shape and (delta * (1 - mask)).abs().sum() == 0 and (delta * mask).abs().sum() > 0
    assert delta.abs().max() <= 1e-3 + 1e-12
    # a non-finite noise gradient skips R_s for the step and is counted
    reg = SmartAdversarial(sigma=float("nan"))
    assert reg(model, batch, model(**inputs)) == {} and reg.skipped == 1
    # start_step holds R_s off
    reg = SmartAdversarial(start_step=1)
    assert reg(model, batch, model(**inputs)) == {}
    reg.after_step(model)
    assert "smart_adv" in reg(model, batch, model(**inputs))


def test_r3f_is_one_noisy_forward(tiny):
    model, batch = tiny
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out = model(**inputs)
    torch.manual_seed(3)
    got = R3F(sigma=1e-2)(model, batch, out)["r3f"]
    torch.manual_seed(3)
    delta = torch.randn(*batch["input_ids"].shape, 32) * 1e-2 * batch["attention_mask"].unsqueeze(-1)
    e = model.bert.embeddings.word_embeddings(batch["input_ids"])
    adv = model(inputs_embeds=e + delta.double(), attention_mask=batch["attention_mask"],
                token_type_ids=batch["token_type_ids"]).logits
    assert got.item() == pytest.approx(symmetric_kl(adv, out.logits).item(), rel=1e-6)
