"""Point-cloud classification on a (pretrained) point encoder: the fine-tuning and linear-probe objective.

The model is a :class:`gentune.models.points.PointClassifier` (an encoder's global feature and a head); the loss
is the cross-entropy of its logits, in float32.
"""

from __future__ import annotations

import torch.nn.functional as F

from ..registry import register

from ..models.points import HEADS, PointClassifier  # noqa: F401  (the model this objective trains)


@register("objective", "point-classification")
class PointClassification:
    """Supervised classification of point clouds (cross-entropy on a ``PointClassifier``'s logits).

    Args:
        label_smoothing: the cross-entropy's label smoothing.
    """

    def __init__(self, label_smoothing: float = 0.0):
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"point-classification: label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def __call__(self, model, batch: dict) -> dict:
        logits = model(batch["points"])
        loss = F.cross_entropy(logits.float(), batch["labels"], label_smoothing=self.label_smoothing)
        return {"loss": loss, "output": logits}


PointClassificationConfig = PointClassification.Config
