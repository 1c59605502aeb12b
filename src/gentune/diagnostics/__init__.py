"""Diagnostics: what measures generalization without training more (Deng, Hong, Zhou, Mahdavi, "On the
Generalization Ability of Unsupervised Pretraining", AISTATS 2024).

Pure functions of fixed features or numbers; each returns a plain dict (or a list of dicts) of Python floats,
ints, strings and lists, ready for ``json.dumps``:

- ``rademacher_complexity`` / ``complexity_curve``: representation-induced Rademacher complexity of norm-bounded
  linear or two-layer ReLU heads on downstream features, with a 95% interval and an upper bound;
- ``heterogeneity``: kernel MMD^2 with a permutation test and a domain classifier between two feature samples;
- ``transferability``: the fitted power law downstream excess risk = C_beta * pretraining excess loss^beta;
- ``generalization_gap``: heldout-vs-train gaps, positive when worse held out.
"""

from .heterogeneity import heterogeneity
from .rademacher import complexity_curve, rademacher_complexity
from .transfer import generalization_gap, transferability

__all__ = ["complexity_curve", "generalization_gap", "heterogeneity", "rademacher_complexity", "transferability"]
