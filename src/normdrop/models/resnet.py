"""He et al.'s CIFAR ResNets of depth 6n+2: ResNet-20 (the paper's) and the deeper members of the
family (the depth study)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from normdrop.models.norms import block, dropout_layer, he_init_, norm_layer


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
    def __init__(self, cin, cout, stride, norm, dropout_rate):
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)
        self.norm1 = norm_layer(norm, cout, spatial=True) or nn.Identity()
        self.drop = dropout_layer(dropout_rate) or nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=bias)
        self.norm2 = norm_layer(norm, cout, spatial=True) or nn.Identity()
        self.shortcut = PadShortcut(cout - cin) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(self.drop(out)))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """He et al. (2016) CIFAR ResNet of depth 6n+2: a 3x3 conv, 3 stages x n basic blocks, a
    linear layer.

    Stage widths (w, 2w, 4w), strides (1, 2, 2), option-A shortcuts. ResNet-20 (n = 3) with
    BatchNorm on CIFAR-10 has 269,722 parameters at width 16 (the original) and 1,073,962 at
    width 32 (the paper's 1.1M); at width 32, ResNet-32/44/56 have 1,849,898 / 2,625,834 /
    3,401,770.
    """

    def __init__(
        self,
        in_shape,
        num_classes,
        width=32,
        norm="none",
        dropout_rate=0.0,
        init="stable",
        depth=20,
    ):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"ResNet depth must be 6n+2 with n >= 1 (20, 32, 44, 56), got {depth}")
        bias = norm == "none"
        self.stem = nn.Sequential(
            *block(
                nn.Conv2d(in_shape[0], width, 3, padding=1, bias=bias),
                norm_layer(norm, width, spatial=True),
                nn.ReLU(inplace=True),
            )
        )
        blocks, cin = [], width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range((depth - 2) // 6):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(cin, cout, stride, norm, dropout_rate))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, num_classes)
        if init == "he":
            he_init_(self)
            return
        # "stable": He init for the convs (right where a norm follows each one); the head keeps
        # nn.Linear's default init (He's would give logits of SD ~3-5 with a norm). Without a
        # norm, each residual branch ends in a zero conv, so every block starts as the identity
        # and the activations' variance does not double at each of the 3n blocks.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
        if norm == "none":
            for basic in self.blocks:
                nn.init.zeros_(basic.conv2.weight)
                nn.init.zeros_(basic.conv2.bias)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet20(in_shape, num_classes, width=32, norm="none", dropout_rate=0.0, init="stable"):
    """ResNet-20 (3 basic blocks per stage): the paper's model."""
    return ResNet(in_shape, num_classes, width, norm, dropout_rate, init, depth=20)


def resnet32(in_shape, num_classes, width=32, norm="none", dropout_rate=0.0, init="stable"):
    """ResNet-32 (5 basic blocks per stage), for the depth study."""
    return ResNet(in_shape, num_classes, width, norm, dropout_rate, init, depth=32)


def resnet44(in_shape, num_classes, width=32, norm="none", dropout_rate=0.0, init="stable"):
    """ResNet-44 (7 basic blocks per stage), for the depth study."""
    return ResNet(in_shape, num_classes, width, norm, dropout_rate, init, depth=44)


def resnet56(in_shape, num_classes, width=32, norm="none", dropout_rate=0.0, init="stable"):
    """ResNet-56 (9 basic blocks per stage), for the depth study."""
    return ResNet(in_shape, num_classes, width, norm, dropout_rate, init, depth=56)
