"""The paper's future work: the ViT and the LSTM (sizes, norms, dropout, the hand-written cell),
RMSNorm for the other models, the lr warm-up, and the config errors they bring.
(Their init stability is checked with every other model's in test_models.py.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from normdrop.config import ConfigError, RunConfig
from normdrop.models import (
    MODEL_NORMS,
    NormLSTMLayer,
    StepBatchNorm,
    build_model,
    count_parameters,
)
from normdrop.train import make_scheduler

CIFAR, MNIST = (3, 32, 32), (1, 28, 28)


def params(name, shape, classes, width, norm):
    return count_parameters(build_model(name, shape, classes, width, norm))


def test_docstring_parameter_counts():
    # Sized near Table 1's ResNet-20 (1.07M on CIFAR-10); the docstrings state these numbers.
    assert params("vit", CIFAR, 10, 128, "layer") == 1_008_266
    assert params("vit", CIFAR, 10, 128, "batch") == params("vit", CIFAR, 10, 128, "group")
    assert params("vit", CIFAR, 10, 128, "rms") == 1_008_266 - 13 * 128  # no shift
    assert params("vit", CIFAR, 10, 128, "none") == 1_008_266 - 13 * 256  # no norms
    assert params("vit", MNIST, 10, 128, "layer") == 1_002_250
    assert params("lstm", CIFAR, 10, 256, "none") == 891_402
    assert params("lstm", MNIST, 10, 256, "none") == 821_770
    assert params("lstm", CIFAR, 10, 256, "layer") == params("lstm", CIFAR, 10, 256, "batch")
    assert params("lstm", CIFAR, 10, 256, "batch") == 894_474
    assert abs(params("vit", CIFAR, 10, 128, "layer") - 1.0e6) / 1.0e6 < 0.05


NORM_KINDS = {
    "none": (),
    "layer": (nn.LayerNorm,),
    "batch": (nn.BatchNorm1d, StepBatchNorm),
    "group": (nn.GroupNorm,),
    "rms": (nn.RMSNorm,),
}


@pytest.mark.parametrize("name, norm", [(m, n) for m in ("vit", "lstm") for n in MODEL_NORMS[m]])
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_norm_and_dropout_switches(name, norm, dropout):
    model = build_model(name, CIFAR, 10, 16, norm, dropout)
    kinds = {type(m) for m in model.modules()}
    for other, classes in NORM_KINDS.items():
        if other != "none":
            assert bool(kinds & set(classes)) == (other == norm), other
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    if name == "vit":
        # As the original ViT: after adding the position embedding; per block one residual-
        # branch dropout (after attention and after the MLP) and one after the MLP's GELU; and
        # the attention weights' dropout at the same rate.
        assert len(drops) == (1 + 6 * 2 if dropout else 0)
        assert {b.attn.dropout_rate for b in model.blocks} == {dropout}
        if dropout:
            assert isinstance(model.pos_drop, nn.Dropout)
            for b in model.blocks:
                assert [type(m) for m in b.mlp] == [nn.Linear, nn.GELU, nn.Dropout, nn.Linear]
                assert isinstance(b.drop, nn.Dropout)
    else:
        # Between the two layers and before the head (nn.LSTM holds the first as its `dropout`).
        between = model.rnn.dropout if norm == "none" else sum(
            isinstance(m, nn.Dropout) for m in model.rnn
        )  # fmt: skip
        assert bool(between) == bool(dropout) and isinstance(model.drop, nn.Dropout) == bool(
            dropout
        )
    assert all(d.p == dropout for d in drops)
    assert build_model(name, MNIST, 100, 16, norm, dropout)(torch.randn(3, *MNIST)).shape == (
        3,
        100,
    )


def test_only_the_norm_free_vit_starts_its_residual_branches_at_zero():
    plain = build_model("vit", CIFAR, 10, 16, "none")
    ln = build_model("vit", CIFAR, 10, 16, "layer")
    for block in plain.blocks:
        assert block.attn.proj.weight.abs().sum() == 0 and block.mlp[-1].weight.abs().sum() == 0
        assert block.attn.qkv.weight.abs().sum() > 0
    assert all(b.attn.proj.weight.abs().sum() > 0 for b in ln.blocks)
    x = torch.randn(4, *CIFAR)
    tokens = plain.embed(x).flatten(2).transpose(1, 2) + plain.pos
    assert torch.allclose(plain.blocks(tokens), tokens)  # every block is the identity at init


def test_the_hand_written_cell_without_a_norm_is_nn_lstm():
    # NormLSTMLayer hosts the norms that nn.LSTM cannot; with identity norms and nn.LSTM's
    # weights (its two biases summed) it computes nn.LSTM, so the norm variants differ from
    # "none" by their norms only.
    torch.manual_seed(0)
    ref = nn.LSTM(12, 8, batch_first=True)
    mine = NormLSTMLayer(12, 8, steps=5, norm="none")
    with torch.no_grad():
        mine.w_x.weight.copy_(ref.weight_ih_l0)
        mine.w_h.weight.copy_(ref.weight_hh_l0)
        mine.bias.copy_(ref.bias_ih_l0 + ref.bias_hh_l0)
    x = torch.randn(3, 5, 12)
    assert torch.allclose(mine(x), ref(x)[0], atol=1e-6)
    # Same init scale as nn.LSTM: U(-1/sqrt(H), 1/sqrt(H)).
    assert mine.w_h.weight.abs().max() <= 8**-0.5 and mine.w_h.weight.std() > 0.5 * 8**-0.5 / 3**0.5


def test_recurrent_batch_norm_keeps_statistics_per_time_step():
    torch.manual_seed(0)
    model = build_model("lstm", MNIST, 10, 16, "batch").train()
    # Rows drift in mean over the image: each time step sees another input distribution.
    x = torch.randn(64, *MNIST) + torch.linspace(-3, 3, 28).view(1, 1, 28, 1)
    model(x)
    norm_x = model.rnn[0].norm_x
    assert norm_x.running_mean.shape == (28, 64)  # (steps, 4 x hidden)
    first, last = norm_x.running_mean[0], norm_x.running_mean[-1]
    assert not torch.allclose(first, last, atol=1e-3)
    assert torch.allclose(norm_x.weight, torch.full_like(norm_x.weight, 0.1))  # Cooijmans' gain
    model.eval()
    assert torch.equal(model(x[:2]), model(x[:2]))  # evaluation reads the running statistics


def test_rms_is_defined_for_the_mlp_and_refused_for_conv_models():
    mlp = build_model("mlp", MNIST, 10, 32, "rms")
    assert sum(isinstance(m, nn.RMSNorm) for m in mlp.modules()) == 2
    for name in ("cnn", "resnet20"):
        with pytest.raises(ValueError, match=f"'rms' is not defined for {name}; allowed: none, "):
            build_model(name, CIFAR, 10, 8, "rms")
    with pytest.raises(ValueError, match="'group' is not defined for lstm; allowed: none, layer"):
        build_model("lstm", CIFAR, 10, 8, "group")


def test_vit_refuses_images_it_cannot_cut_into_patches():
    with pytest.raises(ValueError, match="multiples of 4, got 18x18"):
        build_model("vit", (3, 18, 18), 10, 16, "layer")
    assert build_model("vit", (3, 16, 16), 10, 16, "layer")(torch.randn(2, 3, 16, 16)).shape == (
        2,
        10,
    )


def lrs(warmup, epochs=8, milestones=(4, 6)):
    cfg = RunConfig(dataset="mnist", model="mlp", width=8, lr=1.0, epochs=epochs,
                    lr_milestones=milestones, lr_gamma=0.1, warmup_epochs=warmup)  # fmt: skip
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched, out = make_scheduler(opt, cfg), []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_ramps_linearly_then_follows_the_papers_multistep_schedule():
    assert lrs(0) == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])
    assert lrs(3) == pytest.approx([0.25, 0.5, 0.75, 1, 0.1, 0.1, 0.01, 0.01])
    # The warm-up is a setting of the run: it changes the settings hash, but at 0 the hash is
    # the one runs had before the setting existed (these values are main's before issue 17).
    base = RunConfig(dataset="cifar10", model="cnn", width=64)
    assert base.settings_hash() == "53feeb3bec8e1053"
    assert RunConfig(dataset="cifar10", model="cnn", width=64, warmup_epochs=2).settings_hash() != (
        base.settings_hash()
    )
    with pytest.raises(ConfigError, match=r"'warmup_epochs' = 8: must lie in \[0, epochs - 1\]"):
        RunConfig(dataset="cifar10", model="cnn", width=64, epochs=8, warmup_epochs=8)


def test_table1_lists_the_new_models_with_their_parameter_counts():
    import pandas as pd

    from normdrop.tables import table1

    rows = [
        dict(dataset=d, model=m, variant=v, norm=n, dropout=False, seed=42, status="completed",
             param_count=params(m, shape, 10, w, n))
        for d, shape in (("mnist", MNIST), ("cifar10", CIFAR))
        for m, w, variants in (("vit", 128, {"ln": "layer", "rms": "rms"}),
                               ("lstm", 256, {"none": "none", "bn": "batch"}))
        for v, n in variants.items()
    ]  # fmt: skip
    table, csv = table1(pd.DataFrame(rows), ["mnist", "cifar10"], ["vit", "lstm"])
    cells = [row[:4] for row in table.rows]
    assert ["ViT", "ln", "1,002,250", "1,008,266"] in cells
    assert ["", "rms", "1,000,586", "1,006,602"] in cells
    assert ["LSTM", "none", "821,770", "891,402"] in cells
    assert set(csv["model"]) == {"vit", "lstm"} and csv["paper_param_count"].isna().all()


def test_the_vits_group_norm_keeps_at_least_four_features_per_group():
    # At token dim 32, 32 groups would hold one feature each and normalize every token to 0.
    # The other models keep gcd(32, C) groups (their numbers unchanged).
    vit = build_model("vit", CIFAR, 10, 32, "group")
    assert {m.num_groups for m in vit.modules() if isinstance(m, nn.GroupNorm)} == {8}
    wide = build_model("vit", CIFAR, 10, 128, "group")
    assert {m.num_groups for m in wide.modules() if isinstance(m, nn.GroupNorm)} == {32}
    cnn = build_model("cnn", CIFAR, 10, 8, "group")  # maps keep gcd(32, C) groups
    assert [m.num_groups for m in cnn.modules() if isinstance(m, nn.GroupNorm)][:2] == [8, 16]
    x = torch.randn(4, *CIFAR)
    assert vit.norm(vit.embed(x).flatten(2).transpose(1, 2)).std() > 0.5


def blank_topped_images(n: int = 128, side: int = 6, blank: int = 3, classes: int = 4):
    """Images whose first `blank` rows are one constant for every image (as a handwritten
    digit's blank top rows after standardization) and whose other rows tell the class."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % classes
    prototypes = torch.randn(classes, side - blank, side, generator=g)
    x = torch.full((n, 1, side, side), -0.42)  # (0 - MNIST's mean) / its SD
    x[:, 0, blank:] = prototypes[y] + 0.8 * torch.randn(n, side - blank, side, generator=g)
    return x, y


def test_batch_norm_lstm_evaluates_as_it_trains_when_first_steps_are_constant():
    # Issue 24: at the blank first rows W_x x and W_h h are the same for every image, the batch
    # variance is 0 and training normalizes them to 0; evaluation divided the running mean's lag
    # behind that drifting constant by sqrt(eps) and fell to chance (25% here before the fix,
    # against 88% in training mode). StepBatchNorm now treats such a feature as constant.
    x, y = blank_topped_images()
    torch.manual_seed(2)
    model = build_model("lstm", (1, 6, 6), 4, 8, "batch")
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(30):
        idx = torch.randperm(len(y))[:32]
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        model.train()  # batch statistics, batches of 32 as in training
        train_acc = sum((model(xb).argmax(1) == yb).sum() for xb, yb in
                        zip(x.split(32), y.split(32), strict=True)).item() / len(y)  # fmt: skip
        model.eval()
        eval_acc = (model(x).argmax(1) == y).float().mean().item()
    assert train_acc > 0.6  # it learned
    assert abs(eval_acc - train_acc) < 0.06, (train_acc, eval_acc)
    norm_x = model.rnn[0].norm_x
    assert (norm_x.running_var[0] < norm_x.CONSTANT_VAR).all()  # step 0: constant, seen so
    assert (norm_x.running_var[-1] > norm_x.CONSTANT_VAR).all()  # the last: varied


def test_grad_clip_norm_clips_the_global_norm_between_backward_and_step():
    from normdrop.execution import make_train_step

    def step_size(clip):
        torch.manual_seed(0)
        model = nn.Linear(6, 3)
        before = [p.detach().clone() for p in model.parameters()]
        sgd = torch.optim.SGD(model.parameters(), lr=1.0)  # the step is minus the gradient
        make_train_step(model, sgd, torch.device("cpu"), False, clip)(
            10 * torch.randn(8, 6), torch.arange(8) % 3
        )
        moves = [p.detach() - b for p, b in zip(model.parameters(), before, strict=True)]
        return torch.cat([m.flatten() for m in moves]).norm().item()

    assert step_size(0.0) > 1.0  # off: the whole gradient
    assert step_size(0.5) == pytest.approx(0.5, rel=1e-4)  # on: its global norm is the clip
    base = dict(dataset="mnist", model="lstm", width=8)
    assert (
        RunConfig(**base, grad_clip_norm=1.0).settings_hash() != RunConfig(**base).settings_hash()
    )
    with pytest.raises(ConfigError, match=r"'grad_clip_norm' = -1.0: must be >= 0"):
        RunConfig(**base, grad_clip_norm=-1.0)


def test_lstm_reads_rows_pixels_or_pixels_in_a_seeded_order():
    small = (1, 8, 8)  # 64 pixels: a short sequence, a fast test
    x = torch.randn(3, *small)
    models = {}
    for lstm_input, seed in [("rows", 0), ("pixels", 0), ("permuted_pixels", 0),
                             ("permuted_pixels", 1)]:  # fmt: skip
        torch.manual_seed(0)
        models[lstm_input, seed] = build_model("lstm", small, 10, 8, "batch", lstm_input=lstm_input,
                                               permutation_seed=seed)  # fmt: skip
    steps = {k: m.rnn[0].norm_x.running_mean.shape[0] for k, m in models.items()}
    assert steps == {("rows", 0): 8, ("pixels", 0): 64, ("permuted_pixels", 0): 64,
                     ("permuted_pixels", 1): 64}  # fmt: skip
    assert models["pixels", 0].rnn[0].w_x.in_features == 1  # one pixel's channel per step
    assert torch.equal(models["pixels", 0].order, torch.arange(64))
    p0, p1 = models["permuted_pixels", 0].order, models["permuted_pixels", 1].order
    assert torch.equal(p0.sort().values, torch.arange(64)) and not torch.equal(p0, p1)
    again = build_model("lstm", small, 10, 8, "none", lstm_input="permuted_pixels")
    assert torch.equal(again.order, p0)  # fixed by permutation_seed, not by the run's seed
    outs = {k: m.eval()(x) for k, m in models.items()}  # same weights, other orders
    assert not torch.allclose(outs["pixels", 0], outs["permuted_pixels", 0])
    # Recorded: part of the settings and their hash; the permutation's seed only where it counts.
    base = dict(dataset="mnist", model="lstm", width=8)
    hashes = {k: RunConfig(**base, lstm_input=k[0], permutation_seed=k[1]).settings_hash()
              for k in [("rows", 0), ("rows", 5), ("pixels", 0), ("pixels", 5),
                        ("permuted_pixels", 0), ("permuted_pixels", 5)]}  # fmt: skip
    assert hashes["rows", 0] == hashes["rows", 5] == RunConfig(**base).settings_hash()
    assert hashes["pixels", 0] == hashes["pixels", 5] != hashes["rows", 0]
    assert (
        len({hashes["pixels", 0], hashes["permuted_pixels", 0], hashes["permuted_pixels", 5]}) == 3
    )
    with pytest.raises(ConfigError, match="'lstm_input' = 'pixels': for the lstm only, not mlp"):
        RunConfig(dataset="mnist", model="mlp", width=8, lstm_input="pixels")


@pytest.mark.parametrize("norm", ["none", "layer", "batch"])
def test_he_init_means_the_same_for_every_lstm(norm):
    # He (normal, fan-in: SD sqrt(2 / fan_in)) for the input and recurrent weights of every
    # variant, nn.LSTM's (norm none) included.
    torch.manual_seed(0)
    model = build_model("lstm", MNIST, 10, 64, norm, init="he")
    weights = [(n, p) for n, p in model.rnn.named_parameters() if "weight" in n and p.dim() == 2]
    assert len(weights) == 4  # input and recurrent, two layers
    for name, w in weights:
        assert w.std().item() == pytest.approx((2 / w.shape[1]) ** 0.5, rel=0.05), name
