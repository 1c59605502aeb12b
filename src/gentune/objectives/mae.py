"""Masked autoencoder pretraining (He, Chen, Xie, Li, Dollar, Girshick, "Masked Autoencoders Are Scalable Vision
Learners", CVPR 2022).

A random subset of patches (``1 - mask_ratio`` of them) goes through the encoder; a light decoder sees the encoded
visible tokens plus a shared mask token at every removed position, and predicts the pixels of every patch. The
loss is the per-patch mean squared error on the removed patches only, against the input patches, each optionally
normalised by its own mean and variance (``norm_pix_loss``, MAE's default for its best results).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..models.vision import Block, VisionTransformer, init_transformer, patchify, sincos_pos_embed, unpatchify, \
    transformer_macs
from ..registry import register
from ..errors import GentuneError
from ..tensors import unwrap, widen


def random_masking(batch: int, num_patches: int, mask_ratio: float, generator: torch.Generator | None = None,
                   device: torch.device | str | None = None):
    """MAE's per-image random masking by sorting uniform noise.

    Args:
        batch, num_patches: B and N.
        mask_ratio: the fraction of patches removed; exactly ``round(N * (1 - mask_ratio))`` are kept per image.
        generator: draws the noise (on its own device; the results are moved to ``device``).

    Returns:
        ids_keep (B, N_keep): the kept patch indices; ids_restore (B, N): the inverse of the shuffle (the kept
        patches followed by the removed ones, gathered with it, are back in patch order); mask (B, N): 1 on removed
        patches, 0 on kept ones.
    """
    keep = int(round(num_patches * (1 - mask_ratio)))
    gen_device = generator.device if generator is not None else device
    noise = torch.rand(batch, num_patches, generator=generator, device=gen_device).to(device)
    ids_shuffle = noise.argsort(1)
    ids_restore = ids_shuffle.argsort(1)
    mask = torch.ones(batch, num_patches, device=noise.device)
    mask[:, :keep] = 0
    return ids_shuffle[:, :keep], ids_restore, torch.gather(mask, 1, ids_restore)


def mae_loss(pred: torch.Tensor, target_patches: torch.Tensor, mask: torch.Tensor, norm_pix_loss: bool) -> torch.Tensor:
    """Mean over removed patches of the per-patch mean squared error, in at least float32.

    Args:
        pred, target_patches: (B, N, p*p*C).
        mask: (B, N), 1 on removed patches.
        norm_pix_loss: normalise each target patch by its mean and (unbiased) variance, eps 1e-6, as MAE does.
    """
    pred, target = widen(pred), widen(target_patches)
    if norm_pix_loss:
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = (pred - target).pow(2).mean(-1)
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum()


class MaskedAutoencoder(nn.Module):
    """A ViT encoder with MAE's decoder (He et al. 2022): linear embed, mask token, fixed positions, blocks, pixels.

    Args:
        encoder: a :class:`~gentune.models.vision.VisionTransformer`; it is what pretraining keeps.
        decoder_dim, decoder_depth, decoder_heads: the decoder's width, blocks and heads (MLP ratio 4).
    """

    def __init__(self, encoder: VisionTransformer, decoder_dim: int = 128, decoder_depth: int = 2,
                 decoder_heads: int = 4):
        super().__init__()
        self.encoder = encoder
        self.decoder_dim, self.decoder_depth = decoder_dim, decoder_depth
        n, p = encoder.num_patches, encoder.patch_size
        self.decoder_embed = nn.Linear(encoder.dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed(decoder_dim, int(round(n ** 0.5)))[None],
                             persistent=False)
        self.decoder_blocks = nn.ModuleList(Block(decoder_dim, decoder_heads) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, p * p * encoder.in_chans)
        for m in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            init_transformer(m)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """(B, 1 + N_keep, dim) encoded tokens -> (B, N, p*p*C) predicted pixels of every patch."""
        x = self.decoder_embed(latent)
        b, t, d = x.shape
        masks = self.mask_token.to(x.dtype).expand(b, ids_restore.shape[1] + 1 - t, -1)
        patches = torch.cat([x[:, 1:], masks], 1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))
        x = torch.cat([x[:, :1], patches], 1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x[:, 1:]))  # the CLS token predicts nothing

    def forward(self, pixel_values: torch.Tensor, mask_ratio: float = 0.75,
                generator: torch.Generator | None = None) -> dict:
        """{"pred": (B, N, p*p*C), "mask": (B, N) 1 = removed, "ids_restore": (B, N)}."""
        ids_keep, ids_restore, mask = random_masking(pixel_values.shape[0], self.encoder.num_patches, mask_ratio,
                                                     generator, pixel_values.device)
        latent = self.encoder.forward_encoder(pixel_values, ids_keep)
        return {"pred": self.forward_decoder(latent, ids_restore), "mask": mask, "ids_restore": ids_restore}


def mae_flops(encoder: VisionTransformer, decoder_dim: int = 128, decoder_depth: int = 2,
              mask_ratio: float = 0.75) -> int:
    """Analytic forward FLOPs (2 x multiply-adds) per image of MAE's encoder (visible patches) plus decoder (all
    patches). A training step costs about 3x this (backward ~ 2x forward)."""
    n, p = encoder.num_patches, encoder.patch_size
    keep = int(round(n * (1 - mask_ratio)))
    decoder = ((1 + keep) * encoder.dim * decoder_dim + transformer_macs(1 + n, decoder_dim, 4.0, decoder_depth)
               + n * decoder_dim * p * p * encoder.in_chans)
    return encoder.flops(keep) + 2 * decoder


@register("objective", "mae")
class MAE:
    """Masked autoencoder pretraining loss (He et al., CVPR 2022) for a :class:`MaskedAutoencoder`.

    Args:
        mask_ratio: the fraction of patches removed.
        norm_pix_loss: normalise each target patch by its own mean and variance (MAE's default).
        decoder_dim, decoder_depth, decoder_heads: the decoder :meth:`build` makes (pretraining keeps only the
            encoder).
        generator: draws the masks (the global RNG if None). Code, not config.
    """

    default_encoder = "vit-tiny-p4"  # what `gentune pretrain --objective mae` trains without --model

    def __init__(self, mask_ratio: float = 0.75, norm_pix_loss: bool = True, decoder_dim: int = 128,
                 decoder_depth: int = 2, decoder_heads: int = 4, *, generator: torch.Generator | None = None):
        if not 0.0 < mask_ratio < 1.0:  # 0 removes nothing: no patch to score, a 0/0 loss
            raise ValueError(f"mae: mask_ratio must be in (0, 1), got {mask_ratio}")
        if decoder_dim % 4 or decoder_dim % decoder_heads:
            raise ValueError(f"mae: decoder_dim ({decoder_dim}) must be a multiple of 4 (sin-cos positions) and of "
                             f"decoder_heads ({decoder_heads})")
        if decoder_depth < 1:
            raise ValueError(f"mae: decoder_depth must be at least 1, got {decoder_depth}")
        self.mask_ratio, self.norm_pix_loss, self.generator = mask_ratio, norm_pix_loss, generator
        self.decoder = {"decoder_dim": decoder_dim, "decoder_depth": decoder_depth, "decoder_heads": decoder_heads}

    def build(self, encoder: VisionTransformer, image_size: int | None = None) -> MaskedAutoencoder:
        """The model this objective trains: ``encoder`` with a fresh MAE decoder (a ViT is built for one image
        size, so ``image_size`` is not needed)."""
        if not isinstance(encoder, VisionTransformer):
            raise GentuneError(f"mae needs a vision transformer encoder (vit-*), got {type(encoder).__name__}")
        return MaskedAutoencoder(encoder, **self.decoder)

    def flops(self, encoder: VisionTransformer) -> int:
        """Analytic forward FLOPs per image (:func:`mae_flops`)."""
        return mae_flops(encoder, self.decoder["decoder_dim"], self.decoder["decoder_depth"], self.mask_ratio)

    @torch.no_grad()
    def reconstruct(self, model, pixel_values: torch.Tensor, generator: torch.Generator | None = None):
        """(masked input, reconstruction) images like ``pixel_values``: removed patches are 0 in the first; the
        second keeps the visible patches and shows the predicted ones (de-normalised per patch when the loss
        normalises its targets)."""
        model = unwrap(model)
        p = model.encoder.patch_size
        out = model(pixel_values, mask_ratio=self.mask_ratio, generator=generator)
        target = patchify(pixel_values, p)
        pred = out["pred"].to(target.dtype)
        if self.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            pred = pred * (var + 1e-6).sqrt() + mean
        mask = out["mask"].unsqueeze(-1).to(target.dtype)
        chans = pixel_values.shape[1]
        return (unpatchify(target * (1 - mask), p, chans),
                unpatchify(target * (1 - mask) + pred * mask, p, chans))

    def __call__(self, model, batch: dict) -> dict:
        x = batch["pixel_values"]
        out = model(x, mask_ratio=self.mask_ratio, generator=self.generator)
        target = patchify(x, unwrap(model).encoder.patch_size)
        return {"loss": mae_loss(out["pred"], target, out["mask"], self.norm_pix_loss), "output": out}


MAEConfig = MAE.Config
