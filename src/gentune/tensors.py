"""Small tensor helpers shared by objectives, regularizers and diagnostics (a neutral module: it imports nothing
of gentune)."""

from __future__ import annotations

import torch


def widen(x: torch.Tensor) -> torch.Tensor:
    """Half precision widened to float32 (tiny penalties and divergences vanish in bf16); float32/64 kept."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    return getattr(model, "module", model)


__all__ = ["unwrap", "widen"]
