"""The norm layers every family shares, and the small building blocks of their layer lists.

`norm_layer` is the normalization after a conv or hidden linear layer; `token_norm` that of a
transformer's tokens (N, T, D). The LSTM's own norms (per-step BatchNorm) live in `lstm.py`.
"""

from __future__ import annotations

import math

from torch import nn

from normdrop.catalog import NORMS


def norm_layer(norm: str, channels: int, spatial: bool) -> nn.Module | None:
    """The normalization of ``channels`` features, for (N, C, H, W) maps or (N, C) vectors."""
    if norm == "none":
        return None
    if norm == "batch":
        return nn.BatchNorm2d(channels) if spatial else nn.BatchNorm1d(channels)
    if norm == "group":
        # 32 groups as in Wu & He (2018), fewer where the channel count is not a multiple of 32.
        return nn.GroupNorm(math.gcd(32, channels), channels)
    if norm == "layer":
        # Over (C, H, W) for maps, i.e. one group; over C for vectors.
        return nn.GroupNorm(1, channels) if spatial else nn.LayerNorm(channels)
    if norm == "rms" and not spatial:
        # Zhang & Sennrich (2019): LayerNorm without the centring; vectors only (MODEL_NORMS).
        return nn.RMSNorm(channels)
    raise ValueError(f"unknown norm {norm!r}; allowed: {', '.join(NORMS)}")


def block(*layers: nn.Module | None) -> list[nn.Module]:
    """The layers that exist: a norm or dropout switched off is None and left out."""
    return [layer for layer in layers if layer is not None]


def dropout_layer(dropout_rate: float) -> nn.Module | None:
    """nn.Dropout at `dropout_rate`; None (no layer) at rate 0."""
    return nn.Dropout(dropout_rate) if dropout_rate > 0 else None


def he_init_(module: nn.Module) -> None:
    """He's normal init (gain sqrt(2), fan-in) for the weight of every conv and linear layer."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight)


class PerToken(nn.Module):
    """A norm over (rows, D) applied to tokens (N, T, D): BatchNorm's statistics then span the
    batch and the tokens (one mean per feature), GroupNorm's the groups of one token."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.norm = norm

    def forward(self, x):
        return self.norm(x.reshape(-1, x.shape[-1])).view_as(x)


def token_norm(norm: str, dim: int) -> nn.Module:
    """The norm of a transformer's D-dim tokens (N, T, D); `none` is the identity."""
    if norm in ("layer", "rms"):
        return norm_layer(norm, dim, spatial=False)  # over each token's D features
    if norm == "group":
        # 32 groups (Wu & He), halved until each holds at least 4 features: a group of one
        # feature normalizes a token to 0 (at dim 32, gcd(32, 32) = 32 groups would).
        groups = math.gcd(32, dim)
        while groups > 1 and dim // groups < 4:
            groups //= 2
        return PerToken(nn.GroupNorm(groups, dim))
    layer = norm_layer(norm, dim, spatial=False)
    return PerToken(layer) if layer is not None else nn.Identity()
