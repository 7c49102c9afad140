"""The three architectures of the study (Table 1 of the paper) and the two of its future work (a
vision transformer, an LSTM), with a norm and a dropout switch.

Every constructor takes the same arguments, so that a factory can build any of them from a run's
settings: ``(in_shape, num_classes, width, norm, dropout, init)``, where ``in_shape`` is
``(C, H, W)``, ``norm`` is one of ``MODEL_NORMS[name]``, ``dropout`` is the rate (0 turns dropout
off) and ``init`` one of ``INITS``.

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
without a norm it makes the ResNets' logits explode, for whoever wants to see that. The ViT and
the LSTM are described in their classes (docs/protocol.md, "Transformers and recurrent networks").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# The names (models, norms per model, inits) and the input checks are facts of the catalog.
from normdrop.catalog import INITS, MODEL_NORMS, NORMS, PATCH, check_input


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


# --------------------------------------------------------------------------------------------
# The paper's future work: a transformer and a recurrent network, with the same constructor.


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


class Attention(nn.Module):
    """Multi-head self-attention; dropout on the attention weights at `dropout`."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        n, t, d = x.shape
        # (N, T, 3D) -> 3 x (N, heads, T, D / heads)
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + drop(attn(norm(x))), then x + drop(mlp(norm(x)))."""

    def __init__(self, dim, heads, mlp_ratio, norm, dropout):
        super().__init__()
        self.norm1 = token_norm(norm, dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = token_norm(norm, dim)
        hidden = mlp_ratio * dim
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop = _dropout(dropout) or nn.Identity()

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

    def __init__(self, in_shape, num_classes, width=128, norm="layer", dropout=0.0,
                 init="stable", depth=6, heads=4, mlp_ratio=3):  # fmt: skip
        super().__init__()
        channels, height, wide = in_shape
        tokens = (height // PATCH) * (wide // PATCH)
        # A PATCHxPATCH conv with stride PATCH is the linear embedding of each flattened patch.
        self.embed = nn.Conv2d(channels, width, PATCH, stride=PATCH)
        self.pos = nn.Parameter(torch.zeros(1, tokens, width))
        self.blocks = nn.Sequential(
            *[TransformerBlock(width, heads, mlp_ratio, norm, dropout) for _ in range(depth)]
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
            for block in self.blocks:
                for last in (block.attn.proj, block.mlp[-1]):
                    nn.init.zeros_(last.weight)
                    nn.init.zeros_(last.bias)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2) + self.pos  # (N, T, D)
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=1))


class StepBatchNorm(nn.Module):
    """Recurrent BatchNorm (Cooijmans et al. 2016): batch statistics per time step, running
    averages kept per step for evaluation, one gain (init `gain`, 0.1 in the paper, so that
    the gates do not saturate) and optionally one shift shared over the steps. Hand-written:
    nn.BatchNorm1d keeps one set of running statistics."""

    def __init__(self, features: int, steps: int, gain: float, shift: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.full((features,), gain))
        self.bias = nn.Parameter(torch.zeros(features)) if shift else None
        self.register_buffer("running_mean", torch.zeros(steps, features))
        self.register_buffer("running_var", torch.ones(steps, features))

    def forward(self, x, step: int | None = None):
        # x: (N, F) at time `step`, or (N, T, F) for all steps at once.
        if step is None:
            mean, var = self.running_mean.view(-1), self.running_var.view(-1)
            flat = x.reshape(len(x), -1)
            out = F.batch_norm(flat, mean, var, None, None, self.training, 0.1, 1e-5)
            out = out.view_as(x) * self.weight
        else:
            out = F.batch_norm(x, self.running_mean[step], self.running_var[step],
                               self.weight, None, self.training, 0.1, 1e-5)  # fmt: skip
        return out + self.bias if self.bias is not None else out


def _lstm_norm(norm: str, features: int, steps: int, shift: bool) -> nn.Module:
    if norm == "batch":
        return StepBatchNorm(features, steps, gain=0.1, shift=shift)
    if norm == "layer":
        return nn.LayerNorm(features, bias=shift)
    return nn.Identity()  # "none": the plain LSTM (tests compare it with nn.LSTM)


class NormLSTMLayer(nn.Module):
    """One LSTM layer with a norm inside the cell, which nn.LSTM cannot host, hence by hand:
        gates = N_x(W_x x_t) + N_h(W_h h_{t-1}) + b     (4H: input, forget, cell, output)
        c_t = sigmoid(f) c_{t-1} + sigmoid(i) tanh(g),   h_t = sigmoid(o) tanh(N_c(c_t))
    N_x and N_h have a gain and no shift (b is the shift). Layer norm (Ba et al. 2016) normalizes
    the 4H gate vector; batch norm (Cooijmans et al. 2016) each feature per time step. Init as
    nn.LSTM's, U(-1/sqrt(H), 1/sqrt(H)), so that with norm "none" it is nn.LSTM with b_ih+b_hh."""

    def __init__(self, inputs: int, hidden: int, steps: int, norm: str):
        super().__init__()
        self.hidden = hidden
        self.w_x = nn.Linear(inputs, 4 * hidden, bias=False)
        self.w_h = nn.Linear(hidden, 4 * hidden, bias=False)
        self.bias = nn.Parameter(torch.empty(4 * hidden))
        self.norm_x = _lstm_norm(norm, 4 * hidden, steps, shift=False)
        self.norm_h = _lstm_norm(norm, 4 * hidden, steps, shift=False)
        self.norm_c = _lstm_norm(norm, hidden, steps, shift=True)
        self.batch_norm = norm == "batch"
        bound = 1 / math.sqrt(hidden)
        for p in (self.w_x.weight, self.w_h.weight, self.bias):
            nn.init.uniform_(p, -bound, bound)

    def _step_norm(self, norm, x, t):
        return norm(x, t) if self.batch_norm else norm(x)

    def forward(self, x):
        # x: (N, T, inputs) -> (N, T, H). The input projection of all steps in one matmul.
        gates_x = self.norm_x(self.w_x(x)) + self.bias  # (N, T, 4H)
        h = c = x.new_zeros(len(x), self.hidden)
        out = []
        for t in range(x.shape[1]):
            gates = gates_x[:, t] + self._step_norm(self.norm_h, self.w_h(h), t)
            i, f, g, o = gates.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(self._step_norm(self.norm_c, c, t))
            out.append(h)
        return torch.stack(out, dim=1)


class LSTMClassifier(nn.Module):
    """2-layer LSTM reading an image row by row (MNIST: 28 steps of 28 values; CIFAR: 32 steps
    of 3 x 32 = 96), dropout between the layers and before the linear head on the last state.

    At width (hidden units) 256 without a norm it has 891,402 parameters on CIFAR-10 and
    821,770 on MNIST. norm "none" is nn.LSTM (cuDNN on a GPU); "layer" and "batch" are
    `NormLSTMLayer`s, with one bias instead of nn.LSTM's two (-2 x 1,024) plus their gains and
    the cell norm's shift (+2 x 2,560): 894,474 on CIFAR-10, 824,842 on MNIST.
    """

    def __init__(self, in_shape, num_classes, width=256, norm="none", dropout=0.0,
                 init="stable", layers=2):  # fmt: skip
        super().__init__()
        channels, height, wide = in_shape
        inputs = channels * wide  # one row of every channel per step
        if norm == "none":
            self.rnn = nn.LSTM(inputs, width, layers, batch_first=True, dropout=dropout)
        else:
            stack = []
            for i in range(layers):
                stack += _block(
                    _dropout(dropout) if i > 0 else None,
                    NormLSTMLayer(inputs if i == 0 else width, width, height, norm),
                )
            self.rnn = nn.Sequential(*stack)
        self.drop = _dropout(dropout) or nn.Identity()
        self.head = nn.Linear(width, num_classes)
        if init == "he":
            he_init_(self)
        # "stable": h_t lies in (-1, 1) and the head has nn.Linear's default init, so the first
        # logits are small for every norm (tests/test_models.py checks it).

    def forward(self, x):
        n, c, height, wide = x.shape
        rows = x.permute(0, 2, 1, 3).reshape(n, height, c * wide)  # (N, T = H, C x W)
        # The recurrence in fp32 for every norm, as cuDNN's nn.LSTM runs it under bf16 autocast:
        # precision not confounded with the norm (docs/protocol.md); the head stays autocast.
        with torch.autocast(x.device.type, enabled=False):
            out = self.rnn(rows.float())
        out = out[0] if isinstance(out, tuple) else out  # nn.LSTM returns (output, (h, c))
        return self.head(self.drop(out[:, -1]))


def resnet20(in_shape, num_classes, width=32, norm="none", dropout=0.0, init="stable"):
    """ResNet-20 (3 basic blocks per stage): the paper's model."""
    return ResNet(in_shape, num_classes, width, norm, dropout, init, depth=20)


def resnet32(in_shape, num_classes, width=32, norm="none", dropout=0.0, init="stable"):
    """ResNet-32 (5 basic blocks per stage), for the depth study."""
    return ResNet(in_shape, num_classes, width, norm, dropout, init, depth=32)


def resnet44(in_shape, num_classes, width=32, norm="none", dropout=0.0, init="stable"):
    """ResNet-44 (7 basic blocks per stage), for the depth study."""
    return ResNet(in_shape, num_classes, width, norm, dropout, init, depth=44)


def resnet56(in_shape, num_classes, width=32, norm="none", dropout=0.0, init="stable"):
    """ResNet-56 (9 basic blocks per stage), for the depth study."""
    return ResNet(in_shape, num_classes, width, norm, dropout, init, depth=56)


# The constructor of each of catalog.MODELS (a test checks that the names agree).
MODELS = {
    "mlp": MLP,
    "cnn": CNN,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "vit": ViT,
    "lstm": LSTMClassifier,
}


def build_model(
    name, in_shape, num_classes, width, norm="none", dropout=0.0, init="stable"
) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
    if norm not in MODEL_NORMS[name]:
        raise ValueError(
            f"norm {norm!r} is not defined for {name}; allowed: {', '.join(MODEL_NORMS[name])}"
        )
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; allowed: {', '.join(INITS)}")
    check_input(name, in_shape)
    return MODELS[name](
        tuple(in_shape), num_classes, width=width, norm=norm, dropout=dropout, init=init
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
