"""The paper's CNN (Table 1)."""

from __future__ import annotations

from torch import nn

from normdrop.models.norms import block, dropout_layer, he_init_, norm_layer


class CNN(nn.Module):
    """7 weight layers: 5 conv 3x3 (width, 2w, 4w, 4w, 8w) in 4 pooling blocks + 2 linear.

    Blocks: [conv w] pool, [conv 2w] pool, [conv 4w, conv 4w] pool, [conv 8w] pool; then
    flatten -> linear 3w -> linear classes. Each 2x2 max-pool halves H and W (32 -> 2 on CIFAR,
    28 -> 1 on MNIST). At width 64 on CIFAR-10 it has 2,536,394 parameters without a norm (the
    paper's 2.5M).
    """

    def __init__(
        self, in_shape, num_classes, width=64, norm="none", dropout_rate=0.0, init="stable"
    ):
        super().__init__()
        channels, height, wide = in_shape
        bias = norm == "none"

        def conv(cin, cout):
            return block(
                nn.Conv2d(cin, cout, 3, padding=1, bias=bias),
                norm_layer(norm, cout, spatial=True),
                nn.ReLU(inplace=True),
            )

        def pool():
            return block(nn.MaxPool2d(2), dropout_layer(dropout_rate))

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
            *block(
                nn.Linear(flat, hidden, bias=bias),
                norm_layer(norm, hidden, spatial=False),
                nn.ReLU(inplace=True),
                dropout_layer(dropout_rate),
            ),
            nn.Linear(hidden, num_classes),
        )
        if init == "he":
            he_init_(self)

    def forward(self, x):
        return self.classifier(self.features(x))
