"""Checkpoints and resume: a run SIGKILLed (once after an epoch, and at random points, in
evaluation and mid-write) resumes to identical metrics; a mid-epoch checkpoint resumes exactly; a
checkpoint of other settings, or one that needs code to load, is set aside; resume reads with
weights_only."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pathlib
import random
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from normdrop.data import load_prepared
from normdrop.train import train


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


@pytest.mark.slow
def test_sigkilled_run_resumes_to_identical_metrics(tmp_path, tiny_data, run_cli, timing):
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

    ref_epochs = pd.read_parquet(tmp_path / "ref" / "epochs.parquet").drop(columns=timing)
    got_epochs = pd.read_parquet(out / "epochs.parquet").drop(columns=timing)
    pd.testing.assert_frame_equal(ref_epochs, got_epochs)  # exactly equal, every epoch
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "ref" / "steps.parquet"), pd.read_parquet(out / "steps.parquet")
    )
    meta = json.loads((out / "meta.json").read_text())
    assert meta["resumes"] and meta["resumes"][0]["epoch"] >= 3
    assert not ckpt.exists()  # cleaned up once the outputs hold everything


def test_mid_epoch_checkpoint_resumes_exactly(tmp_path, tiny_data, tiny_config, cpu, quiet, curves):
    data = load_prepared(tiny_data)
    cfg = tiny_config(model="cnn", width=4, dropout_rate=0.3, epochs=3, checkpoint_every_s=0.0)
    ref = train(cfg, data, cpu, **quiet)

    class Interrupt(Exception):
        pass

    def stop_in_epoch_2(line):
        if line.startswith("epoch 2/"):
            raise Interrupt  # after epoch 2's last step was saved mid-epoch, before its end save

    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(Interrupt):
        train(cfg, data, cpu, checkpoint=ckpt, log=stop_in_epoch_2)
    saved = torch.load(ckpt, weights_only=False)
    assert saved["mid_epoch"] is not None and saved["epoch"] == 1
    resumed = train(cfg, data, cpu, checkpoint=ckpt, **quiet)
    pd.testing.assert_frame_equal(curves(ref), curves(resumed))
    assert resumed.resumes == [{"epoch": 1, "step": 9}]


def test_checkpoint_of_other_settings_is_set_aside(tmp_path, tiny_data, cpu, tiny_config, quiet):
    data = load_prepared(tiny_data)
    ckpt = tmp_path / "run.ckpt"
    train(tiny_config(epochs=1, lr_milestones=()), data, cpu, checkpoint=ckpt, **quiet)
    assert ckpt.exists()
    r = train(tiny_config(epochs=3, seed=5), data, cpu, checkpoint=ckpt, **quiet)
    assert r.resumes == [] and len(r.epochs) == 3  # started over: other settings
    assert list(tmp_path.glob("run.ckpt.stale-*"))  # the old one is kept aside, not deleted


def test_resume_reads_the_checkpoint_with_weights_only(
    tmp_path, tiny_data, monkeypatch, tiny_config, cpu
):
    data, ckpt = load_prepared(tiny_data), tmp_path / "run.ckpt"
    cfg = tiny_config(epochs=3)
    ref = train(cfg, data, cpu, log=lambda s: None)

    class Stop(Exception):
        pass

    def stop(line):
        if line.startswith("epoch 2/"):
            raise Stop

    with contextlib.suppress(Stop):
        train(cfg, data, cpu, checkpoint=ckpt, log=stop)
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k) or real_load(*a, **k))
    resumed = train(cfg, data, cpu, checkpoint=ckpt, log=lambda s: None)
    assert [k.get("weights_only") for k in loads] == [True]
    assert resumed.resumes == [{"epoch": 1, "step": 0}]
    drop = ["wall_time_s"]
    pd.testing.assert_frame_equal(ref.epochs.drop(columns=drop), resumed.epochs.drop(columns=drop))


def test_checkpoint_that_needs_code_to_load_is_moved_aside(tmp_path, tiny_data, tiny_config, cpu):
    data, ckpt = load_prepared(tiny_data), tmp_path / "run.ckpt"
    cfg = tiny_config(epochs=2, lr_milestones=())
    train(cfg, data, cpu, checkpoint=ckpt, log=lambda s: None)  # a complete, valid checkpoint
    marker = tmp_path / "code-ran"

    class Payload:  # unpickling it would call Path.touch(marker)
        def __reduce__(self):
            return pathlib.Path.touch, (marker,)

    torch.save({**torch.load(ckpt, weights_only=True), "extra": Payload()}, ckpt)
    lines = []
    t0 = time.time()
    r = train(cfg, data, cpu, checkpoint=ckpt, log=lines.append)
    assert not marker.exists()  # nothing in the file ran
    assert r.resumes == [] and len(r.epochs) == 2  # started over
    aside = list(tmp_path.glob("run.ckpt.stale-*"))
    assert len(aside) == 1 and int(aside[0].name.rsplit("-", 1)[1]) >= int(t0)
    assert lines[0] == (
        f"checkpoint {ckpt} cannot be read safely (weights_only: it holds objects other than "
        f"tensors and plain containers): moved aside to {aside[0]}; starting from epoch 1"
    )
    assert not any("\x1b" in line for line in lines)


# --------------------------------------------------------------------------- random SIGKILLs
def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


@pytest.fixture(scope="module")
def _kill_at_random_points(train_env, kill_group):
    def _kill_at_random_points(
        cmd, out: Path, ckpt: Path, max_delay: float, rng: random.Random, why: str
    ) -> list:
        """Runs `cmd` until it completes, SIGKILLing it at random points on its first 3 tries;
        returns the delays of the kills that landed (after the try's first checkpoint save)."""
        kills = []
        for attempt in range(4):
            before = _mtime(ckpt)
            proc = subprocess.Popen(cmd, env=train_env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
            try:
                if attempt == 3:  # the last try runs to the end
                    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
                    break
                # "Start" is this process's first checkpoint save: torch's import and the
                # optimizer's lazy imports take seconds on a loaded machine, and a kill there
                # proves nothing.
                t0 = time.monotonic()
                while _mtime(ckpt) == before and proc.poll() is None:
                    assert time.monotonic() - t0 < 180, f"no checkpoint written in 180 s ({why})"
                    time.sleep(0.01)
                delay = rng.uniform(0.02, max_delay)
                time.sleep(delay)
            finally:
                kill_group(proc)
            if proc.returncode == 0:  # it finished before the kill: nothing left to interrupt
                break
            assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
            kills.append(round(delay, 3))
            if not ckpt.exists():
                # Killed after its last step: the outputs were complete and the checkpoint, which
                # they supersede, already removed. That is a finished run.
                assert json.loads((out / "meta.json").read_text())["status"] == "completed"
                break
            # The checkpoint is always whole; nothing final is visible before the run has finished.
            saved = torch.load(ckpt, weights_only=False)
            visible = [*glob.glob(str(out / "*.parquet")), *glob.glob(str(out / "meta.json"))]
            if saved["epoch"] < 8:
                assert not visible, f"after kill {attempt + 1} at +{delay:.2f}s: {visible} ({why})"
            else:  # killed while writing the outputs: each visible file is complete
                for p in glob.glob(str(out / "*.parquet")):
                    pd.read_parquet(p)
        return kills

    return _kill_at_random_points


@pytest.mark.slow
def test_training_sigkilled_at_random_points_resumes_to_identical_metrics(
    tmp_path, tiny_data, train_cli, train_env, run_files, _kill_at_random_points
):
    seed = random.SystemRandom().randrange(1 << 30)
    rng, why = random.Random(seed), f"random seed {seed}"
    # The uninterrupted reference first: its training time (s) scales the kill delays, so the
    # first kill lands before the end on a fast machine as on a slow one.
    ref = subprocess.run(train_cli(tiny_data, tmp_path / "ref"), env=train_env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert ref.returncode == 0, ref.stderr
    ref_wall = json.loads((tmp_path / "ref" / "meta.json").read_text())["wall_time_s"]
    out, ckpt = tmp_path / "killed", tmp_path / "scratch" / "run.ckpt"
    # A timed save every 0.2 s (the reference has none): kills land mid-epoch, in evaluation and
    # in checkpoint writes, and must not change a single number.
    cmd = train_cli(tiny_data, out, "--checkpoint", str(ckpt), "--checkpoint-every-s", "0.2")
    kills = _kill_at_random_points(cmd, out, ckpt, 0.6 * ref_wall, rng, why)
    assert kills, f"no kill landed while training ({why})"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "completed"
    assert meta["resumes"], f"the run never resumed from a checkpoint ({why}, kills {kills})"
    ref_epochs = pd.read_parquet(tmp_path / "ref" / "epochs.parquet").drop(columns="wall_time_s")
    got_epochs = pd.read_parquet(out / "epochs.parquet").drop(columns="wall_time_s")
    pd.testing.assert_frame_equal(ref_epochs, got_epochs, obj=f"epochs ({why}, kills {kills})")
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "ref" / "steps.parquet"), pd.read_parquet(out / "steps.parquet")
    )
    assert not ckpt.exists()
    files = sorted(p.name for p in out.iterdir() if p.is_file())  # beside tensorboard/
    assert files == sorted(run_files)  # no temp file left
