"""The empirical NTK (gentune.diagnostics.ntk) against a brute-force computation from per-example
torch.autograd.grad on tiny BERTs in float64, for every kernel, parameter set and model kind; symmetry and positive
semi-definiteness; the asymmetric kernel's definition; chunked, paneled, resumed and two-process computations
equal to the unchunked one; the solvers (gentune.diagnostics.kernels) against closed forms and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gentune.diagnostics import kernels as ks
from gentune.diagnostics.ntk import kernel, outputs, relative_error, select_parameters
from gentune.errors import GentuneError

MASK, LABELS = 4, [10, 20, 30]


def _bert(tied: bool = True, positions: int = 600):
    from transformers import BertConfig

    return BertConfig(vocab_size=1000, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=positions, tie_word_embeddings=tied)


@pytest.fixture(scope="module")
def prompt_model():
    """A tied masked LM read through 3 label words; vocabulary and positions big enough for both sparse paths."""
    from transformers import BertForMaskedLM

    from gentune.models.prompting import PromptClassifier

    torch.manual_seed(0)
    mlm = BertForMaskedLM(_bert()).double()
    with torch.no_grad():
        mlm.cls.predictions.bias.normal_(0, 0.5)
    return PromptClassifier(mlm, LABELS, MASK).eval()


@pytest.fixture(scope="module")
def untied_prompt_model():
    from transformers import BertForMaskedLM

    from gentune.models.prompting import PromptClassifier

    torch.manual_seed(1)
    mlm = BertForMaskedLM(_bert(tied=False, positions=64)).double()
    assert mlm.get_output_embeddings().weight is not mlm.get_input_embeddings().weight
    return PromptClassifier(mlm, [30, 10], MASK).eval()


@pytest.fixture(scope="module")
def classifier():
    from transformers import BertForSequenceClassification

    torch.manual_seed(2)
    cfg = _bert(positions=64)
    cfg.num_labels = 2
    return BertForSequenceClassification(cfg).double().eval()


def _inputs(n: int, seed: int, width: int = 12):
    """Right-padded random token rows of different lengths, one [MASK] each."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (n, width), generator=g)
    mask = torch.ones_like(ids)
    lengths = torch.randint(5, width + 1, (n,), generator=g)
    for i in range(n):
        ids[i, lengths[i]:] = 0
        mask[i, lengths[i]:] = 0
        ids[i, int(torch.randint(1, int(lengths[i]) - 1, (1,), generator=g))] = MASK
    return {"input_ids": ids, "attention_mask": mask}


def _literal_outputs(model, row: dict, difference: bool):
    out = model(**row)
    z = out.label_logits if hasattr(out, "label_logits") else out.logits
    z = z[0]
    return z[1:] - z[:1] if difference else z


def _brute(model, inputs, which, difference=False):
    """Per-example gradients, one example (unpadded) and one output at a time, by torch.autograd.grad."""
    chosen = select_parameters(model, which)
    names = list(chosen)
    rows = []
    for i in range(len(inputs["input_ids"])):
        n = int(inputs["attention_mask"][i].sum())
        row = {k: v[i:i + 1, :n] for k, v in inputs.items()}
        z = _literal_outputs(model, row, difference)
        for c in range(len(z)):
            grads = torch.autograd.grad(z[c], [chosen[k] for k in names], retain_graph=True, allow_unused=True)
            rows.append(torch.cat([(g if g is not None else torch.zeros_like(chosen[k])).reshape(-1)
                                   for g, k in zip(grads, names)]))
    return torch.stack(rows), len(z)


def _soft_sign(g, eps):
    return g / (g.abs() + eps)


def _literal_kernel(gx, gy, kind, eps):
    if kind == "sgd":
        return gx @ gy.T
    if kind == "signgd":
        return _soft_sign(gx, eps) @ _soft_sign(gy, eps).T
    return gx @ _soft_sign(gy, eps).T


EPS = 1e-12  # the soft sign ignores rounding noise in gradients that are zero in exact arithmetic


@pytest.mark.parametrize("which", ["all", "no-embeddings", "no-head", "bitfit"])
def test_prompt_kernels_equal_brute_force(prompt_model, which):
    x, y = _inputs(7, 0), _inputs(5, 1)
    gx, c = _brute(prompt_model, x, which)
    gy, _ = _brute(prompt_model, y, which)
    for kind in ("sgd", "signgd", "asym-signgd"):
        got = kernel(prompt_model, x, y, kind=kind, params=which, sign_eps=EPS, chunk=3, panel=3, slab=4096)
        assert got.values.shape == (7, c, 5, c) and got.dim == gx.shape[1]
        want = _literal_kernel(gx, gy, kind, EPS).reshape(7, c, 5, c)
        assert relative_error(got.values, want) < 1e-10, kind
        if kind == "asym-signgd":  # the flipped kernel: the sign on the rows' side
            flipped = (_soft_sign(gx, EPS) @ gy.T).reshape(7, c, 5, c)
            assert relative_error(got.flipped, flipped) < 1e-10


@pytest.mark.parametrize("kind", ["sgd", "asym-signgd"])
def test_untied_decoder_and_classifier_kernels_equal_brute_force(untied_prompt_model, classifier, kind):
    for model, difference in ((untied_prompt_model, False), (untied_prompt_model, True), (classifier, False),
                              (classifier, True)):
        x = _inputs(6, 3)
        g, c = _brute(model, x, "all", difference)
        got = kernel(model, x, kind=kind, difference=difference, sign_eps=EPS, chunk=4, panel=4)
        assert got.values.shape == (6, c, 6, c) and c == (1 if difference else 2)
        assert relative_error(got.values, _literal_kernel(g, g, kind, EPS).reshape(6, c, 6, c)) < 1e-10


def test_lora_kernel_is_over_the_adapter(classifier):
    import copy

    import peft

    model = peft.get_peft_model(copy.deepcopy(classifier),
                                peft.LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query", "value"]))
    with torch.no_grad():  # B = 0 at initialisation makes A's gradient vanish; a non-zero B tests both
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    chosen = select_parameters(model, "lora")
    assert chosen and all(("lora_" in n) or ("classifier" in n) for n in chosen)
    x = _inputs(5, 4)
    g, c = _brute(model, x, "lora")
    got = kernel(model, x, params="lora", chunk=2, panel=2)
    assert relative_error(got.values, (g @ g.T).reshape(5, c, 5, c)) < 1e-10
    with pytest.raises(GentuneError, match="no LoRA parameters"):
        select_parameters(classifier, "lora")


def test_sgd_kernel_is_symmetric_psd_and_asym_flips(prompt_model):
    x = _inputs(9, 5)
    k = kernel(prompt_model, x, chunk=2, panel=4).matrix()
    assert torch.equal(k, k.T)
    assert float(torch.linalg.eigvalsh(k).min()) > -1e-10 * float(k.abs().max())
    a = kernel(prompt_model, x, kind="asym-signgd", sign_eps=EPS, chunk=2, panel=4)
    assert not torch.allclose(a.matrix(), a.matrix().T)  # not symmetric ...
    assert torch.allclose(a.matrix(True), a.matrix().T, rtol=1e-12, atol=0)  # ... and its flip is its transpose
    y = _inputs(4, 6)
    xy = kernel(prompt_model, x, y, kind="asym-signgd", sign_eps=EPS, chunk=3)
    yx = kernel(prompt_model, y, x, kind="asym-signgd", sign_eps=EPS, chunk=3)
    assert torch.allclose(xy.matrix(True), yx.matrix().T, rtol=1e-12, atol=0)


def test_chunks_panels_and_slabs_do_not_change_the_kernel(prompt_model):
    x, y = _inputs(10, 7), _inputs(7, 8)
    whole = kernel(prompt_model, x, kind="asym-signgd", chunk=10, panel=10, slab=1 << 20)
    cross = kernel(prompt_model, x, y, kind="asym-signgd", chunk=10, panel=10, slab=1 << 20)
    for chunk, panel, slab in ((1, 1, 1 << 14), (3, 6, 1000), (4, 4, 1 << 20)):
        part = kernel(prompt_model, x, kind="asym-signgd", chunk=chunk, panel=panel, slab=slab)
        assert relative_error(part.values, whole.values) < 1e-12
        assert relative_error(part.flipped, whole.flipped) < 1e-12
        part = kernel(prompt_model, x, y, kind="asym-signgd", chunk=chunk, panel=panel, slab=slab)
        assert relative_error(part.values, cross.values) < 1e-12
        assert relative_error(part.flipped, cross.flipped) < 1e-12
    # the symmetric sgd path (diagonal blocks made exactly symmetric) against the same kernel as a cross kernel
    sym = kernel(prompt_model, x, kind="sgd", chunk=3, panel=6)
    assert relative_error(sym.values, kernel(prompt_model, x, _inputs(10, 7), kind="sgd", chunk=4).values) < 1e-12


def test_blocks_resume_and_damage(prompt_model, tmp_path):
    x = _inputs(8, 9)
    whole = kernel(prompt_model, x, kind="asym-signgd", chunk=2, panel=2)
    blocks = tmp_path / "blocks"
    first = kernel(prompt_model, x, kind="asym-signgd", chunk=2, panel=2, block_dir=blocks)
    files = sorted(blocks.glob("panel-*.safetensors"))
    assert len(files) == 4 and torch.equal(first.values, whole.values)
    files[2].unlink()  # an interrupted run: one panel missing
    again = kernel(prompt_model, x, kind="asym-signgd", chunk=2, panel=2, block_dir=blocks)
    assert torch.equal(again.values, whole.values) and torch.equal(again.flipped, whole.flipped)
    with pytest.raises(GentuneError, match="another kernel computation"):
        kernel(prompt_model, x, kind="sgd", chunk=2, panel=2, block_dir=blocks)
    files[0].write_bytes(b"not a safetensors file")
    with pytest.raises(GentuneError, match="cannot read the kernel panel"):
        kernel(prompt_model, x, kind="asym-signgd", chunk=2, panel=2, block_dir=blocks)


def _shard(rank: int, world: int, port: int, path: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        from transformers import BertForMaskedLM

        from gentune.models.prompting import PromptClassifier

        torch.manual_seed(0)
        mlm = BertForMaskedLM(_bert()).double()
        with torch.no_grad():
            mlm.cls.predictions.bias.normal_(0, 0.5)
        model = PromptClassifier(mlm, LABELS, MASK).eval()
        k = kernel(model, _inputs(9, 10), kind="asym-signgd", chunk=2, panel=2)
        from safetensors.torch import save_file

        save_file({"k": k.values, "f": k.flipped}, f"{path}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one(prompt_model, tmp_path):
    import socket

    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_shard, args=(2, port, str(tmp_path / "k")), nprocs=2)
    one = kernel(prompt_model, _inputs(9, 10), kind="asym-signgd", chunk=2, panel=2)
    for rank in (0, 1):
        got = load_file(str(tmp_path / f"k.{rank}"))
        assert relative_error(got["k"], one.values) < 1e-12 and relative_error(got["f"], one.flipped) < 1e-12


def test_initial_outputs_and_refusals(prompt_model, classifier):
    x = _inputs(5, 11)
    f0 = outputs(prompt_model, x, batch_size=2)
    for i in range(5):
        n = int(x["attention_mask"][i].sum())
        want = _literal_outputs(prompt_model, {k: v[i:i + 1, :n] for k, v in x.items()}, False)
        assert torch.allclose(f0[i], want.detach(), rtol=1e-10)
    with pytest.raises(GentuneError, match="kernel must be one of"):
        kernel(prompt_model, x, kind="adam")
    with pytest.raises(GentuneError, match="params must be one of"):
        kernel(prompt_model, x, params="some")
    with pytest.raises(GentuneError, match="difference needs two outputs"):
        kernel(prompt_model, x, difference=True)  # three label words


# ----------------------------------------------------------------------------------------------- solvers


def _features(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64)


def test_lstsq_is_kernel_ridge_with_relative_regularisation():
    phi, psi = _features(12, 5, 0), _features(4, 5, 1)
    k, ke = phi @ phi.T, psi @ phi.T
    y = torch.randn(12, 1, dtype=torch.float64)
    for reg in (0.0, 1e-3, 0.5):
        lam = reg * torch.linalg.matrix_norm(k, 2)
        got = ks.lstsq(k, y, ke, reg=reg)
        if reg == 0:  # rank 5 < 12: the minimum-norm solution, which is least squares on the features
            w = torch.linalg.lstsq(phi, y).solution
            want = psi @ w
        else:
            want = ke @ torch.linalg.solve(k + lam * torch.eye(12, dtype=torch.float64), y)
        assert torch.allclose(got, want, rtol=1e-8, atol=1e-10)
    f0t, f0e = torch.randn(12, 1, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64)
    adjusted = ks.lstsq(k, y, ke, reg=0.1, f0_train=f0t, f0_eval=f0e)
    assert torch.allclose(adjusted, ks.lstsq(k, y - f0t, ke, reg=0.1) + f0e, rtol=1e-10)
    assert torch.allclose(ks.lstsq(k, f0t, ke, reg=0.1, f0_train=f0t, f0_eval=f0e), f0e)  # nothing left to fit


def test_lstsq_on_a_multi_output_kernel_is_per_output_regression():
    """A kernel with no cross-output entries, K[(i,c),(j,c')] = delta_cc' phi_i.phi_j, regresses each one-hot column
    on its own."""
    phi, psi = _features(10, 4, 2), _features(3, 4, 3)
    c = 3
    eye = torch.eye(c, dtype=torch.float64)
    k = torch.einsum("ij,ab->iajb", phi @ phi.T, eye)
    ke = torch.einsum("ij,ab->iajb", psi @ phi.T, eye)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    got = ks.solve("lstsq", k, labels, ke, reg=1e-2)
    y = ks.targets(labels, c)
    kk = phi @ phi.T
    lam = 1e-2 * torch.linalg.matrix_norm(k.reshape(30, 30), 2)
    want = (psi @ phi.T) @ torch.linalg.solve(kk + lam * torch.eye(10, dtype=torch.float64), y)
    assert torch.allclose(got, want, rtol=1e-8)


def test_kernel_logistic_regression_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    n, reg = 40, 0.05
    phi, psi = _features(n, 6, 4), _features(9, 6, 5)
    w = torch.randn(6, dtype=torch.float64)
    y = (phi @ w + 0.5 * torch.randn(n, dtype=torch.float64) > 0).long()
    got = ks.logistic(phi @ phi.T, y, psi @ phi.T, reg=reg)  # C = 1: the logit of class 1
    sk = LogisticRegression(C=1 / (n * reg), fit_intercept=False, tol=1e-12, max_iter=10000).fit(phi, y)
    assert np.allclose(got[:, 0].numpy(), sk.decision_function(psi), rtol=1e-5, atol=1e-6)
    # three classes through the block kernel delta_cc' phi_i.phi_j: multinomial logistic regression
    y3 = torch.tensor(np.random.default_rng(0).integers(0, 3, n))
    eye = torch.eye(3, dtype=torch.float64)
    got3 = ks.logistic(torch.einsum("ij,ab->iajb", phi @ phi.T, eye), y3,
                       torch.einsum("ij,ab->iajb", psi @ phi.T, eye), reg=reg)
    sk3 = LogisticRegression(C=1 / (n * reg), fit_intercept=False, tol=1e-12, max_iter=10000).fit(phi, y3)
    z = sk3.decision_function(psi)
    assert np.allclose(got3.numpy() - got3.numpy().mean(1, keepdims=True), z - z.mean(1, keepdims=True),
                       rtol=1e-4, atol=1e-5)


def test_svm_equals_a_linear_svc_on_the_features():
    from sklearn.svm import SVC

    phi, psi = _features(30, 4, 6), _features(8, 4, 7)
    y = (phi[:, 0] + phi[:, 1] > 0).long()
    got = ks.svm(phi @ phi.T, y, psi @ phi.T, c_reg=0.7)
    want = SVC(kernel="linear", C=0.7).fit(phi.numpy(), y.numpy()).decision_function(psi.numpy())
    assert np.allclose(got[:, 0].numpy(), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(GentuneError, match="adjust_for_init"):
        ks.svm(phi @ phi.T, y, psi @ phi.T, f0_train=torch.zeros(30, 1))


def test_asym_solver_is_ls_svm_when_the_kernel_is_symmetric_and_solves_its_system_otherwise():
    phi, psi = _features(10, 4, 8), _features(5, 4, 9)
    y = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 1, 0])
    s = 2.0 * y.double() - 1.0
    k, ke = phi @ phi.T, psi @ phi.T
    got = ks.asym(k, y, ke, ke, gamma=2.0, lam=0.3)
    a = torch.linalg.solve(s[:, None] * k * s[None, :] + torch.eye(10, dtype=torch.float64) / 2.0,
                           torch.ones(10, dtype=torch.float64))
    assert torch.allclose(got[:, 0], ke @ (a * s), rtol=1e-8)
    # an asymmetric kernel: the literal block system of the reference code
    g = torch.Generator().manual_seed(3)
    kt = k + 0.3 * torch.randn(10, 10, generator=g, dtype=torch.float64)
    kf = ke + 0.2 * torch.randn(5, 10, generator=g, dtype=torch.float64)
    got = ks.asym(kt, y, ke, kf, gamma=1.5, lam=0.6)
    h = torch.empty(10, 10, dtype=torch.float64)
    kref = kt.T  # the reference's train kernel has the sign on its rows
    for i in range(10):
        for j in range(10):
            h[i, j] = s[i] * kref[i, j] * s[j]
    big = torch.zeros(20, 20, dtype=torch.float64)
    big[:10, :10] = torch.eye(10) / 1.5
    big[:10, 10:] = h
    big[10:, :10] = h.T
    big[10:, 10:] = torch.eye(10) / 1.5
    sol = torch.linalg.solve(big, torch.ones(20, dtype=torch.float64))
    want = 0.6 * ke @ (sol[:10] * s) + 0.4 * kf @ (sol[10:] * s)
    assert torch.allclose(got[:, 0], want, rtol=1e-6)
    with pytest.raises(GentuneError, match="binary tasks only"):
        ks.asym(torch.zeros(3, 2, 3, 2), y[:3], torch.zeros(1, 2, 3, 2), torch.zeros(1, 2, 3, 2))


def test_kernel_solvers_fit_a_real_kernel(prompt_model):
    """End to end on the tiny model: the train kernel's own labels come back from lstsq (interpolation), and every
    solver returns one prediction per held-out example."""
    x, y = _inputs(8, 12), _inputs(4, 13)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    ktt = kernel(prompt_model, x)
    ket = kernel(prompt_model, y, x)
    fitted = ks.solve("lstsq", ktt.values, labels, ktt.values)
    assert (ks.predictions(fitted) == labels.numpy()).all()
    for name in ("lstsq", "logistic", "svm"):
        out = ks.solve(name, ktt.values, labels, ket.values)
        assert out.shape[0] == 4 and torch.isfinite(out).all()
    with pytest.raises(GentuneError, match="solver must be one of"):
        ks.solve("ridge", ktt.values, labels, ket.values)


def test_the_literal_reference_in_benchmarks_agrees(prompt_model):
    """benchmarks/kernel_reference.py (jacrev + vmap(jvp), as the reference code) and the library, both float64."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from kernel_reference import examples_of, reference_kernel

    x = _inputs(4, 14)
    pos = prompt_model.mask_positions(x["input_ids"])
    rows = examples_of(x, pos)
    for kind in ("sgd", "signgd", "asym-signgd"):
        ref, _ = reference_kernel(prompt_model, rows, kind)
        ours = kernel(prompt_model, x, kind=kind, chunk=3)
        # the reference puts the sign on its outer (row) side: gentune's flipped kernel; and the sign kernels
        # differ only where a gradient that is zero in exact arithmetic has rounding noise
        got = ours.flipped if kind == "asym-signgd" else ours.values
        assert relative_error(got, ref) < (1e-10 if kind == "sgd" else 2e-2)


def test_linearization_against_finite_differences(prompt_model):
    """For a small step the first-order change explains all of the actual change (explained -> 1, with the error
    shrinking like the step squared); a larger step explains less; the kernel's change is 0 against itself."""
    import copy

    from gentune.diagnostics.ntk import kernel_change, linearization

    x = _inputs(5, 15)
    g = torch.Generator().manual_seed(0)
    direction = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in prompt_model.named_parameters()}

    def moved(t):
        m = copy.deepcopy(prompt_model)
        with torch.no_grad():
            for n, p in m.named_parameters():
                p.add_(t * direction[n])
        return m

    small, large = linearization(prompt_model, moved(1e-4), x), linearization(prompt_model, moved(1e-1), x)
    tiny = linearization(prompt_model, moved(1e-5), x)
    assert small["explained"] > 1 - 1e-3 and small["cosine"] > 1 - 1e-4
    # central check of the first-order term itself: (f(t) - f(-t)) / 2t against the jvp
    plus, minus = moved(1e-6), moved(-1e-6)
    from gentune.diagnostics.ntk import outputs

    fd = (outputs(plus, x) - outputs(minus, x)) / 2e-6
    assert torch.allclose(small["linear"] / 1e-4, fd, rtol=1e-5, atol=1e-7)
    assert 1 - tiny["explained"] < (1 - small["explained"]) / 10  # second-order error: t^2
    assert large["explained"] < small["explained"]
    k = kernel(prompt_model, x)
    assert kernel_change(k, k) == 0.0
