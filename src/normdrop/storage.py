"""Atomic file output: write a hidden temp file beside the target, fsync, then rename.

A reader (Snakemake, the aggregate, a user) sees either the previous complete file or the new
complete file, never a partial one, even if the writer is killed or the disk fills up midway.
Temp files are named `.<name>.tmp-<pid>` so that no glob for `*.parquet` ever matches them. A
writer killed mid-write (SIGKILL, node failure) leaves its temp file behind; the next successful
write of the same target removes it, so a rerun leaves the folder as clean as a first run.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        pass
    return True


def _sweep_stale_temps(path: Path) -> None:
    """Remove temp files of `path` left by writers that no longer run (on this host; a writer on
    another host sharing the folder cannot hold the same run, which Snakemake's lock prevents)."""
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sweep_stale_temps(path)
    return path


def atomic_write_group(writes: dict[Path, Callable[[io.BufferedWriter], None]]) -> None:
    """Replace several files together: all temp files are written (and fsynced) first, so a
    failure (a full disk) changes none of the targets; then they are renamed in order, the last
    one last (callers put the file that marks completion there)."""
    tmps = {}
    try:
        for path, write in writes.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmps[path] = tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        last = list(tmps)[-1]
        last.unlink(missing_ok=True)  # the folder stops looking complete before files change
        for path, tmp in tmps.items():
            os.replace(tmp, path)
    except BaseException:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)
        raise
    for path in tmps:
        _sweep_stale_temps(path)


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_parquet(path: Path, frame) -> Path:
    """A pandas DataFrame to parquet (pyarrow), atomically."""
    return atomic_write(path, lambda f: frame.to_parquet(f, index=False))


def atomic_write_torch(path: Path, obj) -> Path:
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))
