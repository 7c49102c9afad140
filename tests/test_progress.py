"""A training run's own output: a progress bar in a terminal, plain lines in a file or pipe
(checkpoints: test_checkpoints.py)."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import subprocess
import termios

from normdrop.cli import _EpochBar, reporters
from normdrop.progress import EpochProgress, epoch_line, parse_epoch_line

EPOCHS = 3


def test_the_epoch_line_reads_back_as_written():
    row = dict(epoch=3, lr=1e-3, train_loss_mean=0.41234, train_loss_sd=0.0311, train_acc=0.87,
               val_acc=0.865, test_acc=0.859, wall_time_s=12.34)  # fmt: skip
    line = epoch_line(row, 100)
    assert line == (
        "epoch 3/100 lr 1.00e-03 loss 0.4123 (sd 0.0311) train 0.8700 val 0.8650 test 0.8590 "
        "[12.3s]"
    )
    assert parse_epoch_line(line) == EpochProgress(done=3, epochs=100)
    assert parse_epoch_line(f"  {line}\n") == (3, 100)  # as a log's line, read back
    for other in ["", "epoch", "epochs 3/100", "resuming from ckpt: epoch 2, step 17", "epoch 3"]:
        assert parse_epoch_line(other) is None, other


def test_output_to_a_file_is_one_plain_line_per_epoch(tmp_path, tiny_data, train_cli, train_env):
    log = tmp_path / "run.log"
    with open(log, "w") as f:  # as the workflow's `>> {log} 2>&1`
        cmd = train_cli(tiny_data, tmp_path / "run", "--epochs", str(EPOCHS), "--lr-milestones")
        res = subprocess.run(cmd, env=train_env, stdout=f, stderr=subprocess.STDOUT, timeout=300)
    assert res.returncode == 0, log.read_text()
    text = log.read_text()
    assert "\r" not in text and "\x1b" not in text  # no bar, no terminal control characters
    lines = text.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("epoch ")] == ["1/3", "2/3", "3/3"]
    # ... each of which the status command reads back (normdrop.progress's parser).
    assert [parse_epoch_line(line) for line in lines[2:-1]] == [(k, EPOCHS) for k in (1, 2, 3)]
    assert lines[0].startswith("synthetic/cnn/bn_dropout seed 42") and lines[-1].startswith(
        "completed"
    )
    assert lines[1].startswith("execution: ")  # the settings that ran (precision, graphs, ...)
    assert len(lines) == EPOCHS + 3


def test_output_to_a_terminal_shows_a_bar(tmp_path, tiny_data, train_cli, train_env):
    main_fd, child_fd = pty.openpty()
    # A terminal of 24 x 120 characters (a fresh pty says 0 x 0, for which tqdm draws nothing).
    fcntl.ioctl(child_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    cmd = train_cli(tiny_data, tmp_path / "run", "--epochs", str(EPOCHS), "--lr-milestones")
    proc = subprocess.Popen(cmd, env=train_env, stdout=child_fd, stderr=child_fd)
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
