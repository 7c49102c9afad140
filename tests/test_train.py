"""Training: determinism, the epoch records, divergence and the CLI (checkpoints and resume:
test_checkpoints.py)."""

from __future__ import annotations

import json
from importlib import metadata

import pandas as pd
import pytest
import torch

from normdrop.data import load_prepared
from normdrop.train import train


def test_same_seed_same_metrics_different_seed_differs(tiny_data, tiny_config, cpu, quiet, curves):
    data = load_prepared(tiny_data)
    cfg = tiny_config(model="cnn", width=4, norm="batch", dropout_rate=0.3)
    a, b = train(cfg, data, cpu, **quiet), train(cfg, data, cpu, **quiet)
    pd.testing.assert_frame_equal(curves(a), curves(b))
    pd.testing.assert_frame_equal(a.steps, b.steps)
    c = train(tiny_config(model="cnn", width=4, norm="batch", dropout_rate=0.3, seed=7), data, cpu,
              **quiet)  # fmt: skip
    assert not curves(a).equals(curves(c))
    assert a.status == "completed" and len(a.epochs) == 3
    # 270 training images in batches of 32: 9 steps per epoch, the last one smaller.
    assert len(a.steps) == 27 and a.steps["epoch"].tolist() == [1] * 9 + [2] * 9 + [3] * 9


def test_epoch_records(tiny_data, cpu, tiny_config, quiet):
    r = train(tiny_config(lr=1e-3, lr_milestones=(2,), lr_gamma=0.1), load_prepared(tiny_data), cpu,
              **quiet)  # fmt: skip
    e = r.epochs
    assert e["epoch"].tolist() == [1, 2, 3]
    assert e["lr"].tolist() == pytest.approx([1e-3, 1e-3, 1e-4])  # decayed after epoch 2
    steps = r.steps[r.steps.epoch == 1]["loss"]
    assert e["train_loss_mean"][0] == pytest.approx(steps.mean(), rel=1e-6)
    assert e["train_loss_sd"][0] == pytest.approx(steps.std(), rel=1e-5)  # sample SD
    for col in ["train_acc", "val_acc", "test_acc"]:
        assert e[col].between(0, 1).all()
    assert 0 <= r.train_eval_acc <= 1 and r.param_count > 0


def test_diverging_run_is_recorded_not_raised(tiny_data, cpu, tiny_config, quiet):
    r = train(tiny_config(lr=1e20), load_prepared(tiny_data), cpu, **quiet)
    assert r.status == "diverged" and r.diverged_epoch == 1
    assert len(r.epochs) == 1 and r.epochs["val_acc"].isna().all()


def test_cli_writes_outputs_and_metadata(tmp_path, tiny_data, run_cli):
    res = run_cli(tmp_path, tiny_data, tmp_path / "run", "--epochs", "2", "--lr-milestones")
    assert res.returncode == 0, res.stderr
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["settings"]["epochs"] == 2
    # The installed distributions' versions (torch's wheel may add a "+cu..." local tag).
    assert meta["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert meta["versions"]["torchvision"] == metadata.version("torchvision")
    for key in ["git_revision", "param_count", "device", "wall_time_s", "settings_hash"]:
        assert meta[key] not in (None, "")
    assert len(pd.read_parquet(tmp_path / "run" / "epochs.parquet")) == 2


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model", "vgg"], "setting 'model' = 'vgg': allowed: mlp, cnn, resnet20"),
        (["--norm", "instance"], "setting 'norm' = 'instance': allowed: none, batch, group"),
        (["--epochs", "ten"], "argument --epochs: invalid int value: 'ten'"),
        (["--lr-milestones", "9"], "setting 'lr_milestones' = (9,): strictly increasing epochs"),
        (["--dropout-rate", "1.5"], "setting 'dropout_rate' = 1.5: must lie in [0, 1)"),
        (["--bogus", "1"], "unrecognized arguments: --bogus 1"),
    ],
)
def test_cli_mistakes_exit_2_with_one_line(tmp_path, tiny_data, args, message, run_cli):
    res = run_cli(tmp_path, tiny_data, tmp_path / "run", *args)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert not (tmp_path / "run").exists()
