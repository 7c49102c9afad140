"""The paper's future work, a recurrent network: an LSTM reading images row by row, with the
norms of its literature inside the cell."""

from __future__ import annotations

import math

import torch
from torch import nn

from normdrop.models.norms import block, dropout_layer, he_init_


class StepBatchNorm(nn.Module):
    """Recurrent BatchNorm (Cooijmans et al. 2016): batch statistics per time step, running
    averages kept per step for evaluation, one gain (init `gain`, 0.1 in the paper, so that
    the gates do not saturate) and optionally one shift shared over the steps. Hand-written:
    nn.BatchNorm1d keeps one set of running statistics.

    A feature that is constant across the batch at a step (blank first rows: W_x x and W_h h
    are then the same for every image) has batch variance 0 and is normalized to 0 in training.
    Evaluation does the same (docs/protocol.md, "BN-LSTM evaluation"): where the running
    variance is below `CONSTANT_VAR` the feature counts as constant and is normalized to 0,
    instead of dividing the running mean's lag behind the drifting constant by sqrt(eps). For
    that the running averages start from the first batch's statistics (momentum max(0.1,
    1 / k) at the k-th update, as a cumulative average until the EMA takes over), not from 1."""

    EPS = 1e-5  # nn.BatchNorm1d's
    CONSTANT_VAR = 1e-7  # eps / 100: such a feature is at most 0.1 x z in training
    MOMENTUM = 0.1

    def __init__(self, features: int, steps: int, gain: float, shift: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.full((features,), gain))
        self.bias = nn.Parameter(torch.zeros(features)) if shift else None
        self.register_buffer("running_mean", torch.zeros(steps, features))
        self.register_buffer("running_var", torch.ones(steps, features))
        self.register_buffer("updates", torch.zeros(steps))  # per step: batches seen

    def forward(self, x, step: int | None = None):
        # x: (N, F) at time `step`, or (N, T, F) for all steps at once (statistics per step).
        steps = slice(None) if step is None else step
        mean, var = self.running_mean[steps], self.running_var[steps]
        if self.training:
            batch_var, batch_mean = torch.var_mean(x, 0, unbiased=False)
            with torch.no_grad():
                n = self.updates[steps]
                momentum = torch.clamp(1 / (n + 1), min=self.MOMENTUM).unsqueeze(-1)
                unbiased = batch_var * (len(x) / max(len(x) - 1, 1))
                mean.lerp_(batch_mean, momentum)  # views of the buffers: updated in place
                var.lerp_(unbiased, momentum)
                self.updates[steps] += 1
            out = (x - batch_mean) * torch.rsqrt(batch_var + self.EPS)
        else:
            scale = torch.rsqrt(var + self.EPS) * (var >= self.CONSTANT_VAR)
            out = (x - mean) * scale
        out = out * self.weight
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
    `lstm_input` "pixels" reads one pixel (its C values) per step in raster order (MNIST: 784
    steps, Cooijmans et al. 2016's sequential MNIST), "permuted_pixels" the pixels in a fixed
    random order drawn from `permutation_seed` (their permuted MNIST).

    At width (hidden units) 256 without a norm it has 891,402 parameters on CIFAR-10 and
    821,770 on MNIST. norm "none" is nn.LSTM (cuDNN on a GPU); "layer" and "batch" are
    `NormLSTMLayer`s, with one bias instead of nn.LSTM's two (-2 x 1,024) plus their gains and
    the cell norm's shift (+2 x 2,560): 894,474 on CIFAR-10, 824,842 on MNIST.
    """

    def __init__(self, in_shape, num_classes, width=256, norm="none", dropout_rate=0.0,
                 init="stable", layers=2, lstm_input="rows", permutation_seed=0):  # fmt: skip
        super().__init__()
        channels, height, wide = in_shape
        self.lstm_input = lstm_input
        # rows: one row of every channel per step; pixels: one pixel of every channel per step
        steps, inputs = (
            (height, channels * wide) if lstm_input == "rows" else (height * wide, channels)
        )
        order = torch.arange(height * wide)
        if lstm_input == "permuted_pixels":  # fixed by its seed, not by the run's
            order = torch.randperm(
                height * wide, generator=torch.Generator().manual_seed(permutation_seed)
            )
        self.register_buffer("order", order, persistent=False)  # rebuilt from the settings
        if norm == "none":
            self.rnn = nn.LSTM(inputs, width, layers, batch_first=True, dropout=dropout_rate)
        else:
            stack = []
            for i in range(layers):
                stack += block(
                    dropout_layer(dropout_rate) if i > 0 else None,
                    NormLSTMLayer(inputs if i == 0 else width, width, steps, norm),
                )
            self.rnn = nn.Sequential(*stack)
        self.drop = dropout_layer(dropout_rate) or nn.Identity()
        self.head = nn.Linear(width, num_classes)
        if init == "he":
            # He's init for every input and recurrent weight, nn.LSTM's included, so that "he"
            # means one thing whatever the norm (the hand-written cells hold them as nn.Linear).
            he_init_(self)
            for name, weight in self.rnn.named_parameters():
                if name.startswith("weight_"):  # nn.LSTM's weight_ih_l*, weight_hh_l*
                    nn.init.kaiming_normal_(weight)
        # "stable": h_t lies in (-1, 1) and the head has nn.Linear's default init, so the first
        # logits are small for every norm (tests/test_models.py checks it).

    def forward(self, x):
        n, c, height, wide = x.shape
        if self.lstm_input == "rows":
            seq = x.permute(0, 2, 1, 3).reshape(n, height, c * wide)  # (N, T = H, C x W)
        else:
            seq = x.flatten(2).transpose(1, 2)[:, self.order]  # (N, T = H x W, C)
        # The recurrence in fp32 for every norm, as cuDNN's nn.LSTM runs it under bf16 autocast:
        # precision not confounded with the norm (docs/protocol.md); the head stays autocast.
        with torch.autocast(x.device.type, enabled=False):
            out = self.rnn(seq.float())
        out = out[0] if isinstance(out, tuple) else out  # nn.LSTM returns (output, (h, c))
        return self.head(self.drop(out[:, -1]))
