"""The three architectures of the study (Table 1 of the paper), with a norm and a dropout switch.

Every constructor takes the same arguments, so that a factory can build any of them from a run's
settings: ``(in_shape, num_classes, width, norm, dropout, init)``, where ``in_shape`` is
``(C, H, W)``, ``norm`` is one of ``NORMS``, ``dropout`` is the rate (0 turns dropout off) and
``init`` one of ``INITS``.

Placement (docs/protocol.md): a norm layer follows each conv / hidden linear layer and precedes its
ReLU; without a norm that layer keeps its bias (with one, the norm's shift makes the bias
redundant). Dropout follows each hidden activation of the MLP, each pooling block and the hidden
linear layer of the CNN, and sits between the two convolutions of each ResNet basic block (as in
wide residual networks).

Initialization (docs/protocol.md, "Initialization"): every variant starts from a stable network,
i.e. its first-batch loss is close to ln(classes). ``init="stable"`` (the default) is PyTorch's
default init for the MLP and the CNN; for the ResNets, He init for the convolutions, the head with
``nn.Linear``'s default init and, without a norm, the last conv of every residual branch at zero,
so that each block starts as the identity (Fixup, Zhang et al. 2019; SkipInit, De & Smith 2020).
``init="he"`` is He's normal init for every conv and linear weight (the code before that rule):
without a norm it makes the ResNets' logits explode, for whoever wants to see that.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("none", "batch", "group", "layer")
INITS = ("stable", "he")


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


def he_init_(module: nn.Module) -> None:
    """He's normal init (gain sqrt(2), fan-in) for the weight of every conv and linear layer."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight)


class MLP(nn.Module):
    """3 linear layers: flatten -> width -> width -> classes, ReLU between.

    At width 768 on MNIST (784 inputs, 10 classes) it has 1,201,162 parameters without a norm
    (the paper's 1.2M); BatchNorm adds 2 x 2 x 768 and removes 2 x 768 biases: 1,202,698.
    """

    def __init__(self, in_shape, num_classes, width=768, norm="none", dropout=0.0, init="stable"):
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
        if init == "he":
            he_init_(self)

    def forward(self, x):
        return self.net(x)


class CNN(nn.Module):
    """7 weight layers: 5 conv 3x3 (width, 2w, 4w, 4w, 8w) in 4 pooling blocks + 2 linear.

    Blocks: [conv w] pool, [conv 2w] pool, [conv 4w, conv 4w] pool, [conv 8w] pool; then
    flatten -> linear 3w -> linear classes. Each 2x2 max-pool halves H and W (32 -> 2 on CIFAR,
    28 -> 1 on MNIST). At width 64 on CIFAR-10 it has 2,536,394 parameters without a norm (the
    paper's 2.5M).
    """

    def __init__(self, in_shape, num_classes, width=64, norm="none", dropout=0.0, init="stable"):
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
        if init == "he":
            he_init_(self)

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


class ResNet(nn.Module):
    """He et al. (2016) CIFAR ResNet of depth 6n+2: a 3x3 conv, 3 stages x n basic blocks, a
    linear layer.

    Stage widths (w, 2w, 4w), strides (1, 2, 2), option-A shortcuts. ResNet-20 (n = 3) with
    BatchNorm on CIFAR-10 has 269,722 parameters at width 16 (the original) and 1,073,962 at
    width 32 (the paper's 1.1M); at width 32, ResNet-32/44/56 have 1,849,898 / 2,625,834 /
    3,401,770.
    """

    def __init__(
        self, in_shape, num_classes, width=32, norm="none", dropout=0.0, init="stable", depth=20
    ):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"ResNet depth must be 6n+2 with n >= 1 (20, 32, 44, 56), got {depth}")
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
            for i in range((depth - 2) // 6):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(cin, cout, stride, norm, dropout))
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
            for block in self.blocks:
                nn.init.zeros_(block.conv2.weight)
                nn.init.zeros_(block.conv2.bias)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _resnet(depth: int):
    def factory(in_shape, num_classes, width=32, norm="none", dropout=0.0, init="stable"):
        return ResNet(in_shape, num_classes, width, norm, dropout, init, depth=depth)

    factory.__name__ = factory.__qualname__ = f"resnet{depth}"
    factory.__doc__ = f"ResNet-{depth} ({(depth - 2) // 6} basic blocks per stage)."
    return factory


# resnet20 is the paper's model; the deeper members of the 6n+2 family are for the depth study.
MODELS = {
    "mlp": MLP,
    "cnn": CNN,
    "resnet20": _resnet(20),
    "resnet32": _resnet(32),
    "resnet44": _resnet(44),
    "resnet56": _resnet(56),
}


def build_model(
    name, in_shape, num_classes, width, norm="none", dropout=0.0, init="stable"
) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; allowed: {', '.join(NORMS)}")
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; allowed: {', '.join(INITS)}")
    return MODELS[name](
        tuple(in_shape), num_classes, width=width, norm=norm, dropout=dropout, init=init
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
