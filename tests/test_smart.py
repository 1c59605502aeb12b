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
    # the gradient flows through both branches (perturbed and clean) into every parameter, as in the literal
    # version; with the clean branch cut (a clean.detach() bug) it would be another gradient
    params = [p for p in model.parameters() if p.requires_grad]
    g_got = torch.autograd.grad(got, params, retain_graph=True, allow_unused=True)
    g_want = torch.autograd.grad(want, params, retain_graph=True, allow_unused=True)
    g_perturbed_only = torch.autograd.grad(sym_kl(f(delta), out.logits.detach()), params, retain_graph=True,
                                           allow_unused=True)
    flat = lambda gs: torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()  # noqa: E731
                                 for g, p in zip(gs, params)])
    assert torch.allclose(flat(g_got), flat(g_want), rtol=1e-6, atol=1e-12)
    assert not torch.allclose(flat(g_got), flat(g_perturbed_only), rtol=1e-3, atol=1e-10)


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


@pytest.fixture()
def dropout_model(tiny_model):
    """The tiny BERT with its dropout (0.1) in train mode, float64, and a padded batch."""
    from gentune.data import get_task
    from gentune.models.hf import load_for_task, load_tokenizer

    torch.manual_seed(0)
    model = load_for_task(tiny_model, get_task("sst2")).double().train()
    tok = load_tokenizer(tiny_model)
    batch = dict(tok(["a fine film", "dull , slow and far too long"], padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([1, 0])
    return model, batch


def test_shared_dropout_replays_the_clean_masks(dropout_model):
    """dropout="shared": the perturbed forwards use the clean forward's dropout masks, so a zero perturbation
    gives R_s = 0 exactly (independent masks do not), and R_s equals a literal replay with a reseeded RNG."""
    model, batch = dropout_model
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    zero = dict(sigma=0.0, eta=0.0, eps=1e-3)
    shared = SmartAdversarial(dropout="shared", **zero)
    shared(model, batch, model(**inputs))  # first call: attaches the recorder (and re-runs the clean forward)
    assert shared(model, batch, model(**inputs))["smart_adv"].item() == 0.0
    assert SmartAdversarial(**zero)(model, batch, model(**inputs))["smart_adv"].item() > 1e-6
    # literal: reseed before the clean forward and before each perturbed forward
    sigma, eps, eta = 1e-3, 1e-3, 1e-2
    reg = SmartAdversarial(sigma=sigma, eps=eps, eta=eta, dropout="shared")
    reg(model, batch, model(**inputs))
    torch.manual_seed(11)
    out = model(**inputs)
    torch.manual_seed(5)
    got = reg(model, batch, out)["smart_adv"]
    torch.manual_seed(5)
    noise = torch.randn(*batch["input_ids"].shape, 32) * sigma
    mask = batch["attention_mask"].unsqueeze(-1)
    e = model.bert.embeddings.word_embeddings(batch["input_ids"])

    def f(delta):
        torch.manual_seed(11)
        return model(inputs_embeds=e + delta, attention_mask=batch["attention_mask"],
                     token_type_ids=batch["token_type_ids"]).logits

    delta = (noise * mask).double().requires_grad_(True)
    (g,) = torch.autograd.grad(symmetric_kl(f(delta), out.logits.detach()), delta)
    delta = ((delta + eta * g / (g.abs().amax(-1, keepdim=True) + 1e-12)).clamp(-eps, eps) * mask).detach()
    assert got.item() == pytest.approx(symmetric_kl(f(delta), out.logits).item(), rel=1e-6)


def test_plain_module_with_embed_fn_pair():
    """A model without get_input_embeddings(): R_s and R3F through an embed_fn / forward_from_embeddings pair
    equal their literal forms, and the Bregman teacher runs through the same pair."""
    from gentune.regularizers.bregman import Bregman, Smart

    torch.manual_seed(0)

    class Bag(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(50, 8)
            self.mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))

        def forward(self, x):
            return self.head(self.emb(x))

        def head(self, e):
            return self.mlp(torch.tanh(e).sum(1))

    model = Bag().double()
    batch = {"x": torch.randint(0, 50, (4, 6)), "labels": torch.tensor([0, 1, 2, 0])}
    pair = dict(embed_fn=lambda m, b: m.emb(b["x"]), forward_from_embeddings=lambda m, e, b: m.head(e))
    out = model(batch["x"])
    sigma, eps, eta = 1e-2, 1e-2, 1e-1
    torch.manual_seed(3)
    got = SmartAdversarial(sigma=sigma, eps=eps, eta=eta, **pair)(model, batch, out)["smart_adv"]
    torch.manual_seed(3)
    e = model.emb(batch["x"])
    delta = (torch.randn(4, 6, 8) * sigma).double().requires_grad_(True)
    (g,) = torch.autograd.grad(symmetric_kl(model.head(e.detach() + delta), out.detach()), delta)
    delta = (delta + eta * g / (g.abs().amax(-1, keepdim=True) + 1e-12)).clamp(-eps, eps).detach()
    assert got.item() == pytest.approx(symmetric_kl(model.head(e + delta), out).item(), rel=1e-6)  # delta in fp32
    torch.manual_seed(4)
    got = R3F(sigma=sigma, **pair)(model, batch, out)["r3f"]
    torch.manual_seed(4)
    assert got.item() == pytest.approx(
        symmetric_kl(model.head(e + torch.randn(4, 6, 8).double() * sigma), out).item(), rel=1e-9)
    reg = Bregman(beta=0.0, beta_early=0.0, **pair)
    reg(model, batch, out)
    with torch.no_grad():
        model.mlp[2].bias.add_(1.0)
    moved = model(batch["x"])
    want = symmetric_kl(moved, reg.teacher(batch["x"])).item()
    assert reg(model, batch, moved)["bregman"].item() == pytest.approx(want, rel=1e-9) and want > 0
    assert set(Smart(**pair)(model, batch, model(batch["x"]))) == {"smart_adv", "bregman"}
    with pytest.raises(ValueError, match="both"):
        SmartAdversarial(embed_fn=pair["embed_fn"])(model, batch, out)


def test_bf16_autocast_runs_and_stays_finite(tiny_model):
    """Under CPU bf16 autocast the terms are finite float32 values and gradients reach the weights."""
    from gentune import registry
    from gentune.data import get_task
    from gentune.models.hf import load_for_task, load_tokenizer

    torch.manual_seed(0)
    model = load_for_task(tiny_model, get_task("sst2")).train()
    tok = load_tokenizer(tiny_model)
    batch = dict(tok(["a fine film", "dull , slow"], padding=True, return_tensors="pt"))
    reg = registry.create("regularizer", "smart", total_steps=4, eps=1e-3, sigma=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch)
        terms = reg(model, batch, out)
    assert out.logits.dtype == torch.bfloat16
    assert set(terms) == {"smart_adv", "bregman"}
    assert all(t.dtype == torch.float32 and torch.isfinite(t) for t in terms.values())
    sum(terms.values()).backward()
    assert torch.isfinite(model.classifier.weight.grad).all() and model.classifier.weight.grad.abs().sum() > 0


def test_perturbation_rounded_away_under_bf16_is_counted_and_warned(tiny_model_nodrop):
    """At the paper's sigma = eps = 1e-5 a bf16 forward rounds the perturbation away: the perturbed logits equal
    the clean ones, the noise gradient is exactly 0 and the ascent does nothing. That is measured per sequence
    (smart_zero_grad), warned about once, and absent in float32."""
    import warnings

    from gentune.data import get_task
    from gentune.models.hf import load_for_task, load_tokenizer

    torch.manual_seed(0)
    model = load_for_task(tiny_model_nodrop, get_task("sst2")).train()
    tok = load_tokenizer(tiny_model_nodrop)
    sentences = ["a fine film", "dull , slow and far too long", "the best of the year", "no", "it works well",
                 "an utter mess", "funny and warm", "i left early"]
    batch = dict(tok(sentences, padding=True, return_tensors="pt"))
    reg = SmartAdversarial()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float32: no warning
        reg(model, batch, model(**batch))
    assert reg.log() == {"smart_zero_grad": 0.0}
    with pytest.warns(UserWarning, match="exactly zero for .*bfloat16 autocast.*--set mixed_precision=no"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reg(model, batch, model(**batch))
    assert reg.log()["smart_zero_grad"] >= 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reg(model, batch, model(**batch))
    # a perturbation bf16 can represent moves again
    big = SmartAdversarial(sigma=1e-1, eps=1e-1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        big(model, batch, model(**batch))
    assert big.log()["smart_zero_grad"] < 0.5


@pytest.mark.parametrize("targets", [["query", "value"], ["word_embeddings", "query"]])
def test_peft_lora_model(tiny_model_nodrop, targets):
    """A LoRA-wrapped model (frozen input embeddings, or LoRA on the embeddings themselves, whose wrapper has no
    ``embedding_dim``): R_s equals the base model's (LoRA starts as the identity), and gradients reach only the
    trainable LoRA/head weights."""
    peft = pytest.importorskip("peft")
    from gentune import registry
    from gentune.data import get_task
    from gentune.models.hf import load_for_task, load_tokenizer

    torch.manual_seed(0)
    base = load_for_task(tiny_model_nodrop, get_task("sst2")).double()
    reference = load_for_task(tiny_model_nodrop, get_task("sst2")).double()
    reference.load_state_dict(base.state_dict())
    cfg = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=targets)
    model = peft.get_peft_model(base, cfg)
    assert not model.get_input_embeddings().weight.requires_grad
    assert hasattr(model.get_input_embeddings(), "embedding_dim") == ("word_embeddings" not in targets)
    tok = load_tokenizer(tiny_model_nodrop)
    batch = dict(tok(["a fine film", "dull , slow and far too long"], padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([1, 0])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    kw = dict(sigma=1e-3, eps=1e-3, eta=1e-2)
    torch.manual_seed(2)
    got = SmartAdversarial(**kw)(model, batch, model(**inputs))["smart_adv"]
    torch.manual_seed(2)
    want = SmartAdversarial(**kw)(reference, batch, reference(**inputs))["smart_adv"]
    assert got.item() == pytest.approx(want.item(), rel=1e-9) and got.item() > 0
    terms = registry.create("regularizer", "smart", total_steps=4, **kw)(model, batch, model(**inputs))
    sum(terms.values()).backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and all("lora_" in n or "classifier" in n for n in grads)
    assert any("lora_B" in n for n in grads)  # lora_A has zero gradient while B starts at 0


def test_regression_uses_squared_error(tiny_model_nodrop):
    """A one-output (STS-B) model: R_s, R3F and R_B use the squared error, R_s equal to its literal form."""
    from gentune.data import get_task
    from gentune.models.hf import load_for_task, load_tokenizer
    from gentune.regularizers.bregman import Bregman

    torch.manual_seed(0)
    model = load_for_task(tiny_model_nodrop, get_task("stsb")).double()
    tok = load_tokenizer(tiny_model_nodrop)
    batch = dict(tok(["a man plays", "a dog runs fast"], ["a man is playing", "the cat sleeps"], padding=True,
                     return_tensors="pt"))
    batch["labels"] = torch.tensor([4.2, 0.4])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out = model(**inputs)
    assert out.logits.shape == (2, 1)
    sigma, eps, eta = 1e-2, 1e-2, 1e-1
    torch.manual_seed(5)
    got = SmartAdversarial(sigma=sigma, eps=eps, eta=eta)(model, batch, out)["smart_adv"]
    torch.manual_seed(5)
    mask = batch["attention_mask"].unsqueeze(-1)
    e = model.bert.embeddings.word_embeddings(batch["input_ids"])

    def f(delta):
        return model(inputs_embeds=e + delta, attention_mask=batch["attention_mask"],
                     token_type_ids=batch["token_type_ids"]).logits

    delta = (torch.randn(*e.shape) * sigma * mask).double().requires_grad_(True)
    (g,) = torch.autograd.grad(((f(delta) - out.logits.detach()) ** 2).mean(), delta)
    delta = ((delta + eta * g / (g.abs().amax(-1, keepdim=True) + 1e-12)).clamp(-eps, eps) * mask).detach()
    want = ((f(delta) - out.logits) ** 2).mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-6) and got.item() > 0
    torch.manual_seed(6)
    assert R3F(sigma=sigma)(model, batch, out)["r3f"].item() > 0
    reg = Bregman(mu=1.0)
    reg(model, batch, out)
    with torch.no_grad():
        model.classifier.bias.add_(0.5)
    moved = model(**inputs)
    assert reg(model, batch, moved)["bregman"].item() == pytest.approx(0.25, rel=1e-9)  # (0.5)^2, batch mean


def test_close_removes_the_shared_dropout_hook(dropout_model):
    model, batch = dropout_model
    before = len(model._forward_pre_hooks)
    reg = SmartAdversarial(dropout="shared")
    reg(model, batch, model(**{k: v for k, v in batch.items() if k != "labels"}))
    assert len(model._forward_pre_hooks) == before + 1
    reg.close()
    assert len(model._forward_pre_hooks) == before
