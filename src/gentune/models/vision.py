"""Small vision encoders for 32x32 images: a Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16
Words", ICLR 2021) with the fixed 2D sin-cos position embedding and initialisation of MAE (He et al., "Masked
Autoencoders Are Scalable Vision Learners", CVPR 2022), and a strided convnet with its mirror decoder in the
style of the Context Encoder (Pathak et al., "Context Encoders: Feature Learning by Inpainting", CVPR 2016).

Every encoder has ``forward_features(x) -> (B, feature_dim)``, the representation h(x) a downstream head sees,
and ``num_layers`` / ``layer_id(param_name)`` for layer-wise lr decay (0 = the input side, ``num_layers`` = the
head side). :class:`ImageClassifier` puts a head on any of them. Saving and loading: :mod:`gentune.models.checkpoint`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import GentuneError
from .efficientnet import VARIANTS as EFFICIENTNET_VARIANTS
from .efficientnet import EfficientNetLite

POOLS = ("cls", "mean")


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) images -> (B, N, p*p*C) patches, row-major over the grid, (row, col, channel) inside a patch
    (MAE's layout)."""
    b, c, h, w = imgs.shape
    x = imgs.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, p: int, chans: int = 3) -> torch.Tensor:
    """Inverse of :func:`patchify` for a square grid: (B, N, p*p*C) -> (B, C, H, W)."""
    b, n, _ = patches.shape
    g = int(round(n ** 0.5))
    x = patches.reshape(b, g, g, p, p, chans)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(b, chans, g * p, g * p)


def sincos_pos_embed(dim: int, grid: int, cls_token: bool = True) -> torch.Tensor:
    """MAE's fixed 2D sin-cos embedding, (1 + grid*grid, dim) with a zero row for the CLS token.

    The first half of the channels encodes the column, the second half the row (as MAE's code does).
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a dim divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")

    def one_d(pos):
        out = pos.reshape(-1, 1) * omega
        return torch.cat([out.sin(), out.cos()], 1)

    emb = torch.cat([one_d(cols), one_d(rows)], 1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=torch.float64), emb])
    return emb.float()


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al., ECCV 2016): drop a residual branch per sample, rescale the kept ones."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(1 - p)
    return x * keep / (1 - p)


class Block(nn.Module):
    """A pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.drop_path = heads, drop_path
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, int(dim * mlp_ratio))
        self.fc2 = nn.Linear(int(dim * mlp_ratio), dim)

    def attn(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path, self.training)
        return x + drop_path(self.fc2(F.gelu(self.fc1(self.norm2(x)))), self.drop_path, self.training)


def init_transformer(module: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform linears with zero bias, unit LayerNorms, conv patch embedding as a
    linear map; CLS / mask tokens are set by their owners."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
            nn.init.zeros_(m.bias)


def transformer_macs(tokens: int, dim: int, mlp_ratio: float, depth: int) -> int:
    """Multiply-adds of ``depth`` blocks on ``tokens`` tokens: qkv + proj (4 d^2), MLP (2 d h), scores and
    weighted sum (2 t d) per token; norms, softmax and GELU are lower order and left out."""
    hidden = int(dim * mlp_ratio)
    return depth * tokens * (4 * dim * dim + 2 * dim * hidden + 2 * tokens * dim)


class VisionTransformer(nn.Module):
    """A Vision Transformer with MAE's fixed sin-cos positions (Dosovitskiy et al. 2021; He et al. 2022).

    Args:
        image_size, patch_size: a square image cut into (image_size / patch_size)^2 non-overlapping patches.
        pool: ``"cls"`` (the CLS token) or ``"mean"`` (mean of patch tokens) after the final norm.
        drop_path: the stochastic-depth rate of the last block (linearly rising from 0 over the blocks).
    """

    architecture = "vit"

    def __init__(self, image_size: int = 32, patch_size: int = 4, in_chans: int = 3, dim: int = 192,
                 depth: int = 6, heads: int = 3, mlp_ratio: float = 4.0, pool: str = "cls", drop_path: float = 0.0):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.config = dict(image_size=image_size, patch_size=patch_size, in_chans=in_chans, dim=dim, depth=depth,
                           heads=heads, mlp_ratio=mlp_ratio, pool=pool, drop_path=drop_path)
        self.patch_size, self.in_chans, self.pool, self.mlp_ratio = patch_size, in_chans, pool, mlp_ratio
        self.num_patches = (image_size // patch_size) ** 2
        self.feature_dim = self.dim = dim
        self.depth, self.num_layers = depth, depth + 1
        self.patch_embed = nn.Conv2d(in_chans, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        # fixed, so not saved: recomputed from the config on load
        self.register_buffer("pos_embed", sincos_pos_embed(dim, image_size // patch_size)[None], persistent=False)
        rates = torch.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, r) for r in rates)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        init_transformer(self)
        nn.init.normal_(self.cls_token, std=0.02)

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        return patchify(imgs, self.patch_size)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        return unpatchify(patches, self.patch_size, self.in_chans)

    def forward_encoder(self, x: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Normed tokens (B, 1 + N_keep, dim), CLS first, of the patches ``ids_keep`` (B, N_keep) (all if None).

        Patches are embedded and positioned before the selection, so the blocks see visible patches only.
        """
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed[:, 1:]
        if ids_keep is not None:
            tokens = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls.to(tokens.dtype), tokens], 1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """h(x): (B, dim), the CLS token or the mean patch token."""
        tokens = self.forward_encoder(x)
        return tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(1)

    forward = forward_features

    def layer_id(self, name: str) -> int:
        if name.startswith(("cls_token", "pos_embed", "patch_embed")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.num_layers

    def flops(self, keep: int | None = None) -> int:
        """Forward FLOPs (2 x multiply-adds) per image with ``keep`` visible patches (all if None)."""
        keep = self.num_patches if keep is None else keep
        embed = self.num_patches * self.patch_size ** 2 * self.in_chans * self.dim
        return 2 * (embed + transformer_macs(1 + keep, self.dim, self.mlp_ratio, self.depth))


def group_norm(c: int) -> nn.GroupNorm:
    # GroupNorm, not BatchNorm: no running statistics to sync across processes or to freeze for a probe
    return nn.GroupNorm(min(8, max(1, c // 4)), c)


class ConvEncoder(nn.Module):
    """A strided convnet encoder (after Pathak et al. 2016): per width, a stride-2 and a stride-1 3x3 conv, each
    with GroupNorm and ReLU; 32x32 -> 2x2 with four widths. h(x) is the global average of the last map."""

    architecture = "conv"

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256), in_chans: int = 3):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        self.config = dict(widths=list(widths), in_chans=in_chans)
        self.widths, self.in_chans = widths, in_chans
        self.feature_dim, self.num_layers, self.reduction = widths[-1], len(widths), 2 ** len(widths)
        blocks, c = [], in_chans
        for w in widths:
            blocks.append(nn.Sequential(nn.Conv2d(c, w, 3, 2, 1, bias=False), group_norm(w), nn.ReLU(inplace=True),
                                        nn.Conv2d(w, w, 3, 1, 1, bias=False), group_norm(w), nn.ReLU(inplace=True)))
            c = w
        self.blocks = nn.ModuleList(blocks)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, widths[-1], H / 2^len(widths), W / 2^len(widths))."""
        for block in self.blocks:
            x = block(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_map(x).mean((2, 3))

    forward = forward_features

    def layer_id(self, name: str) -> int:
        return int(name.split(".")[1]) if name.startswith("blocks.") else self.num_layers


class ConvDecoder(nn.Module):
    """The mirror of :class:`ConvEncoder`: stride-2 transposed convs (GroupNorm, ReLU) back to full size; the last
    one outputs ``out_chans`` unbounded values (targets are dataset-normalised pixels)."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256), out_chans: int = 3):
        super().__init__()
        rev = [int(w) for w in reversed(widths)]
        layers = []
        for cin, cout in zip(rev, rev[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), group_norm(cout), nn.ReLU(inplace=True)]
        layers.append(nn.ConvTranspose2d(rev[-1], out_chans, 4, 2, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


HEADS = ("linear", "mlp", "bn-linear")


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


VIT_SIZES = {
    "vit-micro-p4": dict(dim=96, depth=4, heads=3),
    "vit-tiny-p4": dict(dim=192, depth=6, heads=3),
    "vit-small-p4": dict(dim=256, depth=8, heads=4),
}
CONV_SIZES = {
    "conv-tiny": dict(widths=(8, 16, 16, 32)),
    "conv-small": dict(widths=(32, 64, 128, 256)),
}
ARCHITECTURES = {"vit": VisionTransformer, "conv": ConvEncoder, "efficientnet-lite": EfficientNetLite}


def list_encoders() -> list[str]:
    return sorted([*VIT_SIZES, *CONV_SIZES, *EFFICIENTNET_VARIANTS])


def create_encoder(name: str, **overrides) -> nn.Module:
    """A named encoder (``vit-tiny-p4``, ``conv-small``, ``efficientnet-lite0``, ...), freshly initialised;
    ``overrides`` change its arguments (``pool``, ``drop_path``, ``resolution``, ...)."""
    if name in VIT_SIZES:
        cls, kwargs = VisionTransformer, VIT_SIZES[name]
    elif name in CONV_SIZES:
        cls, kwargs = ConvEncoder, CONV_SIZES[name]
    elif name in EFFICIENTNET_VARIANTS:
        cls, kwargs = EfficientNetLite, {"variant": name}
    else:
        raise GentuneError(f"unknown encoder {name!r} (known: {', '.join(list_encoders())})")
    try:
        encoder = cls(**{**kwargs, **overrides})
    except (TypeError, ValueError) as e:
        raise GentuneError(f"encoder {name!r}: {e}") from None
    encoder.size_name = name
    return encoder
