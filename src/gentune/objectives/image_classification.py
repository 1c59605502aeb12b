"""Image classification on a pretrained encoder: fine-tuning and linear probing as in MAE (He et al., "Masked
Autoencoders Are Scalable Vision Learners", CVPR 2022), with layer-wise learning-rate decay (Clark et al.,
"ELECTRA", ICLR 2020; Bao et al., "BEiT", ICLR 2022).

The loss is cross-entropy computed here in float32 on the logits the model returns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import register
from ..regularizers._common import unwrap, widen

HEADS = ("linear", "mlp", "bn-linear")
# parameters never decayed, beyond every 1-d tensor (biases, norm scales): MAE's no_weight_decay list
NO_DECAY = ("cls_token", "pos_embed", "mask_token")


class ImageClassifier(nn.Module):
    """An encoder with ``forward_features`` and a classification head.

    Args:
        encoder: (B, C, H, W) -> (B, feature_dim) through ``forward_features``.
        head: ``"linear"``; ``"mlp"`` (Linear-GELU-Linear, hidden = feature_dim); ``"bn-linear"`` (MAE's linear
            probe: BatchNorm without affine parameters, then Linear).
        linear_probe: freeze the encoder (no gradients, always in eval mode, features under no_grad).
    """

    def __init__(self, encoder: nn.Module, num_classes: int, head: str = "linear", linear_probe: bool = False):
        super().__init__()
        d = encoder.feature_dim
        if head == "linear":
            self.head = nn.Linear(d, num_classes)
        elif head == "mlp":
            self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, num_classes))
        elif head == "bn-linear":
            self.head = nn.Sequential(nn.BatchNorm1d(d, affine=False, eps=1e-6), nn.Linear(d, num_classes))
        else:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.encoder, self.linear_probe, self.num_classes = encoder, linear_probe, num_classes
        last = self.head if isinstance(self.head, nn.Linear) else self.head[-1]
        nn.init.trunc_normal_(last.weight, std=0.01)  # MAE's head init: small logits at the start
        nn.init.zeros_(last.bias)
        if linear_probe:
            encoder.requires_grad_(False)
            encoder.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.linear_probe:
            self.encoder.eval()  # no dropout / drop-path in a frozen encoder
        return self

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_classes) logits."""
        if self.linear_probe:
            with torch.no_grad():
                features = self.encoder.forward_features(pixel_values)
        else:
            features = self.encoder.forward_features(pixel_values)
        return self.head(features)


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


@dataclass
class ImageClassificationConfig:
    label_smoothing: float = 0.0


@register("objective", "image-classification", ImageClassificationConfig)
class ImageClassification:
    """Supervised image classification (cross-entropy on an :class:`ImageClassifier`'s logits)."""

    def __init__(self, label_smoothing: float = 0.0):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"image-classification: label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def __call__(self, model, batch: dict) -> dict:
        logits = model(batch["pixel_values"])
        loss = F.cross_entropy(widen(logits), batch["labels"].long(), label_smoothing=self.label_smoothing)
        return {"loss": loss, "output": logits}
