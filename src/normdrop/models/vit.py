"""The paper's future work, a transformer: a small Vision Transformer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from normdrop.catalog import PATCH  # ViT patch side in pixels
from normdrop.models.norms import block, dropout_layer, he_init_, token_norm


class Attention(nn.Module):
    """Multi-head self-attention; dropout on the attention weights at `dropout_rate`."""

    def __init__(self, dim: int, heads: int, dropout_rate: float):
        super().__init__()
        self.heads, self.dropout_rate = heads, dropout_rate
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        n, t, d = x.shape
        # (N, T, 3D) -> 3 x (N, heads, T, D / heads)
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        p = self.dropout_rate if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + drop(attn(norm(x))), then x + drop(mlp(norm(x))); the MLP is
    linear, GELU, dropout, linear (ViT's MlpBlock: dropout after every dense layer but qkv)."""

    def __init__(self, dim, heads, mlp_ratio, norm, dropout_rate):
        super().__init__()
        self.norm1 = token_norm(norm, dim)
        self.attn = Attention(dim, heads, dropout_rate)
        self.norm2 = token_norm(norm, dim)
        hidden = mlp_ratio * dim
        self.mlp = nn.Sequential(
            *block(nn.Linear(dim, hidden), nn.GELU(), dropout_layer(dropout_rate)),
            nn.Linear(hidden, dim),
        )
        self.drop = dropout_layer(dropout_rate) or nn.Identity()

    def forward(self, x):
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.mlp(self.norm2(x)))


class ViT(nn.Module):
    """Vision Transformer (Dosovitskiy et al. 2021) for 28x28 and 32x32 images: 4x4 patches,
    a learned position embedding, `depth` pre-norm blocks (4 heads, MLP ratio 3), mean pooling
    over the tokens, a final norm and a linear head (no class token: mean pooling works the same
    with every norm, BatchNorm over tokens included).

    At width (token dim) 128, depth 6 on CIFAR-10 it has 1,008,266 parameters with LayerNorm,
    BatchNorm or GroupNorm (Table 1's ResNet-20: 1.07M); RMSNorm has no shift (1,006,602), no
    norm none of the 13 norms (1,004,938). On MNIST (one channel, 49 tokens): 1,002,250.
    """

    def __init__(self, in_shape, num_classes, width=128, norm="layer", dropout_rate=0.0,
                 init="stable", depth=6, heads=4, mlp_ratio=3):  # fmt: skip
        super().__init__()
        channels, height, wide = in_shape
        tokens = (height // PATCH) * (wide // PATCH)
        # A PATCHxPATCH conv with stride PATCH is the linear embedding of each flattened patch.
        self.embed = nn.Conv2d(channels, width, PATCH, stride=PATCH)
        self.pos = nn.Parameter(torch.zeros(1, tokens, width))
        self.pos_drop = dropout_layer(dropout_rate) or nn.Identity()  # as ViT, after adding pos
        self.blocks = nn.Sequential(
            *[TransformerBlock(width, heads, mlp_ratio, norm, dropout_rate) for _ in range(depth)]
        )
        self.norm = token_norm(norm, width)
        self.head = nn.Linear(width, num_classes)
        nn.init.trunc_normal_(self.pos, std=0.02)  # as in ViT and timm
        if init == "he":
            he_init_(self)
            return
        # "stable": the layers keep PyTorch's default init. Without a norm nothing rescales the
        # residual stream, which grows with each of the 2 x depth branches (and the unnormalized
        # features feed the head): each branch's last linear layer starts at zero, so every
        # block starts as the identity, as the unnormalized ResNets' do (docs/protocol.md).
        if norm == "none":
            for layer in self.blocks:
                for last in (layer.attn.proj, layer.mlp[-1]):
                    nn.init.zeros_(last.weight)
                    nn.init.zeros_(last.bias)

    def forward(self, x):
        x = self.pos_drop(self.embed(x).flatten(2).transpose(1, 2) + self.pos)  # (N, T, D)
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=1))
