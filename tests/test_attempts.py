"""A run's attempts and accounting (normdrop.attempts): SIGTERM/SIGUSR1 mid-epoch checkpoint
after the step and exit 75, the rerun resumes bitwise; every attempt, killed ones included, in
meta.json; the accounting block on the CPU."""

from __future__ import annotations

import json
import math
import os
import signal
import time

import pandas as pd
import pytest
import torch

from normdrop import attempts as attempts_mod
from normdrop import layout
from normdrop.aggregate import run_row
from normdrop.attempts import EXIT_PREEMPTED, AttemptLog, StopSignals, run_compute_s
from normdrop.data import data_sha256
from normdrop.lr_search import candidate_row, load_run
from normdrop.train import main

# train_args: 2 epochs of 270 / 64 -> 5 steps each. The signal comes after step 7 of 10: epoch 2,
# its step 2, with timed checkpoints an hour apart (the only checkpoint since epoch 1's end is the
# one the signal causes).
HOUR = ["--checkpoint-every-s", "3600", "--no-tensorboard"]


def _steps(folder):
    return pd.read_parquet(folder / "steps.parquet")


@pytest.mark.slow  # three runs: 4 to 13 s on 2 shared cores
def test_sigterm_mid_epoch_checkpoints_after_the_step_and_resumes_bitwise(
    tmp_path, tiny_data, train_args, monkeypatch
):
    ref = tmp_path / "ref"
    assert main([*train_args(tiny_data, ref, tmp_path / "ref.ckpt"), *HOUR]) == 0

    out, ckpt = tmp_path / "run", tmp_path / "run.ckpt"
    args = [*train_args(tiny_data, out, ckpt), *HOUR]
    monkeypatch.setenv(attempts_mod.SIGNAL_AT_STEP_ENV, "TERM@7")
    before = signal.getsignal(signal.SIGTERM)
    assert main(args) == EXIT_PREEMPTED == 75
    assert signal.getsignal(signal.SIGTERM) == before  # handlers put back
    saved = torch.load(ckpt, weights_only=True)
    # written after exactly the step the signal came in: epoch 2 (0-based 1), step 2
    assert (saved["epoch"], saved["step"], saved["mid_epoch"]["step"]) == (1, 2, 2)
    assert not (out / "meta.json").exists()
    log = AttemptLog(ckpt).attempts()
    assert [a["outcome"] for a in log] == ["preempted"] and log[0]["wall_time_s"] > 0

    monkeypatch.delenv(attempts_mod.SIGNAL_AT_STEP_ENV)
    assert main(args) == 0
    pd.testing.assert_frame_equal(_steps(ref), _steps(out))  # bitwise: every step's loss
    meta = json.loads((out / "meta.json").read_text())
    assert meta["resumes"] == [{"epoch": 1, "step": 2}]
    assert [a["outcome"] for a in meta["attempts"]] == ["preempted", "finished"]
    assert all(a["wall_time_s"] > 0 and a["ended_at"] for a in meta["attempts"])
    assert meta["accounting"] == {
        "gpu_name": None,  # CPU
        "gpu_driver": None,
        "peak_device_memory_bytes": None,
        "data_sha256": data_sha256(tiny_data),
        "git_dirty": meta["git_revision"].endswith("-dirty"),
    }
    assert not ckpt.exists() and not AttemptLog(ckpt).path.exists()  # gone with the outputs

    # the summary's compute: both attempts, in runs.parquet and lr_search.parquet rows
    total = sum(a["wall_time_s"] for a in meta["attempts"])
    spec = layout.RunSpec("train", "synthetic", "mlp", "none", "42")
    variant = {"norm": "none", "dropout": False}
    assert run_row(spec, *load_run(out), variant, 0.9, 4)["compute_s"] == total
    assert candidate_row(*load_run(out))["compute_s"] == total
    meta.pop("attempts")  # a run recorded before attempts were: unknown
    epochs = pd.read_parquet(out / "epochs.parquet")
    assert candidate_row(meta, epochs)["compute_s"] is None  # selected.json: null
    assert math.isnan(run_row(spec, meta, epochs, variant, 0.9, 4)["compute_s"])


def test_sigusr1_stops_too(tmp_path, tiny_data, train_args, monkeypatch):
    ckpt = tmp_path / "run.ckpt"
    monkeypatch.setenv(attempts_mod.SIGNAL_AT_STEP_ENV, "USR1@1")
    assert main([*train_args(tiny_data, tmp_path / "run", ckpt), *HOUR]) == EXIT_PREEMPTED
    assert torch.load(ckpt, weights_only=True)["step"] == 1
    assert [a["outcome"] for a in AttemptLog(ckpt).attempts()] == ["preempted"]


def test_an_attempt_without_an_ending_was_killed(tmp_path):
    ckpt = tmp_path / "run.ckpt"
    t = time.time() - 10  # an attempt that started 10 s ago and was SIGKILLed: no "ended" line
    started = {"event": "started", "id": "a", "started_at": "then", "start_time": t, "host": "h"}
    log = AttemptLog(ckpt)
    log.path.write_text(json.dumps(started) + '\n{"event": "ended", "id"')  # a line cut short
    ckpt.write_bytes(b"")
    os.utime(ckpt, (t + 5, t + 5))  # its last checkpoint: 5 s after it started

    later = AttemptLog(ckpt)
    later.start()  # records the earlier one as killed, with what its checkpoint tells
    ckpt.write_bytes(b"")  # the new attempt's checkpoint replaces that one
    got = later.attempts(current_outcome="finished")
    assert [a["outcome"] for a in got] == ["killed", "finished"]
    killed = got[0]
    assert killed["ended_at"] is None and killed["wall_time_at_least"] is True
    assert killed["wall_time_s"] == pytest.approx(5.0, abs=0.01)
    assert attempts_mod.compute_s(got) == pytest.approx(5.0 + got[1]["wall_time_s"])
    assert attempts_mod.compute_s(None) is None  # not recorded


def test_failed_attempt_is_recorded(tmp_path):
    log = AttemptLog(tmp_path / "run.ckpt")
    with pytest.raises(RuntimeError), log.recording():
        raise RuntimeError("boom")
    assert [a["outcome"] for a in log.attempts()] == ["failed"]


def test_stop_signals_only_record_while_entered():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        assert not stop.after_step()
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while stop.requested is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stop.after_step() and stop.requested == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == before


def test_accounting_on_a_gpu_with_fakes(monkeypatch, tmp_path):
    """The CUDA branch on the CPU: name and peak memory from torch.cuda, the driver from
    nvidia-smi (a fake on PATH), None where there is no nvidia-smi."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 123_456)
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 550.54.15\necho 550.54.15\n")  # one line per GPU
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    got = attempts_mod.accounting(torch.device("cuda", 0), "ab12")
    assert got["gpu_name"] == "NVIDIA H200" and got["gpu_driver"] == "550.54.15"
    assert got["peak_device_memory_bytes"] == 123_456 and got["data_sha256"] == "ab12"
    smi.unlink()
    assert attempts_mod.accounting(torch.device("cuda", 0), "ab12")["gpu_driver"] is None


def test_a_fused_jobs_compute_is_shared_among_its_members():
    # Each member's meta.json holds the whole job's attempts: a sum over runs counts it once.
    job = [
        {"outcome": "preempted", "wall_time_s": 20.0},
        {"outcome": "finished", "wall_time_s": 10.0},
    ]
    assert run_compute_s({"attempts": job}) == 30.0
    member = {"attempts": job, "fused_with": ["runs/seed43", "runs/seed44"]}
    assert run_compute_s(member) == 10.0
    assert run_compute_s({"wall_time_s": 9.0, "fused_with": ["a", "b"]}, unknown=9.0) == 3.0
    assert run_compute_s({}) is None
