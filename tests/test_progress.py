"""A training run's own output and checkpoints: a progress bar in a terminal, plain lines in a file
or pipe; checkpoints read with weights_only, an unsafe one moved aside."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import pathlib
import pty
import struct
import subprocess
import termios
import time

import pandas as pd
import torch
from conftest import TRAIN_ENV, tiny_config, train_cli

from normdrop.data import load_prepared
from normdrop.train import _EpochBar, reporters, train

CPU = torch.device("cpu")
EPOCHS = 3


def test_output_to_a_file_is_one_plain_line_per_epoch(tmp_path, tiny_data):
    log = tmp_path / "run.log"
    with open(log, "w") as f:  # as the workflow's `>> {log} 2>&1`
        cmd = train_cli(tiny_data, tmp_path / "run", "--epochs", str(EPOCHS), "--milestones")
        res = subprocess.run(cmd, env=TRAIN_ENV, stdout=f, stderr=subprocess.STDOUT, timeout=300)
    assert res.returncode == 0, log.read_text()
    text = log.read_text()
    assert "\r" not in text and "\x1b" not in text  # no bar, no terminal control characters
    lines = text.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("epoch ")] == ["1/3", "2/3", "3/3"]
    assert lines[0].startswith("synthetic/cnn/custom seed 42") and lines[-1].startswith("completed")
    assert lines[1].startswith("execution: ")  # the settings that ran (precision, graphs, ...)
    assert len(lines) == EPOCHS + 3


def test_output_to_a_terminal_shows_a_bar(tmp_path, tiny_data):
    main_fd, child_fd = pty.openpty()
    # A terminal of 24 x 120 characters (a fresh pty says 0 x 0, for which tqdm draws nothing).
    fcntl.ioctl(child_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    cmd = train_cli(tiny_data, tmp_path / "run", "--epochs", str(EPOCHS), "--milestones")
    proc = subprocess.Popen(cmd, env=TRAIN_ENV, stdout=child_fd, stderr=child_fd)
    os.close(child_fd)
    out = b""
    while True:  # read until the child closes the terminal (EIO on Linux)
        try:
            chunk = os.read(main_fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(main_fd)
    assert proc.wait(timeout=300) == 0, out.decode(errors="replace")
    text = out.decode(errors="replace")
    assert f"{EPOCHS}/{EPOCHS} [" in text, text
    assert "epoch/s" in text or "s/epoch" in text  # the bar's rate
    assert "%|" in text and "\r" in text  # tqdm's bar, redrawn in place
    assert "loss=" in text and "val=" in text  # the bar's postfix: the last epoch's numbers
    assert "epoch 3/3 lr" in text  # the per-epoch lines still appear, above the bar


def test_reporter_is_chosen_by_whether_the_stream_is_a_terminal(tmp_path):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    log, progress, close = reporters(io.StringIO())
    assert progress is None  # plain lines
    log, progress, close = reporters(Terminal())
    assert isinstance(progress, _EpochBar)
    progress(2, 5, None)  # resumed after 2 of 5 epochs
    progress(3, 5, {"train_loss_mean": 1.25, "val_acc": 0.5})
    close()
    shown = progress.stream.getvalue()
    assert "3/5" in shown and "loss=1.2500" in shown and "val=0.5000" in shown


def test_resume_reads_the_checkpoint_with_weights_only(tmp_path, tiny_data, monkeypatch):
    data, ckpt = load_prepared(tiny_data), tmp_path / "run.ckpt"
    cfg = tiny_config(epochs=3)
    ref = train(cfg, data, CPU, log=lambda s: None)

    class Stop(Exception):
        pass

    def stop(line):
        if line.startswith("epoch 2/"):
            raise Stop

    with contextlib.suppress(Stop):
        train(cfg, data, CPU, checkpoint=ckpt, log=stop)
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k) or real_load(*a, **k))
    resumed = train(cfg, data, CPU, checkpoint=ckpt, log=lambda s: None)
    assert [k.get("weights_only") for k in loads] == [True]
    assert resumed.resumes == [{"epoch": 1, "step": 0}]
    drop = ["wall_time_s"]
    pd.testing.assert_frame_equal(ref.epochs.drop(columns=drop), resumed.epochs.drop(columns=drop))


def test_checkpoint_that_needs_code_to_load_is_moved_aside(tmp_path, tiny_data):
    data, ckpt = load_prepared(tiny_data), tmp_path / "run.ckpt"
    cfg = tiny_config(epochs=2, milestones=())
    train(cfg, data, CPU, checkpoint=ckpt, log=lambda s: None)  # a complete, valid checkpoint
    marker = tmp_path / "code-ran"

    class Payload:  # unpickling it would call Path.touch(marker)
        def __reduce__(self):
            return pathlib.Path.touch, (marker,)

    torch.save({**torch.load(ckpt, weights_only=True), "extra": Payload()}, ckpt)
    lines = []
    t0 = time.time()
    r = train(cfg, data, CPU, checkpoint=ckpt, log=lines.append)
    assert not marker.exists()  # nothing in the file ran
    assert r.resumes == [] and len(r.epochs) == 2  # started over
    aside = list(tmp_path.glob("run.ckpt.stale-*"))
    assert len(aside) == 1 and int(aside[0].name.rsplit("-", 1)[1]) >= int(t0)
    assert lines[0] == (
        f"checkpoint {ckpt} cannot be read safely (weights_only: it holds objects other than "
        f"tensors and plain containers): moved aside to {aside[0]}; starting from epoch 1"
    )
    assert not any("\x1b" in line for line in lines)
