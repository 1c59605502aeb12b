"""Solvers on a precomputed kernel (Malladi et al., ICML 2023, section 6 and appendix): predict held-out examples from
the kernel between them and the training examples, as fine-tuning in the kernel regime would.

Shapes: a kernel between examples X and Y over C outputs is (n_x, C, n_y, C) (:class:`gentune.diagnostics.ntk.Kernel`
``.values``) or its (n_x C, n_y C) matrix; ``labels`` are class indices (n,) or regression targets (n,); ``f0_*``
the model's initial outputs (n, C). Every solver returns predicted outputs (m, C), float64.

- :func:`lstsq`: kernel regression, the minimum-norm least-squares solution of (K + lam ||K||_2 I) alpha = Y - f0,
  predictions K_et alpha + f0. Y is one-hot (C outputs), +-1 (the single logit difference) or the regression target.
  This is the kernel's prediction for gradient flow on the squared loss run to convergence from f0.
- :func:`logistic`: kernel logistic regression: outputs f0 + K alpha, alpha minimising the mean cross-entropy (C > 1:
  softmax over the C outputs; C = 1: the logistic loss of the logit difference against +-1) plus
  (lam / 2) alpha^T K alpha. With K = Phi Phi^T this is L2-regularised logistic regression on the features Phi.
  (The reference code's "logistic" fits scikit-learn's LogisticRegressionCV on the rows of K as features, another
  estimator.)
- :func:`svm`: scikit-learn's SVC on the precomputed kernel; C = 1 (logit difference): one binary SVM; C > 1:
  one-vs-rest on each output's own block K[(., c), (., c)]. No f0.
- :func:`asym`: for the asymmetric kernel K_asym-signgd (binary, logit difference), the least-squares SVM for
  asymmetric kernels (He, Tao, Suykens et al.) as the reference code solves it: H = diag(y) K^T diag(y),
  [[I/gamma, H], [H^T, I/gamma]] [a; b] = 1, predictions lam * K_et diag(y) a + (1 - lam) * K_et_flipped diag(y) b
  (+ f0). Here K[i, j] = <grad f(x_i), sign grad f(x_j)>, the sign on the training side. With adjust_for_init the
  reference subtracts f0 from y before forming H; so does this.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import GentuneError

SOLVERS = ("lstsq", "logistic", "svm", "asym")


def _matrix(k: torch.Tensor) -> torch.Tensor:
    k = torch.as_tensor(k, dtype=torch.float64)
    return k.reshape(k.shape[0] * k.shape[1], k.shape[2] * k.shape[3]) if k.dim() == 4 else k


def _outputs(k: torch.Tensor) -> int:
    return k.shape[1] if k.dim() == 4 else 1


def targets(labels, outputs: int, difference: bool = False, regression: bool = False) -> torch.Tensor:
    """The regression targets (n, C) of the kernel solvers: one-hot rows for C classes, +-1 for the logit
    difference (class 1 is +1), or the regression targets themselves."""
    y = torch.as_tensor(np.asarray(labels))
    if regression:
        return y.double().reshape(-1, 1)
    y = y.long()
    if difference:
        return (2.0 * y.double() - 1.0).reshape(-1, 1)
    if int(y.max()) >= outputs or int(y.min()) < 0:
        raise GentuneError(f"kernel solver: labels outside 0..{outputs - 1}")
    return torch.nn.functional.one_hot(y, outputs).double()


def regularized(k: torch.Tensor, reg: float) -> torch.Tensor:
    """K + reg ||K||_2 I (relative regularisation: the spectral norm scales it)."""
    if reg < 0:
        raise GentuneError(f"kernel solver: reg must be >= 0, got {reg}")
    if reg == 0:
        return k
    return k + reg * torch.linalg.matrix_norm(k, ord=2) * torch.eye(k.shape[0], dtype=k.dtype)


def _f0(f0, n: int, c: int) -> torch.Tensor:
    if f0 is None:
        return torch.zeros(n, c, dtype=torch.float64)
    f0 = torch.as_tensor(f0, dtype=torch.float64).reshape(n, -1)
    if f0.shape[1] != c:
        raise GentuneError(f"kernel solver: f0 has {f0.shape[1]} outputs, the kernel {c}")
    return f0


def lstsq(k_train, y: torch.Tensor, k_eval, reg: float = 0.0, f0_train=None, f0_eval=None) -> torch.Tensor:
    """Kernel regression: predictions (m, C) = K_et alpha + f0_eval, alpha the least-squares solution of
    (K_tt + reg ||K_tt|| I) alpha = (y - f0_train), flattened row i * C + c."""
    c = _outputs(k_train)
    kt, ke = _matrix(k_train), _matrix(k_eval)
    n, m = kt.shape[0] // c, ke.shape[0] // c
    rhs = (torch.as_tensor(y, dtype=torch.float64).reshape(n, c) - _f0(f0_train, n, c)).reshape(-1, 1)
    alpha = torch.linalg.lstsq(regularized(kt, reg), rhs, driver="gelsd").solution
    return (ke @ alpha).reshape(m, c) + _f0(f0_eval, m, c)


def logistic(k_train, labels, k_eval, reg: float = 1e-3, f0_train=None, f0_eval=None,
             max_iter: int = 500) -> torch.Tensor:
    """Kernel logistic regression (see the module): outputs (m, C) = f0_eval + K_et alpha. For C = 1 the labels are
    0/1 (or +-1) and the output is the logit of class 1; for C > 1, class indices."""
    if reg <= 0:
        raise GentuneError(f"kernel logistic regression: reg must be > 0, got {reg}")
    c = _outputs(k_train)
    kt, ke = _matrix(k_train), _matrix(k_eval)
    # the same problem on K / s (s its mean diagonal) with penalty reg / s: the outputs K alpha are unchanged, and
    # L-BFGS needs far fewer steps on a kernel of order one than on an eNTK's raw scale
    scale = float(kt.diagonal().abs().mean()) or 1.0
    kt, ke, reg = kt / scale, ke / scale, reg / scale
    n, m = kt.shape[0] // c, ke.shape[0] // c
    y = torch.as_tensor(np.asarray(labels))
    f0t = _f0(f0_train, n, c)
    alpha = torch.zeros(n * c, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([alpha], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=50, line_search_fn="strong_wolfe")

    def loss_fn():
        ka = kt @ alpha
        z = f0t + ka.reshape(n, c)
        if c == 1:
            sign = torch.where(y > 0, 1.0, -1.0).double()
            data = torch.nn.functional.softplus(-sign * z[:, 0]).mean()
        else:
            data = torch.nn.functional.cross_entropy(z, y.long())
        return data + 0.5 * reg * (alpha @ ka)

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (ke @ alpha).reshape(m, c) + _f0(f0_eval, m, c)


def svm(k_train, labels, k_eval, c_reg: float = 1.0, f0_train=None, f0_eval=None) -> torch.Tensor:
    """scikit-learn's SVC on the precomputed kernel: (m, C) decision values (C = 1: the binary SVM's, positive for
    class 1; C > 1: each output's one-vs-rest SVM on its own block)."""
    from sklearn.svm import SVC

    if f0_train is not None or f0_eval is not None:
        raise GentuneError("kernel svm: adjust_for_init is not defined for the SVM solver (use lstsq or logistic)")
    c = _outputs(k_train)
    kt = torch.as_tensor(k_train, dtype=torch.float64)
    ke = torch.as_tensor(k_eval, dtype=torch.float64)
    y = np.asarray(labels)
    if kt.dim() == 2:
        kt, ke = kt[:, None, :, None], ke[:, None, :, None]
    out = []
    for j in range(c):
        target = (y > 0).astype(int) if c == 1 else (y == j).astype(int)
        if len(set(target.tolist())) < 2:
            raise GentuneError("kernel svm: the training labels hold one class only")
        model = SVC(kernel="precomputed", C=c_reg).fit(kt[:, j, :, j].numpy(), target)
        out.append(torch.as_tensor(model.decision_function(ke[:, j, :, j].numpy()), dtype=torch.float64))
    return torch.stack(out, 1)


def asym(k_train, labels, k_eval, k_eval_flipped, gamma: float = 1.0, lam: float = 0.5, f0_train=None,
         f0_eval=None) -> torch.Tensor:
    """The asymmetric least-squares SVM for K_asym-signgd (binary: one output, the logit difference), (m, 1)."""
    if _outputs(k_train) != 1:
        raise GentuneError("kernel asym solver: binary tasks only, with the logit difference (--difference)")
    if gamma <= 0 or not 0 <= lam <= 1:
        raise GentuneError(f"kernel asym solver: gamma must be > 0 and lam in [0, 1], got {gamma}, {lam}")
    kt, ke, kf = _matrix(k_train), _matrix(k_eval), _matrix(k_eval_flipped)
    n, m = kt.shape[0], ke.shape[0]
    y = torch.as_tensor(np.asarray(labels)).double().reshape(-1)
    y = torch.where(y > 0, 1.0, -1.0).double() if set(y.unique().tolist()) <= {0.0, 1.0} else y
    y = y - _f0(f0_train, n, 1)[:, 0]
    h = y[:, None] * kt.T * y[None, :]
    eye = torch.eye(n, dtype=torch.float64) / gamma
    a = torch.cat([torch.cat([eye, h], 1), torch.cat([h.T, eye], 1)], 0)
    sol = torch.linalg.lstsq(a, torch.ones(2 * n, 1, dtype=torch.float64), driver="gelsd").solution[:, 0]
    alpha, beta = sol[:n], sol[n:]
    omega = ke @ (alpha * y)
    nu = kf @ (beta * y)
    return (lam * omega + (1 - lam) * nu).reshape(m, 1) + _f0(f0_eval, m, 1)


def solve(name: str, k_train, labels, k_eval, *, regression: bool = False, difference: bool = False,
          f0_train=None, f0_eval=None, k_eval_flipped=None, **options) -> torch.Tensor:
    """The solver ``name`` (lstsq, logistic, svm, asym) with its options; predicted outputs (m, C)."""
    if name not in SOLVERS:
        raise GentuneError(f"kernel solver must be one of {', '.join(SOLVERS)}, got {name!r}")
    c = _outputs(k_train)
    if name == "lstsq":
        return lstsq(k_train, targets(labels, c, difference, regression), k_eval, f0_train=f0_train,
                     f0_eval=f0_eval, **options)
    if regression:
        raise GentuneError(f"kernel solver {name}: classification only (regression: lstsq)")
    if name == "logistic":
        return logistic(k_train, labels, k_eval, f0_train=f0_train, f0_eval=f0_eval, **options)
    if name == "svm":
        return svm(k_train, labels, k_eval, f0_train=f0_train, f0_eval=f0_eval, **options)
    if k_eval_flipped is None:
        raise GentuneError("kernel asym solver: needs the asym-signgd kernel (its flipped half)")
    return asym(k_train, labels, k_eval, k_eval_flipped, f0_train=f0_train, f0_eval=f0_eval, **options)


def predictions(outputs: torch.Tensor, regression: bool = False) -> np.ndarray:
    """Class predictions of solver outputs: argmax over C > 1 outputs, class 1 where a single logit is positive;
    regression: the outputs."""
    if regression:
        return outputs[:, 0].numpy()
    if outputs.shape[1] == 1:
        return (outputs[:, 0] > 0).long().numpy()
    return outputs.argmax(1).numpy()


__all__ = ["SOLVERS", "asym", "logistic", "lstsq", "predictions", "regularized", "solve", "svm", "targets"]
