"""R-Drop against a literal re-implementation of the paper's equations (two dropout forwards, the symmetric KL
with its 1/2, the mean of the two NLLs), written with torch.nn.functional.kl_div and no gentune code."""

import pytest
import torch
import torch.nn.functional as F

from gentune.registry import create
from gentune.regularizers.rdrop import RDrop


def _model(tiny_model, dropout=0.3):
    from transformers import AutoModelForSequenceClassification, BertConfig

    cfg = BertConfig.from_pretrained(tiny_model, num_labels=3, hidden_dropout_prob=dropout,
                                     attention_probs_dropout_prob=dropout)
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(tiny_model, config=cfg).double().train()


def _batch(n=6, length=9, vocab=1000, labels=3):
    g = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(5, vocab, (n, length), generator=g),
            "attention_mask": torch.ones(n, length, dtype=torch.long),
            "labels": torch.randint(0, labels, (n,), generator=g)}


def _literal(model, batch, alpha):
    """The paper's eq. (1)-(3), the NLL averaged over the two passes as the authors' Hugging Face code does."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    l1, l2 = model(**inputs).logits, model(**inputs).logits
    lp1, lp2 = F.log_softmax(l1, -1), F.log_softmax(l2, -1)
    kl_12 = F.kl_div(lp2, lp1, log_target=True, reduction="batchmean")  # KL(P1 || P2)
    kl_21 = F.kl_div(lp1, lp2, log_target=True, reduction="batchmean")  # KL(P2 || P1)
    nll = 0.5 * (F.nll_loss(lp1, batch["labels"]) + F.nll_loss(lp2, batch["labels"]))
    return nll + alpha * 0.5 * (kl_12 + kl_21), l1


@pytest.mark.parametrize("alpha", [0.5, 4.0])
def test_rdrop_equals_the_papers_loss_and_gradient(tiny_model, alpha):
    model = _model(tiny_model)
    batch = _batch()
    torch.manual_seed(7)
    want, _ = _literal(model, batch, alpha)
    want_grads = torch.autograd.grad(want, list(model.parameters()), allow_unused=True)

    reg = create("regularizer", "rdrop", alpha=alpha)
    torch.manual_seed(7)  # the same dropout masks: the loop's forward first, then the regularizer's
    out = model(**{k: v for k, v in batch.items() if k != "labels"})
    task = F.cross_entropy(out.logits, batch["labels"])
    terms = reg(model, batch, out)
    assert set(terms) == {"rdrop", "rdrop_nll"} and terms["rdrop"] > 0
    got = task + terms["rdrop"] + terms["rdrop_nll"]
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-10)
    got_grads = torch.autograd.grad(got, list(model.parameters()), allow_unused=True)
    for g, w in zip(got_grads, want_grads):
        if w is None:
            assert g is None or torch.all(g == 0)
        else:
            torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-12)


def test_first_only_no_dropout_and_regression(tiny_model):
    model = _model(tiny_model)
    batch = _batch()
    out = model(**{k: v for k, v in batch.items() if k != "labels"})
    assert set(create("regularizer", "rdrop", nll="first")(model, batch, out)) == {"rdrop"}
    # no dropout: both forwards agree, the divergence is 0 (to rounding)
    quiet = _model(tiny_model, dropout=0.0)
    out = quiet(**{k: v for k, v in batch.items() if k != "labels"})
    terms = create("regularizer", "rdrop")(quiet, batch, out)
    assert float(terms["rdrop"].detach()) == pytest.approx(0.0, abs=1e-12)
    assert float(terms["rdrop_nll"].detach()) == pytest.approx(0.0, abs=1e-12)
    # regression: the squared difference of the two predictions, alpha times (no 1/2: it is already symmetric)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1)).double().train()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    torch.manual_seed(3)
    a, b = net(x), net(x)
    want = 2.0 * ((a - b) ** 2).sum(-1).mean()
    want_nll = 0.5 * (((b.squeeze(-1) - y) ** 2).mean() - ((a.squeeze(-1) - y) ** 2).mean())
    reg = RDrop(alpha=2.0, forward=lambda m, batch: m(batch["x"]))  # code, not an option: the class itself
    torch.manual_seed(3)
    first = net(x)
    terms = reg(net, {"x": x, "labels": y}, first)
    assert float(terms["rdrop"]) == pytest.approx(float(want), rel=1e-12)
    assert float(terms["rdrop_nll"]) == pytest.approx(float(want_nll), rel=1e-12)


def test_bad_options():
    from gentune.errors import GentuneError

    with pytest.raises((ValueError, GentuneError), match="nll"):
        create("regularizer", "rdrop", nll="both")
    with pytest.raises((ValueError, GentuneError), match="alpha"):
        create("regularizer", "rdrop", alpha=-1.0)
