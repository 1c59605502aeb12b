"""Context encoder pretraining (Pathak, Krahenbuhl, Donahue, Darrell, Efros, "Context Encoders: Feature Learning
by Inpainting", CVPR 2016).

A region of each image is set to 0 (the dataset mean, the inputs being normalised), a conv encoder-decoder fills
it in, and the loss is the L2 error on the removed region. The masks are the paper's three kinds: a central
square, random blocks, and random regions (the paper's are PASCAL segmentation shapes; here smooth blobs, i.e.
thresholded bicubic-upsampled noise). ``overlap`` > 0 also scores a ring of visible pixels around the hole with
weight ``overlap_weight`` (the paper's code: overlapPred pixels, weight 10), normalised like the hole.

The optional adversarial term (``adv_weight``, the paper's lambda_adv = 0.001 against lambda_rec = 0.999) trains a
small discriminator on the completed image (context plus the prediction inside the hole) versus the real one, in
the same backward as the reconstruction and with the same optimizer: the model returns the discriminator's logits
three ways (real; completed with the prediction detached; completed through the discriminator's *detached*
parameters), so that

    loss = L_rec + adv_weight * BCE(D_detached(completed), 1) + BCE(D(real), 1) + BCE(D(completed.detach()), 0)

gives the generator the gradient of its two terms only and the discriminator the gradient of its own loss only,
with no gradient reversal and no second optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import GentuneError
from ..models.vision import ConvDecoder, ConvEncoder, create_encoder, group_norm
from ..registry import register
from ..tensors import widen

MASKS = ("center", "blocks", "regions")


def center_mask(batch: int, height: int, width: int, size: int | None = None, device=None) -> torch.Tensor:
    """(B, 1, H, W): 1 on a central ``size`` x ``size`` square (default H/2), 0 elsewhere."""
    size = height // 2 if size is None else size
    mask = torch.zeros(batch, 1, height, width, device=device)
    top, left = (height - size) // 2, (width - size) // 2
    mask[:, :, top:top + size, left:left + size] = 1
    return mask


def block_mask(batch: int, height: int, width: int, ratio: float = 0.25, size: int | None = None,
               generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """(B, 1, H, W): the union of random, possibly overlapping ``size``-squares (default H/4) covering about
    ``ratio`` of each image (the number of squares whose coverage is closest to ``ratio``)."""
    size = height // 4 if size is None else size
    k = int(3 * ratio * height * width / size ** 2) + 2  # enough candidates to pass ratio almost surely
    ys = torch.randint(0, height - size + 1, (batch, k, 1), generator=generator)
    xs = torch.randint(0, width - size + 1, (batch, k, 1), generator=generator)
    rows, cols = torch.arange(height), torch.arange(width)
    in_y, in_x = (rows >= ys) & (rows < ys + size), (cols >= xs) & (cols < xs + size)  # (B, k, H), (B, k, W)
    union = (in_y[..., :, None] & in_x[..., None, :]).cumsum(1) > 0  # (B, k, H, W): first j squares
    best = (union.float().mean((2, 3)) - ratio).abs().argmin(1)
    return union[torch.arange(batch), best].float()[:, None].to(device)


def region_mask(batch: int, height: int, width: int, ratio: float = 0.25, size: int | None = None,
                generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """(B, 1, H, W): smooth random blobs covering exactly ``round(ratio * H * W)`` pixels of each image: the top
    pixels of uniform noise on a grid of ``size``-pixel cells (default H/8) upsampled bicubically."""
    size = max(1, height // 8) if size is None else size
    noise = torch.rand(batch, 1, max(2, height // size), max(2, width // size), generator=generator)
    smooth = F.interpolate(noise, size=(height, width), mode="bicubic", align_corners=False).flatten(1)
    top = smooth.topk(int(round(ratio * height * width)), dim=1).indices
    mask = torch.zeros(batch, height * width).scatter_(1, top, 1.0)
    return mask.view(batch, 1, height, width).to(device)


def make_mask(kind: str, batch: int, height: int, width: int, size: int | None = None, ratio: float = 0.25,
              generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """One of the three mask kinds by name: ``center``, ``blocks`` or ``regions``."""
    if kind == "center":
        return center_mask(batch, height, width, size, device)
    if kind == "blocks":
        return block_mask(batch, height, width, ratio, size, generator, device)
    if kind == "regions":
        return region_mask(batch, height, width, ratio, size, generator, device)
    raise ValueError(f"mask must be one of {MASKS}, got {kind!r}")


def context_loss(recon: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, overlap: int = 0,
                 overlap_weight: float = 10.0) -> torch.Tensor:
    """Squared error (mean over channels) summed over the hole and, weighted by ``overlap_weight``, over the ring
    of ``overlap`` pixels around it, divided by the number of pixels in both; in at least float32.

    Args:
        recon, target: (B, C, H, W).
        mask: (B, 1, H, W), 1 on the hole.
    """
    err = (widen(recon) - widen(target)).pow(2).mean(1, keepdim=True)
    mask = mask.to(err.dtype)
    region = F.max_pool2d(mask, 2 * overlap + 1, stride=1, padding=overlap) if overlap > 0 else mask
    weight = mask + overlap_weight * (region - mask)
    return (err * weight).sum() / region.sum().clamp_min(1.0)


class Discriminator(nn.Module):
    """A DCGAN-style discriminator: stride-2 4x4 convs with LeakyReLU(0.2) down to 4x4, then one logit."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128), in_chans: int = 3, image_size: int = 32):
        super().__init__()
        layers, c = [], in_chans
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c, w, 4, 2, 1, bias=i == 0), *([] if i == 0 else [group_norm(w)]), nn.LeakyReLU(0.2)]
            c = w
        layers.append(nn.Conv2d(c, 1, image_size // 2 ** len(widths)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1).mean(1)


class ContextEncoderModel(nn.Module):
    """Encoder, channel-wise fully connected bottleneck, decoder (Pathak et al. 2016); optional discriminator.

    The channel-wise fully connected layer (one h*w x h*w map per channel, then a 1x1 conv) lets every position
    of the code see the whole context at a cost of C*(h*w)^2 weights; it starts as the identity.
    """

    def __init__(self, encoder: ConvEncoder, decoder: ConvDecoder, discriminator: nn.Module | None = None,
                 image_size: int = 32):
        super().__init__()
        self.encoder, self.decoder, self.discriminator = encoder, decoder, discriminator
        c, hw = encoder.feature_dim, (image_size // encoder.reduction) ** 2
        self.channel_fc = nn.Parameter(torch.eye(hw).repeat(c, 1, 1))
        self.mix = nn.Sequential(nn.Conv2d(c, c, 1), nn.ReLU(inplace=True))

    def forward(self, pixel_values: torch.Tensor, mask: torch.Tensor, adversarial: bool | None = None) -> dict:
        """{"recon": (B, C, H, W)}; with the discriminator also "d_real", "d_fake" (prediction detached) and
        "d_fake_gen" (discriminator parameters detached), each (B,) logits."""
        context = pixel_values * (1 - mask)
        z = self.encoder.forward_map(context)
        b, c, h, w = z.shape
        z = torch.einsum("bcp,cpq->bcq", z.flatten(2), self.channel_fc.to(z.dtype)).view(b, c, h, w)
        out = {"recon": self.decoder(self.mix(z))}
        if self.discriminator is not None and adversarial is not False:
            completed = context + out["recon"] * mask
            d = self.discriminator(torch.cat([pixel_values, completed.detach()]))
            out["d_real"], out["d_fake"] = d[:b], d[b:]
            frozen = {k: v.detach() for k, v in self.discriminator.named_parameters()}
            out["d_fake_gen"] = torch.func.functional_call(self.discriminator, frozen, (completed,))
        return out


def context_encoder_model(encoder: str = "conv-small", adversarial: bool = False, image_size: int = 32,
                          in_chans: int = 3) -> ContextEncoderModel:
    """A :class:`ContextEncoderModel` around the named conv encoder, with a discriminator if ``adversarial``."""
    enc = create_encoder(encoder, in_chans=in_chans)
    disc = Discriminator(in_chans=in_chans, image_size=image_size) if adversarial else None
    return ContextEncoderModel(enc, ConvDecoder(enc.widths, in_chans), disc, image_size)


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    logits = widen(logits)
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


@register("objective", "context-encoder")
class ContextEncoder:
    """Context encoder inpainting loss (Pathak et al., CVPR 2016) for a :class:`ContextEncoderModel`.

    Returns ``loss`` (the sum the optimizer follows), ``output`` and, detached, the parts ``reconstruction``,
    ``adversarial`` and ``discriminator`` (the last two only when ``adv_weight`` > 0).

    Args:
        mask: ``center``, ``blocks`` or ``regions``.
        size: center: the square's side (H/2); blocks: each block's side (H/4); regions: the noise cell (H/8).
        ratio: blocks and regions: the fraction of the image removed.
        overlap: a ring of this many visible pixels around the hole is also scored ...
        overlap_weight: ... with this weight (the paper's code: 10).
        adv_weight: the adversarial term's weight (0: none; the paper: 0.001).
        generator: draws the random masks (the global RNG if None). Code, not config.
    """

    default_encoder = "conv-small"  # what `gentune pretrain --objective context-encoder` trains without --model

    def __init__(self, mask: str = "center", size: int | None = None, ratio: float = 0.25, overlap: int = 0,
                 overlap_weight: float = 10.0, adv_weight: float = 0.0, *, generator: torch.Generator | None = None):
        if mask not in MASKS:
            raise ValueError(f"context-encoder: mask must be one of {MASKS}, got {mask!r}")
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"context-encoder: ratio must be in (0, 1), got {ratio}")
        if size is not None and size < 1:
            raise ValueError(f"context-encoder: size must be positive, got {size}")
        if overlap < 0 or overlap_weight < 0 or adv_weight < 0:
            raise ValueError("context-encoder: overlap, overlap_weight and adv_weight must be >= 0")
        self.mask, self.size, self.ratio, self.overlap = mask, size, ratio, overlap
        self.overlap_weight, self.adv_weight, self.generator = overlap_weight, adv_weight, generator

    def build(self, encoder: ConvEncoder, image_size: int = 32) -> ContextEncoderModel:
        """The model this objective trains: ``encoder`` with a mirrored decoder, and a discriminator when the
        adversarial term is on."""
        if not isinstance(encoder, ConvEncoder):
            raise GentuneError(f"context-encoder needs a conv encoder (conv-*), got {type(encoder).__name__}")
        if self.size is not None and self.size >= image_size:
            raise GentuneError(f"context-encoder: size {self.size} must be smaller than the images ({image_size})")
        disc = Discriminator(in_chans=encoder.in_chans, image_size=image_size) if self.adv_weight > 0 else None
        return ContextEncoderModel(encoder, ConvDecoder(encoder.widths, encoder.in_chans), disc, image_size)

    def flops(self, encoder: ConvEncoder) -> None:
        """Not counted for the conv encoder-decoder (the summary shows none)."""
        return None

    @torch.no_grad()
    def reconstruct(self, model, pixel_values: torch.Tensor, generator: torch.Generator | None = None):
        """(masked input, reconstruction): the hole is 0 in the first and filled with the prediction in the
        second."""
        b, _, h, w = pixel_values.shape
        mask = make_mask(self.mask, b, h, w, self.size, self.ratio, generator, pixel_values.device)
        mask = mask.to(pixel_values.dtype)
        recon = model(pixel_values, mask, adversarial=False)["recon"].to(pixel_values.dtype)
        context = pixel_values * (1 - mask)
        return context, context + recon * mask

    def __call__(self, model, batch: dict) -> dict:
        x = batch["pixel_values"]
        b, _, h, w = x.shape
        mask = make_mask(self.mask, b, h, w, self.size, self.ratio, self.generator, x.device).to(x.dtype)
        out = model(x, mask, adversarial=self.adv_weight > 0)
        rec = context_loss(out["recon"], x, mask, self.overlap, self.overlap_weight)
        result = {"loss": rec, "output": {**out, "mask": mask}, "reconstruction": rec.detach()}
        if self.adv_weight > 0:
            if "d_fake_gen" not in out:
                raise GentuneError("context-encoder: adv_weight > 0 needs a model with a discriminator "
                                 "(context_encoder_model(..., adversarial=True))")
            adv = _bce(out["d_fake_gen"], 1.0)
            disc = _bce(out["d_real"], 1.0) + _bce(out["d_fake"], 0.0)
            result.update(loss=rec + self.adv_weight * adv + disc, adversarial=adv.detach(),
                          discriminator=disc.detach())
        return result


ContextEncoderConfig = ContextEncoder.Config
