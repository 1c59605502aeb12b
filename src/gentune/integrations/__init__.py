"""Integrations of gentune's regularizers with other training loops.

- :mod:`gentune.integrations.hf_trainer`: :class:`RegularizedTrainer`, a drop-in Hugging Face ``Trainer``.
"""

from .hf_trainer import REGULARIZER_STATE_NAME, RegularizedTrainer, RegularizerCallback, read_regularizer_state

__all__ = ["REGULARIZER_STATE_NAME", "RegularizedTrainer", "RegularizerCallback", "read_regularizer_state"]
