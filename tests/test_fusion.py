"""Fused runs (normdrop.fusion; normdrop.train.train_members with K > 1; issue 26): every member
is the run it replaces. With dropout off, fp32 and CPU kernels, each member's per-step losses and
epoch records equal its unfused run's within TOL (measured on CPU: 0, bitwise, for the MLP, CNN,
ResNet-20, the ViT with LayerNorm and the LSTM with LayerNorm or its per-step BatchNorm), and a
deliberately broken fusion (members sharing a data order, BatchNorm statistics, Adam state or
learning rate) fails it. The GPU settings on CPU: StackedAdam's capturable mode (CUDA graphs)
gives the default mode's parameters bitwise; fused channels_last gives each member's unfused
channels_last run's losses bitwise (CNN), and the fused contiguous run's within CL_TOL."""

from __future__ import annotations

import json
import math
import signal

import pandas as pd
import pytest
import torch

from normdrop import train as train_module
from normdrop.attempts import Preempted, StopSignals
from normdrop.checkpoints import Checkpointer
from normdrop.config import ConfigError, RunConfig
from normdrop.data import (
    SyntheticSpec,
    download,
    load_prepared,
    normalize,
    prepare,
    standardization,
)
from normdrop.fusion import FusedModel, StackedAdam, make_fused_step, members_in_format
from normdrop.train import main, make_scheduler, train, train_members

ONE_EPOCH = dict(epochs=1, lr_milestones=())
TOL = 1e-5  # relative, per step and per epoch-record value (the bound)
# channels_last against contiguous, relative: other convolution kernels (oneDNN's channels_last
# ones sum in another order), as tests/test_gpu_path.py bounds the unfused run's. Measured: 2e-5
# for the tiny CNN over an epoch.
CL_TOL = 1e-3
CPU = torch.device("cpu")
QUIET = dict(log=lambda line: None)
pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """100 synthetic 16x16 images (90 train after the split: 3 steps of 32 per epoch)."""
    root = tmp_path_factory.mktemp("fusion")
    spec = SyntheticSpec(n_train=100, n_test=40, num_classes=4, size=16, noise=0.8, seed=3)
    download("synthetic", root / "raw", spec)
    return load_prepared(prepare("synthetic", root / "raw", root / "s.pt", val_fraction=0.1))


def members(**settings) -> list[RunConfig]:
    """Two members that differ in seed and learning rate: 2 epochs, lr x0.1 after the first."""
    base = dict(
        dataset="synthetic", model="mlp", width=8, norm="batch", epochs=2, lr_milestones=(1,),
        batch_size=32, eval_batch_size=64, dropout_rate=0.0,
    )  # fmt: skip
    return [
        RunConfig(**{**base, **settings, "seed": s, "lr": lr}) for s, lr in ((42, 1e-3), (43, 3e-3))
    ]


def mismatch(fused, unfused) -> float:
    """The largest relative difference of a member's step losses and epoch values (timing
    excluded) from its unfused run's; inf where the lr column or a shape differs."""
    worst = 0.0
    for a, b in zip(fused, unfused, strict=True):
        if len(a.steps) != len(b.steps) or not a.epochs.lr.equals(b.epochs.lr):
            return math.inf
        ea, eb = (r.epochs.drop(columns=["wall_time_s", "lr"]).to_numpy() for r in (a, b))
        for x, y in ((a.steps.loss.to_numpy(), b.steps.loss.to_numpy()), (ea, eb)):
            worst = max(worst, float(abs(x - y).max() / max(abs(y).max(), 1e-12)))
    return worst


_unfused_cache: dict = {}


def unfused(cfgs, data):
    key = tuple(c.settings_hash() for c in cfgs)
    if key not in _unfused_cache:
        _unfused_cache[key] = [train(c, data, CPU, **QUIET) for c in cfgs]
    return _unfused_cache[key]


@pytest.mark.parametrize(
    "settings",
    [
        dict(model="mlp"),
        dict(model="cnn", augment="crop_flip"),  # each member's own augmentation stream too
        # One epoch for the slower models (the schedule is checked on the two above).
        dict(model="resnet20", width=4, **ONE_EPOCH),
        dict(model="vit", norm="layer", **ONE_EPOCH),  # with none or batch it is refused
        dict(model="lstm", **ONE_EPOCH),
        dict(model="lstm", norm="layer", **ONE_EPOCH),
        dict(model="lstm", norm="layer", grad_clip_norm=0.05, **ONE_EPOCH),  # clips every step
    ],
    ids=["mlp", "cnn", "resnet20", "vit", "lstm-bn", "lstm-ln", "lstm-ln-clipped"],
)
def test_each_member_equals_its_unfused_run(small, settings):
    cfgs = members(**settings)
    fused = train_members(cfgs, small, CPU, **QUIET)
    assert mismatch(fused, unfused(cfgs, small)) <= TOL
    assert [r.status for r in fused] == ["completed", "completed"]
    assert fused[1].epochs.lr.iloc[0] == 3e-3  # its own rate (the schedule: mismatch)


def _shared_data_order(monkeypatch):
    build = train_module.build_objects

    def one_order(cfgs, data, device, ex):
        run = build(cfgs, data, device, ex)
        run.gens = [torch.Generator(device=device).manual_seed(cfgs[0].seed) for _ in cfgs]
        return run

    monkeypatch.setattr(train_module, "build_objects", one_order)


def _shared_bn_statistics(monkeypatch):
    member = FusedModel.member

    def first_members_buffers(self, k):
        model = member(self, k)
        with torch.no_grad():
            for name, t in model.named_buffers():
                t.copy_(self.buffers[name][0])
        return model

    monkeypatch.setattr(FusedModel, "member", first_members_buffers)


def _shared_adam_state(monkeypatch):
    step = StackedAdam.step

    def first_members_moments(self, active):
        with torch.no_grad():
            for state in (self.exp_avg, self.exp_avg_sq):
                for t in state.values():
                    t.copy_(t[:1].expand_as(t))
        step(self, active)

    monkeypatch.setattr(StackedAdam, "step", first_members_moments)


def _shared_lr(monkeypatch):
    read = StackedAdam.read_lrs

    def first_members_lr(self):
        self.lr = read(self)[:1].expand(len(self.lr)).clone()
        return self.lr

    monkeypatch.setattr(StackedAdam, "read_lrs", first_members_lr)


@pytest.mark.parametrize(
    "breakage", [_shared_data_order, _shared_bn_statistics, _shared_adam_state, _shared_lr]
)
def test_a_fusion_that_shares_state_between_members_fails_the_check(small, monkeypatch, breakage):
    cfgs = members(model="mlp")
    reference = unfused(cfgs, small)
    breakage(monkeypatch)
    assert mismatch(train_members(cfgs, small, CPU, **QUIET), reference) > TOL


def test_members_draw_their_own_dropout_masks(small):
    # Same seed: the same weights, so outputs differ only where the dropout masks do.
    cfgs = [
        RunConfig(dataset="synthetic", model="mlp", width=8, dropout_rate=0.5, seed=42, lr=lr)
        for lr in (1e-3, 2e-3)
    ]
    fused = FusedModel(cfgs, small.in_shape, small.num_classes, CPU)
    x = torch.randn(1, 16, *small.in_shape).expand(2, -1, -1, -1, -1)
    fused.train()
    train_out = fused.forward(x)
    assert not torch.equal(train_out[0], train_out[1])
    fused.skeleton.eval()
    eval_out = fused.forward(x)
    assert torch.equal(eval_out[0], eval_out[1])


def test_a_diverged_member_is_frozen_and_the_others_go_on(small):
    cfgs = [members(model="mlp")[0], RunConfig(**{**members()[0].to_dict(), "lr": 1e20})]
    fused = train_members(cfgs, small, CPU, **QUIET)
    alone = unfused(cfgs, small)
    assert [r.status for r in fused] == ["completed", "diverged"] == [r.status for r in alone]
    assert fused[1].diverged_epoch == alone[1].diverged_epoch == 1
    assert len(fused[1].epochs) == 1 and math.isnan(fused[1].train_eval_acc)
    assert mismatch(fused[:1], alone[:1]) <= TOL


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("stop_after_saves", [3, 5])  # mid-epoch 1; at the end of epoch 1
def test_a_killed_job_resumes_bitwise(small, tmp_path, monkeypatch, stop_after_saves):
    cfgs = [
        RunConfig(**{**c.to_dict(), "checkpoint_every_s": 0.0, "dropout_rate": 0.2})
        for c in members(model="cnn", augment="crop_flip")
    ]  # dropout on: the resumed RNG state must give the same masks
    whole = train_members(cfgs, small, CPU, **QUIET)
    save, calls = Checkpointer.save, []

    def save_then_die(*args):
        save(*args)
        calls.append(1)
        if len(calls) == stop_after_saves:
            raise Interrupt

    ckpt = tmp_path / "fused.pt"
    with monkeypatch.context() as m:
        m.setattr(Checkpointer, "save", save_then_die)
        with pytest.raises(Interrupt):
            train_members(cfgs, small, CPU, ckpt, **QUIET)
    resumed = train_members(cfgs, small, CPU, ckpt, **QUIET)
    assert len(resumed[0].resumes) == 1
    for a, b in zip(whole, resumed, strict=True):
        pd.testing.assert_frame_equal(a.steps, b.steps)
        pd.testing.assert_frame_equal(
            a.epochs.drop(columns="wall_time_s"), b.epochs.drop(columns="wall_time_s")
        )


def test_a_sigterm_checkpoints_the_job_after_its_step_and_the_rerun_resumes_bitwise(
    small, tmp_path
):
    cfgs = members(model="mlp", dropout_rate=0.2)
    whole = train_members(cfgs, small, CPU, **QUIET)
    ckpt = tmp_path / "fused.pt"
    with StopSignals((signal.SIGTERM, 4)) as stop, pytest.raises(Preempted):  # epoch 2, step 1
        train_members(cfgs, small, CPU, ckpt, stop=stop, **QUIET)
    resumed = train_members(cfgs, small, CPU, ckpt, **QUIET)
    assert resumed[0].resumes == [{"epoch": 1, "step": 1}]
    for a, b in zip(whole, resumed, strict=True):
        pd.testing.assert_frame_equal(a.steps, b.steps)


def test_models_that_cannot_fuse_are_refused_in_one_line(small):
    with pytest.raises(ConfigError, match="cannot fuse lstm with norm none"):
        train_members(members(model="lstm", norm="none"), small, CPU, **QUIET)
    with pytest.raises(ConfigError, match="cannot fuse vit with norm batch"):
        train_members(members(model="vit"), small, CPU, **QUIET)
    odd = [members()[0], RunConfig(**{**members()[1].to_dict(), "width": 16})]
    with pytest.raises(ConfigError, match="members differ in width"):
        train_members(odd, small, CPU, **QUIET)


def test_the_cli_writes_each_members_run_folder(tiny_data, tmp_path, capsys):
    args = [
        "--data", str(tiny_data), "--dataset", "synthetic", "--model", "mlp", "--width", "8",
        "--epochs", "2", "--lr-milestones", "1", "--batch-size", "64", "--device", "cpu",
        "--no-tensorboard", "--out", str(tmp_path / "job"),
    ]  # fmt: skip
    assert main([*args, "--lrs", "1e-3", "3e-3", "--seeds", "42", "43", "44"]) == 2
    assert capsys.readouterr().err.count("\n") == 1  # one line: give as many
    logs = [str(tmp_path / "logs" / f"{lr}.log") for lr in ("a", "b")]
    assert main([*args, "--lrs", "1e-3", "3e-3", "--member-logs", *logs]) == 0
    assert (tmp_path / "logs" / "b.log").read_text().startswith("epoch 1/2 lr 3.00e-03")
    metas = [
        json.loads((tmp_path / "job" / f"lr{lr}" / "meta.json").read_text())
        for lr in ("0.001", "0.003")
    ]
    assert [m["lr"] for m in metas] == [1e-3, 3e-3] and metas[0]["seed"] == 42
    assert metas[0]["fused_with"] == [str(tmp_path / "job" / "lr0.003")]
    assert not (tmp_path / "job" / "checkpoint.pt").exists()  # the outputs hold everything


# --------------------------------------------------------------------------- GPU settings on CPU
def test_capturable_adam_equals_the_default_mode_bitwise(small):
    # 20 steps of the fused CNN (BatchNorm: Adam fed tiny gradients, where an ulp would grow),
    # the lr x0.1 after step 10 (the milestone). Capturable: step count and bias corrections
    # on the device in float64, lr filled into one fixed tensor. CPU: the same float64 pow and
    # sqrt, so bitwise (bound 0); on CUDA an ulp of float64 may differ (StackedAdam's note).
    def run(capturable):
        cfgs = members(model="cnn")
        model = FusedModel(cfgs, small.in_shape, small.num_classes, CPU)
        adam = StackedAdam(model.params, cfgs, CPU, capturable=capturable)
        scheduler, lr = make_scheduler(adam.schedule_groups, cfgs[0]), adam.lr
        step, gen = make_fused_step(model, adam, CPU, bf16=False), torch.Generator().manual_seed(0)
        scale, shift = standardization(small.mean, small.std)
        model.train()
        for i in range(20):
            idx = torch.stack(
                [torch.randperm(len(small.train_y), generator=gen)[:32] for _ in cfgs]
            )
            step(
                normalize(small.train_x[idx], scale, shift),
                small.train_y[idx],
                torch.tensor([True, True]),
            )
            if i == 9:
                scheduler.step()
                adam.read_lrs()
        assert adam.lr is lr and adam.lr.tolist() == pytest.approx([1e-4, 3e-4])  # in place
        assert adam.steps_taken == 20 and adam.state_dict()["step"] == 20
        return model.params, adam

    default, capturable = run(False), run(True)
    assert capturable[1].step_t.device == CPU and capturable[1].step_t.dtype == torch.float64
    for name, p in default[0].items():
        assert torch.equal(p, capturable[0][name]), name
    for part in ("exp_avg", "exp_avg_sq"):
        for name, t in getattr(default[1], part).items():
            assert torch.equal(t, getattr(capturable[1], part)[name]), (part, name)


def test_fused_channels_last_equals_unfused_channels_last_and_fused_contiguous(small, monkeypatch):
    # One epoch of the tiny CNN, dropout off, fp32: each member's per-step losses and epoch
    # records equal its unfused channels_last run's bitwise (measured; bound TOL), and the fused
    # contiguous run's within CL_TOL; every per-member convolution got channels_last tensors.
    last = members(model="cnn", memory_format="channels_last", **ONE_EPOCH)
    contiguous = members(model="cnn", **ONE_EPOCH)
    calls = []
    conv2d = torch.nn.functional.conv2d

    def recording(x, weight, *args):
        cl = torch.channels_last
        calls.append(x.is_contiguous(memory_format=cl) and weight.is_contiguous(memory_format=cl))
        return conv2d(x, weight, *args)

    with monkeypatch.context() as m:
        m.setattr(torch.nn.functional, "conv2d", recording)
        fused = train_members(last, small, CPU, **QUIET)
    # 5 convolutions x 2 members x 3 steps, and the members' evaluations (unfused modules)
    assert len(calls) >= 30 and all(calls)
    assert fused[0].execution["memory_format"] == "channels_last"
    assert mismatch(fused, unfused(last, small)) <= TOL
    reference = train_members(contiguous, small, CPU, **QUIET)
    assert 0 < mismatch(fused, reference) <= CL_TOL  # 0: the kernels did differ

    model = FusedModel(last, small.in_shape, small.num_classes, CPU, torch.channels_last)
    x = members_in_format(torch.randn(2, 32, *small.in_shape), model.memory_format)
    assert x.permute(0, 1, 3, 4, 2).is_contiguous()  # (K, B, H, W, C) in memory
    assert all(x[k].is_contiguous(memory_format=torch.channels_last) for k in range(2))
    convs = [p for p in model.params.values() if p.dim() == 5]
    assert convs and all(p[1].is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert all(not p[1].is_contiguous() for p in convs)  # really channels_last, not both
