"""What a run cost and how it ended: its attempts, its accounting, and a stop on a signal.

Every start of `python -m normdrop.train` on a run is an attempt. `AttemptLog` keeps them in a
JSON-lines file next to the run's checkpoint (`<checkpoint>.attempts.jsonl`, under scratch/),
so that they outlive the process: a "started" line when an attempt begins, an "ended" line with
its outcome when it ends. An attempt found without an ending by the next one was killed
(SIGKILL, out of memory, a node lost); its wall time is then known only as a lower bound (up to
the last checkpoint it wrote, `wall_time_at_least: true`) or not at all (null). meta.json gets
the list (`attempts`); the log goes with the checkpoint once the run's outputs are written.
An attempt's wall time runs from just before training (the data loaded, a GPU leased) to its
end: Python's start-up (a few seconds) and the wait for a free GPU are not in it.

Outcomes: "finished" (the run wrote its outputs; a diverged run too), "preempted" (stopped on
SIGTERM or SIGUSR1 after a step, its checkpoint written), "failed" (an error), "killed".

`StopSignals` turns SIGTERM and SIGUSR1 (what SLURM sends ahead of a time limit, `--signal`,
or on `scancel`) into a request that the training loop reads after each step: it then writes a
checkpoint and raises `Preempted`, and the CLI exits with EXIT_PREEMPTED. For tests,
NORMDROP_SIGNAL_AT_STEP=<TERM|USR1>@<k> makes the process send itself that signal after its k-th
step (counted from the start of this attempt).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

# sysexits.h's EX_TEMPFAIL, "temporary failure; the user is invited to retry": stopped on a
# signal with the checkpoint written; rerunning the same command resumes the run.
EXIT_PREEMPTED = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
SIGNAL_AT_STEP_ENV = "NORMDROP_SIGNAL_AT_STEP"
EXIT_HELP = (
    "Exit codes: 0 finished (a diverged run too), 1 writing the outputs or the GPU lease failed, "
    "2 a mistake in the command or its input, "
    f"{EXIT_PREEMPTED} stopped on SIGTERM or SIGUSR1 after a step, its checkpoint written: "
    "rerun the same command to resume."
)


class Preempted(Exception):
    """Training stopped on a signal after a step of `epoch` (0-based), its checkpoint written;
    the CLI exits with `code`."""

    code = EXIT_PREEMPTED

    def __init__(self, signal_name: str, epoch: int, step: int):
        super().__init__(f"stopped on {signal_name} after step {step} of epoch {epoch + 1}")
        self.signal_name, self.epoch, self.step = signal_name, epoch, step


class StopSignals:
    """While entered (`with`), SIGTERM and SIGUSR1 only record that a stop was requested; the
    training loop calls `after_step()` once per step and stops when it returns True. Outside a
    `with` (e.g. a run trained in-process by a test) no handler is installed and nothing stops."""

    def __init__(self, at_step: tuple[signal.Signals, int] | None = None):
        self.requested: str | None = None  # the signal's name, once one came
        self.at_step, self.steps, self._previous = at_step, 0, {}

    @classmethod
    def from_env(cls, environ=os.environ) -> StopSignals:
        """With the test hook NORMDROP_SIGNAL_AT_STEP=<TERM|USR1>@<k> set, if any."""
        hook = environ.get(SIGNAL_AT_STEP_ENV)
        if not hook:
            return cls()
        name, _, k = hook.partition("@")
        return cls((signal.Signals[f"SIG{name}"], int(k)))

    def __enter__(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _record(self, signum, frame) -> None:
        self.requested = signal.Signals(signum).name

    def after_step(self) -> bool:
        """True when a stop was requested; called once after each optimizer step (no sync)."""
        self.steps += 1
        if self.at_step and self.steps == self.at_step[1]:
            signal.raise_signal(self.at_step[0])  # its handler runs before raise_signal returns
        return self.requested is not None


def _now() -> tuple[str, float]:
    t = time.time()
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds"), t


class AttemptLog:
    """The attempts of one run, in `<checkpoint>.attempts.jsonl`; `start()` begins one."""

    def __init__(self, checkpoint: Path):
        checkpoint = Path(checkpoint)
        self.checkpoint = checkpoint
        self.path = checkpoint.with_name(checkpoint.name + ".attempts.jsonl")
        self.current: dict | None = None
        self._t0 = 0.0

    def _append(self, entry: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(entry) + "\n"
        with open(self.path, "a+b") as f:  # one short line per write, appended whole
            if f.seek(0, os.SEEK_END) and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n":
                line = "\n" + line  # after a line that a kill cut short
            f.write(line.encode())
            f.flush()
            os.fsync(f.fileno())

    def start(self) -> None:
        """Begins an attempt; an earlier one without an ending gets one now: killed, its wall
        time at least up to the checkpoint it wrote last (known only now: this attempt's
        checkpoints replace that file)."""
        for killed in self._read(killed_only=True):
            self._append({"event": "ended", **killed})
        started_at, t = _now()
        self._t0 = time.monotonic()
        self.current = {
            "id": uuid.uuid4().hex,
            "started_at": started_at,
            "start_time": t,
            "host": socket.gethostname(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        }
        self._append({"event": "started", **self.current})

    def end(self, outcome: str) -> None:
        """Records how the current attempt ended (written to the log at once)."""
        self._append({"event": "ended", **self._ending(outcome)})

    def _ending(self, outcome: str) -> dict:
        ended_at, _ = _now()
        wall = round(time.monotonic() - self._t0, 3)
        return {
            "id": self.current["id"],
            "ended_at": ended_at,
            "wall_time_s": wall,
            "outcome": outcome,
        }

    def _read(self, killed_only: bool = False) -> list[dict]:
        """The log's attempts, oldest first: {"id", "start", "end"} (the "ended" line, or for
        one without, a killed ending); with `killed_only`, only those endings."""
        started: dict[str, dict] = {}
        ended: dict[str, dict] = {}
        for line in self.path.read_text().splitlines() if self.path.exists() else []:
            try:
                entry = json.loads(line)
            except ValueError:  # a line cut short by a kill mid-write
                continue
            (started if entry.get("event") == "started" else ended)[entry.get("id")] = entry
        ckpt_time = self.checkpoint.stat().st_mtime if self.checkpoint.exists() else None
        out, killed, starts = [], [], [s["start_time"] for s in started.values()] + [None]
        for i, (key, s) in enumerate(started.items()):
            if key not in ended:  # never ended: killed; at least up to its last checkpoint
                wrote = ckpt_time is not None and ckpt_time > s["start_time"]
                wrote = wrote and (starts[i + 1] is None or ckpt_time < starts[i + 1])
                wall = round(ckpt_time - s["start_time"], 3) if wrote else None
                ended[key] = {"id": key, "ended_at": None, "wall_time_s": wall, "outcome": "killed"}
                ended[key]["wall_time_at_least"] = True
                killed.append(ended[key])
            out.append({"id": key, "start": s, "end": ended[key]})
        return killed if killed_only else out

    def attempts(self, current_outcome: str | None = None) -> list[dict]:
        """Every attempt of the run, oldest first, as meta.json lists them; the current one
        with `current_outcome` as its ending if given (meta.json is written before the log's
        "ended" line, so that the outputs hold the attempt that wrote them)."""
        out = []
        for a in self._read():
            end = a["end"]
            if current_outcome is not None and a["id"] == self.current["id"]:
                end = self._ending(current_outcome)
            attempt = {k: a["start"].get(k) for k in ("started_at", "host", "slurm_job_id")}
            attempt.update({k: end[k] for k in ("ended_at", "wall_time_s", "outcome")})
            if end.get("wall_time_at_least"):
                attempt["wall_time_at_least"] = True
            out.append(attempt)
        return out

    @contextmanager
    def recording(self):
        """One attempt: started on entry; ended "preempted" on `Preempted`, "failed" on any
        other exception (both re-raised). A finished attempt needs no line: the outputs list it
        (`attempts(current_outcome="finished")`), and the log then goes with the checkpoint."""
        self.start()
        try:
            yield self
        except Preempted:
            self.end("preempted")
            raise
        except BaseException:
            self.end("failed")
            raise

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def compute_s(attempts: list[dict] | None, unknown=None) -> float | None:
    """Seconds of all attempts (killed ones as far as known); `unknown` without any record (a
    run from before attempts were recorded). None by default: selected.json holds it, and JSON
    has no NaN that compares equal to itself."""
    if not attempts:
        return unknown
    return float(sum(a.get("wall_time_s") or 0.0 for a in attempts))


def run_compute_s(meta: dict, unknown=None) -> float | None:
    """A run's compute from its meta.json: `compute_s` of its attempts, shared equally among the
    members of a fused job (`fused_with`: each member's meta.json holds the whole job's
    attempts), so that a sum over runs counts a fused job once."""
    total = compute_s(meta.get("attempts"), unknown)
    return None if total is None else total / (1 + len(meta.get("fused_with") or []))


def accounting(device, data_sha256: str) -> dict:
    """meta.json's "accounting": the GPU and its driver (None on CPU), the peak memory the run
    allocated on its device (torch.cuda.max_memory_allocated; None on CPU), the data file's
    SHA-256 and whether the code had uncommitted changes (git_revision ends in -dirty)."""
    import torch

    from normdrop.provenance import git_revision

    gpu_name = gpu_driver = peak = None
    if device.type == "cuda":
        gpu_name = torch.cuda.get_device_name(device)
        gpu_driver = _nvidia_driver()
        peak = int(torch.cuda.max_memory_allocated(device))
    return {
        "gpu_name": gpu_name,
        "gpu_driver": gpu_driver,
        "peak_device_memory_bytes": peak,
        "data_sha256": data_sha256,
        "git_dirty": git_revision().endswith("-dirty"),
    }


def _nvidia_driver() -> str | None:
    """The NVIDIA driver version from nvidia-smi; None where it cannot be asked."""
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split()
    return lines[0] if out.returncode == 0 and lines else None
