"""The three architectures of the study (Table 1 of the paper), with a norm and a dropout switch.

Every constructor takes the same arguments, so that a factory can build any of them from a run's
settings: ``(in_shape, num_classes, width, norm, dropout)``, where ``in_shape`` is ``(C, H, W)``,
``norm`` is one of ``NORMS`` and ``dropout`` is the rate (0 turns dropout off).

Placement (PROTOCOL.md): a norm layer follows each conv / hidden linear layer and precedes its
ReLU; without a norm that layer keeps its bias (with one, the norm's shift makes the bias
redundant). Dropout follows each hidden activation of the MLP, each pooling block and the hidden
linear layer of the CNN, and sits between the two convolutions of each ResNet basic block (as in
wide residual networks).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("none", "batch", "group", "layer")


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
    raise ValueError(f"unknown norm {norm!r}; allowed: {', '.join(NORMS)}")


def _block(*layers: nn.Module | None) -> list[nn.Module]:
    return [layer for layer in layers if layer is not None]


def _dropout(rate: float) -> nn.Module | None:
    return nn.Dropout(rate) if rate > 0 else None


class MLP(nn.Module):
    """3 linear layers: flatten -> width -> width -> classes, ReLU between.

    At width 768 on MNIST (784 inputs, 10 classes) it has 1,201,162 parameters without a norm
    (the paper's 1.2M); BatchNorm adds 2 x 2 x 768 and removes 2 x 768 biases: 1,202,698.
    """

    def __init__(self, in_shape, num_classes, width=768, norm="none", dropout=0.0):
        super().__init__()
        bias = norm == "none"
        in_features = math.prod(in_shape)
        self.net = nn.Sequential(
            nn.Flatten(),
            *_block(
                nn.Linear(in_features, width, bias=bias),
                norm_layer(norm, width, spatial=False),
                nn.ReLU(inplace=True),
                _dropout(dropout),
            ),
            *_block(
                nn.Linear(width, width, bias=bias),
                norm_layer(norm, width, spatial=False),
                nn.ReLU(inplace=True),
                _dropout(dropout),
            ),
            nn.Linear(width, num_classes),
        )

    def forward(self, x):
        return self.net(x)


class CNN(nn.Module):
    """7 weight layers: 5 conv 3x3 (width, 2w, 4w, 4w, 8w) in 4 pooling blocks + 2 linear.

    Blocks: [conv w] pool, [conv 2w] pool, [conv 4w, conv 4w] pool, [conv 8w] pool; then
    flatten -> linear 3w -> linear classes. Each 2x2 max-pool halves H and W (32 -> 2 on CIFAR,
    28 -> 1 on MNIST). At width 64 on CIFAR-10 it has 2,536,394 parameters without a norm (the
    paper's 2.5M).
    """

    def __init__(self, in_shape, num_classes, width=64, norm="none", dropout=0.0):
        super().__init__()
        channels, height, wide = in_shape
        bias = norm == "none"

        def conv(cin, cout):
            return _block(
                nn.Conv2d(cin, cout, 3, padding=1, bias=bias),
                norm_layer(norm, cout, spatial=True),
                nn.ReLU(inplace=True),
            )

        def pool():
            return _block(nn.MaxPool2d(2), _dropout(dropout))

        w = width
        self.features = nn.Sequential(
            *conv(channels, w),
            *pool(),
            *conv(w, 2 * w),
            *pool(),
            *conv(2 * w, 4 * w),
            *conv(4 * w, 4 * w),
            *pool(),
            *conv(4 * w, 8 * w),
            *pool(),
        )
        flat = 8 * w * (height // 16) * (wide // 16)
        if flat == 0:
            raise ValueError(f"CNN needs images of at least 16x16 pixels, got {in_shape}")
        hidden = 3 * w
        self.classifier = nn.Sequential(
            nn.Flatten(),
            *_block(
                nn.Linear(flat, hidden, bias=bias),
                norm_layer(norm, hidden, spatial=False),
                nn.ReLU(inplace=True),
                _dropout(dropout),
            ),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class PadShortcut(nn.Module):
    """He et al.'s option A shortcut: subsample by 2 and zero-pad the new channels (no weights)."""

    def __init__(self, extra_channels: int):
        super().__init__()
        self.extra = extra_channels

    def forward(self, x):
        # (N, C, H, W) -> (N, C + extra, H/2, W/2), the extra channels split before and after.
        half = self.extra // 2
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, half, self.extra - half))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, norm, dropout):
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)
        self.norm1 = norm_layer(norm, cout, spatial=True) or nn.Identity()
        self.drop = _dropout(dropout) or nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=bias)
        self.norm2 = norm_layer(norm, cout, spatial=True) or nn.Identity()
        self.shortcut = PadShortcut(cout - cin) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(self.drop(out)))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """He et al. (2016) CIFAR ResNet-20: a 3x3 conv, 3 stages x 3 basic blocks, a linear layer.

    Stage widths (w, 2w, 4w), strides (1, 2, 2), option-A shortcuts. With BatchNorm on CIFAR-10
    it has 269,722 parameters at width 16 (the original) and 1,073,962 at width 32 (the paper's
    1.1M).
    """

    def __init__(self, in_shape, num_classes, width=32, norm="none", dropout=0.0):
        super().__init__()
        bias = norm == "none"
        self.stem = nn.Sequential(
            *_block(
                nn.Conv2d(in_shape[0], width, 3, padding=1, bias=bias),
                norm_layer(norm, width, spatial=True),
                nn.ReLU(inplace=True),
            )
        )
        blocks, cin = [], width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(3):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(cin, cout, stride, norm, dropout))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


MODELS = {"mlp": MLP, "cnn": CNN, "resnet20": ResNet20}


def build_model(name, in_shape, num_classes, width, norm="none", dropout=0.0) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; allowed: {', '.join(NORMS)}")
    return MODELS[name](tuple(in_shape), num_classes, width=width, norm=norm, dropout=dropout)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
