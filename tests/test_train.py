"""Training: determinism, divergence, the CLI, and exact resume after a real SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from importlib import metadata

import pandas as pd
import pytest
import torch
from conftest import TRAIN_ENV, tiny_config, train_cli

from normdrop.data import load_prepared
from normdrop.train import train

CPU = torch.device("cpu")
QUIET = dict(log=lambda s: None)
TIMING = ["wall_time_s"]


def curves(result):
    return result.epochs.drop(columns=TIMING)


def test_same_seed_same_metrics_different_seed_differs(tiny_data):
    data = load_prepared(tiny_data)
    cfg = tiny_config(model="cnn", width=4, norm="batch", dropout=0.3)
    a, b = train(cfg, data, CPU, **QUIET), train(cfg, data, CPU, **QUIET)
    pd.testing.assert_frame_equal(curves(a), curves(b))
    pd.testing.assert_frame_equal(a.steps, b.steps)
    c = train(tiny_config(model="cnn", width=4, norm="batch", dropout=0.3, seed=7), data, CPU,
              **QUIET)  # fmt: skip
    assert not curves(a).equals(curves(c))
    assert a.status == "completed" and len(a.epochs) == 3
    # 270 training images in batches of 32: 9 steps per epoch, the last one smaller.
    assert len(a.steps) == 27 and a.steps["epoch"].tolist() == [1] * 9 + [2] * 9 + [3] * 9


def test_epoch_records(tiny_data):
    r = train(tiny_config(lr=1e-3, milestones=(2,), gamma=0.1), load_prepared(tiny_data), CPU,
              **QUIET)  # fmt: skip
    e = r.epochs
    assert e["epoch"].tolist() == [1, 2, 3]
    assert e["lr"].tolist() == pytest.approx([1e-3, 1e-3, 1e-4])  # decayed after epoch 2
    steps = r.steps[r.steps.epoch == 1]["loss"]
    assert e["train_loss_mean"][0] == pytest.approx(steps.mean(), rel=1e-6)
    assert e["train_loss_sd"][0] == pytest.approx(steps.std(), rel=1e-5)  # sample SD
    for col in ["train_acc", "val_acc", "test_acc"]:
        assert e[col].between(0, 1).all()
    assert 0 <= r.train_eval_acc <= 1 and r.param_count > 0


def test_diverging_run_is_recorded_not_raised(tiny_data):
    r = train(tiny_config(lr=1e20), load_prepared(tiny_data), CPU, **QUIET)
    assert r.status == "diverged" and r.diverged_epoch == 1
    assert len(r.epochs) == 1 and r.epochs["val_acc"].isna().all()


def run_cli(tmp_path, tiny_data, out, *extra, wait=True):
    cmd = train_cli(tiny_data, out, *extra)
    env = TRAIN_ENV
    if wait:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def checkpoint_epoch(path):
    try:
        return torch.load(path, weights_only=False)["epoch"]
    except Exception:  # not there yet
        return -1


def kill_after_epoch(proc, ckpt, epoch, timeout=120):
    t0 = time.time()
    while checkpoint_epoch(ckpt) < epoch:
        assert proc.poll() is None, f"run ended before epoch {epoch}: {proc.stderr.read()}"
        assert time.time() - t0 < timeout
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_sigkilled_run_resumes_to_identical_metrics(tmp_path, tiny_data):
    ref = run_cli(tmp_path, tiny_data, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr

    out, ckpt = tmp_path / "killed", tmp_path / "killed.ckpt"
    proc = run_cli(tmp_path, tiny_data, out, "--checkpoint", str(ckpt), wait=False)
    kill_after_epoch(proc, ckpt, epoch=3)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "epochs.parquet").exists()  # nothing final is visible after the kill
    done = run_cli(tmp_path, tiny_data, out, "--checkpoint", str(ckpt))
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stdout

    ref_epochs = pd.read_parquet(tmp_path / "ref" / "epochs.parquet").drop(columns=TIMING)
    got_epochs = pd.read_parquet(out / "epochs.parquet").drop(columns=TIMING)
    pd.testing.assert_frame_equal(ref_epochs, got_epochs)  # exactly equal, every epoch
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "ref" / "steps.parquet"), pd.read_parquet(out / "steps.parquet")
    )
    meta = json.loads((out / "meta.json").read_text())
    assert meta["resumes"] and meta["resumes"][0]["epoch"] >= 3
    assert not ckpt.exists()  # cleaned up once the outputs hold everything


def test_mid_epoch_checkpoint_resumes_exactly(tmp_path, tiny_data):
    data = load_prepared(tiny_data)
    cfg = tiny_config(model="cnn", width=4, dropout=0.3, epochs=3, checkpoint_every_s=0.0)
    ref = train(cfg, data, CPU, **QUIET)

    class Interrupt(Exception):
        pass

    def stop_in_epoch_2(line):
        if line.startswith("epoch 2/"):
            raise Interrupt  # after epoch 2's last step was saved mid-epoch, before its end save

    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(Interrupt):
        train(cfg, data, CPU, checkpoint=ckpt, log=stop_in_epoch_2)
    saved = torch.load(ckpt, weights_only=False)
    assert saved["mid_epoch"] is not None and saved["epoch"] == 1
    resumed = train(cfg, data, CPU, checkpoint=ckpt, **QUIET)
    pd.testing.assert_frame_equal(curves(ref), curves(resumed))
    assert resumed.resumes == [{"epoch": 1, "step": 9}]


def test_checkpoint_of_other_settings_is_set_aside(tmp_path, tiny_data):
    data = load_prepared(tiny_data)
    ckpt = tmp_path / "run.ckpt"
    train(tiny_config(epochs=1, milestones=()), data, CPU, checkpoint=ckpt, **QUIET)
    assert ckpt.exists()
    r = train(tiny_config(epochs=3, seed=5), data, CPU, checkpoint=ckpt, **QUIET)
    assert r.resumes == [] and len(r.epochs) == 3  # started over: other settings
    assert list(tmp_path.glob("run.ckpt.stale-*"))  # the old one is kept aside, not deleted


def test_cli_writes_outputs_and_metadata(tmp_path, tiny_data):
    res = run_cli(tmp_path, tiny_data, tmp_path / "run", "--epochs", "2", "--milestones")
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
        (["--milestones", "9"], "setting 'milestones' = (9,): strictly increasing epochs"),
        (["--dropout", "1.5"], "setting 'dropout' = 1.5: must lie in [0, 1)"),
        (["--bogus", "1"], "unrecognized arguments: --bogus 1"),
    ],
)
def test_cli_mistakes_exit_2_with_one_line(tmp_path, tiny_data, args, message):
    res = run_cli(tmp_path, tiny_data, tmp_path / "run", *args)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert not (tmp_path / "run").exists()
