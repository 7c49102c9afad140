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

EPOCHS = 3


def test_output_to_a_file_is_one_plain_line_per_epoch(tmp_path, tiny_data, train_cli, train_env):
    log = tmp_path / "run.log"
    with open(log, "w") as f:  # as the workflow's `>> {log} 2>&1`
        cmd = train_cli(tiny_data, tmp_path / "run", "--epochs", str(EPOCHS), "--milestones")
        res = subprocess.run(cmd, env=train_env, stdout=f, stderr=subprocess.STDOUT, timeout=300)
    assert res.returncode == 0, log.read_text()
    text = log.read_text()
    assert "\r" not in text and "\x1b" not in text  # no bar, no terminal control characters
    lines = text.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("epoch ")] == ["1/3", "2/3", "3/3"]
    assert lines[0].startswith("synthetic/cnn/bn_dropout seed 42") and lines[-1].startswith(
        "completed"
    )
    assert lines[1].startswith("execution: ")  # the settings that ran (precision, graphs, ...)
    assert len(lines) == EPOCHS + 3


def test_output_to_a_terminal_shows_a_bar(tmp_path, tiny_data, train_cli, train_env):
    main_fd, child_fd = pty.openpty()
    # A terminal of 24 x 120 characters (a fresh pty says 0 x 0, for which tqdm draws nothing).
    fcntl.ioctl(child_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    cmd = train_cli(tiny_data, tmp_path / "run", "--epochs", str(EPOCHS), "--milestones")
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
