"""Diagnostics: what measures generalization without training more (Deng, Hong, Zhou, Mahdavi, "On the
Generalization Ability of Unsupervised Pretraining", AISTATS 2024).

Pure functions of fixed features or numbers; each returns a plain dict (or a list of dicts) of Python floats,
ints, strings and lists, ready for ``json.dumps``:

- ``rademacher_complexity`` / ``complexity_curve``: representation-induced Rademacher complexity of norm-bounded
  linear or two-layer ReLU heads on downstream features, with a 95% interval and an upper bound;
- ``heterogeneity``: kernel MMD^2 with a permutation test and a domain classifier between two feature samples;
- ``transferability``: the fitted power law downstream excess risk = C_beta * pretraining excess loss^beta;
- ``generalization_gap``: heldout-vs-train gaps, positive when worse held out;
- ``feature_spread``: how much the features vary across examples (the share of their norm that does, and over how
  many directions): a collapsed representation shows here first;
- ``kernel`` (:mod:`.ntk`): the empirical NTK of a model's outputs (SGD, SignGD, asymmetric SignGD) over a
  parameter subset, chunked, sharded and resumable; ``solve`` (:mod:`.kernels`): the kernel solvers (Malladi et
  al., ICML 2023).
"""

from .heterogeneity import heterogeneity
from .kernels import solve
from .ntk import kernel
from .rademacher import complexity_curve, rademacher_complexity
from .spread import feature_spread
from .transfer import generalization_gap, transferability

__all__ = ["complexity_curve", "feature_spread", "generalization_gap", "heterogeneity", "kernel",
           "rademacher_complexity", "solve", "transferability"]
