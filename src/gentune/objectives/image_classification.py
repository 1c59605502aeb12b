"""Image classification on a pretrained encoder: fine-tuning and linear probing as in MAE (He et al., "Masked
Autoencoders Are Scalable Vision Learners", CVPR 2022), with layer-wise learning-rate decay (Clark et al.,
"ELECTRA", ICLR 2020; Bao et al., "BEiT", ICLR 2022).

The loss is cross-entropy computed here in float32 on the logits the model returns.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.vision import HEADS, ImageClassifier  # noqa: F401  (the model this objective trains)
from ..registry import register
from ..tensors import unwrap, widen

# parameters never decayed, beyond every 1-d tensor (biases, norm scales): MAE's no_weight_decay list
NO_DECAY = ("cls_token", "pos_embed", "mask_token")


def param_groups(model: nn.Module, lr: float, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """Optimizer parameter groups with layer-wise lr decay: a parameter of layer l gets
    ``lr * layer_decay ** (num_layers - l)`` (encoder layers from ``encoder.layer_id``; everything outside the
    encoder is layer ``num_layers``), and no weight decay on 1-d tensors and position / class / mask tokens.

    Args:
        model: an :class:`ImageClassifier` (or anything with an ``encoder`` attribute), or an encoder itself;
            possibly DDP-wrapped. Frozen parameters are left out.

    Returns:
        A list of dicts with ``params``, ``lr``, ``weight_decay``, ``lr_scale`` and ``layer_id``.
    """
    inner = unwrap(model)
    encoder = getattr(inner, "encoder", inner)
    prefix = "encoder." if encoder is not inner else ""
    if hasattr(encoder, "layer_id"):
        num_layers, layer_of = encoder.num_layers, encoder.layer_id
    elif layer_decay != 1.0:
        raise ValueError(f"layer_decay {layer_decay} needs an encoder with layer_id(); "
                         f"{type(encoder).__name__} has none")
    else:
        num_layers, layer_of = 0, lambda name: 0
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in inner.named_parameters():
        if not p.requires_grad:
            continue
        lid = layer_of(name[len(prefix):]) if name.startswith(prefix) else num_layers
        decay = p.ndim > 1 and name.split(".")[-1] not in NO_DECAY
        scale = layer_decay ** (num_layers - lid)
        group = groups.setdefault((lid, decay), {"params": [], "lr": lr * scale, "lr_scale": scale,
                                                 "weight_decay": weight_decay if decay else 0.0, "layer_id": lid})
        group["params"].append(p)
    return [groups[k] for k in sorted(groups)]


@register("objective", "image-classification")
class ImageClassification:
    """Supervised image classification (cross-entropy on an :class:`ImageClassifier`'s logits).

    Args:
        label_smoothing: the cross-entropy's label smoothing.
    """

    def __init__(self, label_smoothing: float = 0.0):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"image-classification: label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def __call__(self, model, batch: dict) -> dict:
        logits = model(batch["pixel_values"])
        loss = F.cross_entropy(widen(logits), batch["labels"].long(), label_smoothing=self.label_smoothing)
        return {"loss": loss, "output": logits}


ImageClassificationConfig = ImageClassification.Config
