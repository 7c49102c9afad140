"""The paper's MLP (Table 1)."""

from __future__ import annotations

import math

from torch import nn

from normdrop.models.norms import block, dropout_layer, he_init_, norm_layer


class MLP(nn.Module):
    """3 linear layers: flatten -> width -> width -> classes, ReLU between.

    At width 768 on MNIST (784 inputs, 10 classes) it has 1,201,162 parameters without a norm
    (the paper's 1.2M); BatchNorm adds 2 x 2 x 768 and removes 2 x 768 biases: 1,202,698.
    """

    def __init__(
        self, in_shape, num_classes, width=768, norm="none", dropout_rate=0.0, init="stable"
    ):
        super().__init__()
        bias = norm == "none"
        in_features = math.prod(in_shape)
        self.net = nn.Sequential(
            nn.Flatten(),
            *block(
                nn.Linear(in_features, width, bias=bias),
                norm_layer(norm, width, spatial=False),
                nn.ReLU(inplace=True),
                dropout_layer(dropout_rate),
            ),
            *block(
                nn.Linear(width, width, bias=bias),
                norm_layer(norm, width, spatial=False),
                nn.ReLU(inplace=True),
                dropout_layer(dropout_rate),
            ),
            nn.Linear(width, num_classes),
        )
        if init == "he":
            he_init_(self)

    def forward(self, x):
        return self.net(x)
