"""Storage: atomic writes and groups of writes (`normdrop.storage`), a full disk while a run
writes its outputs, and the temp files of killed writers."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import normdrop.outputs as outputs_module
import normdrop.train as train_module
from normdrop import storage

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- disk full
def _disk_full_writer(f):
    f.write(b"PAR1" + b"\0" * 4096)  # some bytes reach the disk, then it is full
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("failing", ["steps.parquet", "epochs.parquet", "meta.json"])
def test_disk_full_while_writing_outputs_keeps_previous_outputs(
    tmp_path, tiny_data, monkeypatch, capsys, failing, train_args
):
    out, ckpt = tmp_path / "run", tmp_path / "scratch" / "run.ckpt"
    out.mkdir()
    previous = {
        "steps.parquet": pd.DataFrame({"epoch": [1], "step": [1], "loss": [9.0]}),
        "epochs.parquet": pd.DataFrame({"epoch": [1], "test_acc": [0.125]}),
    }
    for name, frame in previous.items():
        frame.to_parquet(out / name, index=False)
    (out / "meta.json").write_text('{"status": "completed", "note": "the previous run"}\n')
    old = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    real_group = outputs_module.atomic_write_group

    def group(writes):  # the disk fills up while one of the three files is being written
        return real_group(
            {p: _disk_full_writer if Path(p).name == failing else w for p, w in writes.items()}
        )

    monkeypatch.setattr(outputs_module, "atomic_write_group", group)
    assert train_module.main(train_args(tiny_data, out, ckpt)) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and len(err.strip().splitlines()) == 1, err
    assert "No space left on device" in errors[0] and str(ckpt) in errors[0], err
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]  # no temp file left
    assert ckpt.exists()  # a rerun resumes instead of training again
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == old, (
        f"disk full while writing {failing}: the previous outputs were partly replaced"
    )

    monkeypatch.undo()
    assert train_module.main(train_args(tiny_data, out, ckpt)) == 0
    assert "resuming from" in capsys.readouterr().out
    assert json.loads((out / "meta.json").read_text())["status"] == "completed"
    assert not ckpt.exists()


def test_atomic_write_with_a_failing_writer_keeps_the_old_file(tmp_path):
    target = tmp_path / "epochs.parquet"
    target.write_bytes(b"old complete file")
    with pytest.raises(OSError, match="No space left on device"):
        storage.atomic_write(target, _disk_full_writer)
    assert target.read_bytes() == b"old complete file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epochs.parquet"]

    def interrupted(f):
        f.write(b"{")
        raise KeyboardInterrupt  # Ctrl-C mid-write: not an Exception, still cleaned up

    fresh = tmp_path / "sub" / "meta.json"  # no previous file: none appears
    with pytest.raises(KeyboardInterrupt):
        storage.atomic_write(fresh, interrupted)
    assert list(fresh.parent.iterdir()) == []


def test_next_write_removes_temp_files_of_killed_writers_only(tmp_path, kill_group):
    target = tmp_path / "steps.parquet"
    # A writer SIGKILLed mid-write (a real process, so its pid is really gone) ...
    code = (
        "import os, sys, time; from normdrop import storage; "
        "storage.atomic_write(sys.argv[1], lambda f: (f.write(b'half'), f.flush(), "
        "print('writing', flush=True), time.sleep(60)))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], env=env,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        assert proc.stdout.readline() == "writing\n"
    finally:
        kill_group(proc)
    dead = tmp_path / f".steps.parquet.tmp-{proc.pid}"
    assert dead.read_bytes() == b"half" and not target.exists()
    # ... and a live one (this test's parent process, standing in for a concurrent writer).
    live = tmp_path / f".steps.parquet.tmp-{os.getppid()}"
    live.write_bytes(b"in progress")

    storage.atomic_write_group({target: lambda f: f.write(b"whole")})
    assert target.read_bytes() == b"whole"
    assert not dead.exists()  # the killed writer's litter is gone
    assert live.read_bytes() == b"in progress"  # a running writer's file is not touched
