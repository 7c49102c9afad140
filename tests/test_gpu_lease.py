"""GPU leases (normdrop.gpu_lease): CPU only, with fake device lists and real processes."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
MODULE_FILE = SRC / "normdrop" / "gpu_lease.py"

try:
    from normdrop import gpu_lease
except ImportError:  # not installed: run from the source checkout
    sys.path.insert(0, str(SRC))
    from normdrop import gpu_lease

LeaseError = gpu_lease.LeaseError

# A child process: load gpu_lease straight from its file (so the package's __init__, which may
# import torch, does not slow it down), wait for the go file so that all children race for the
# locks together, take a lease, report it as one JSON line, then hold it until stdin closes.
HOLDER = r"""
import importlib.util, json, os, sys, time
from pathlib import Path
spec = importlib.util.spec_from_file_location("gpu_lease", sys.argv[1])
gl = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gl)
args = json.loads(sys.argv[2])
go = args.get("go")
while go and not os.path.exists(go):
    time.sleep(0.002)
try:
    if args["mode"] == "setup":
        lease = gl.setup_device_env(args["lock_dir"], args["slots"], wait_s=args["wait_s"])
        device = os.environ.get("CUDA_VISIBLE_DEVICES")
    else:
        lease = gl.acquire(args["lock_dir"], args["devices"], args["slots"],
                           wait_s=args["wait_s"], poll_s=0.05)
        device = lease.device
except gl.LeaseError as exc:
    print(json.dumps({"pid": os.getpid(), "error": str(exc)}), flush=True)
    sys.exit(3)
print(json.dumps({"pid": os.getpid(), "device": device, "slot": lease.slot}), flush=True)
sys.stdin.read()
"""

TIMEOUT_S = 10.0


def start_holder(
    lock_dir: Path,
    devices: list[str] | None = None,
    slots: int = 1,
    *,
    mode: str = "acquire",
    wait_s: float = 0.0,
    go: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    args = {
        "mode": mode,
        "lock_dir": str(lock_dir),
        "devices": devices,
        "slots": slots,
        "wait_s": wait_s,
        "go": str(go) if go else None,
    }
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CUDA_"))}
    child_env.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(MODULE_FILE), json.dumps(args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env,
    )


def report(proc: subprocess.Popen[str]) -> dict:
    """The child's one JSON line (lease or error), waiting at most TIMEOUT_S."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT_S)
    assert ready, "holder process did not report in time"
    line = proc.stdout.readline()
    assert line, f"holder process died without reporting (rc={proc.poll()})"
    return json.loads(line)


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None and proc.stdin is not None:
            proc.stdin.close()
    for proc in procs:
        try:
            proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def procs():
    started: list[subprocess.Popen[str]] = []
    yield started
    stop(started)


def race(procs, tmp_path, n, **kwargs) -> list[dict]:
    """Start n holders that all go for a lease at the same moment; their reports."""
    go = tmp_path / "go"
    for _ in range(n):
        procs.append(start_holder(tmp_path / "locks", go=go, **kwargs))
    time.sleep(0.3)  # let them start up and spin on the go file
    go.touch()
    return [report(p) for p in procs]


# --- concurrent processes ------------------------------------------------------------------


def test_four_processes_four_devices_one_slot(procs, tmp_path):
    devices = ["0", "1", "2", "3"]
    reports = race(procs, tmp_path, 4, devices=devices, slots=1)
    assert all("error" not in r for r in reports), reports
    held = [(r["device"], r["slot"]) for r in reports]
    assert sorted(held) == [(d, 0) for d in devices]

    fifth = start_holder(tmp_path / "locks", devices, 1)
    procs.append(fifth)
    err = report(fifth)
    assert fifth.wait(timeout=TIMEOUT_S) == 3
    msg = err["error"]
    assert f"all 4 GPU slots in {tmp_path / 'locks'} are held" in msg
    assert "--resources gpu=N larger than the number of GPUs x slots_per_gpu" in msg
    for r in reports:
        assert str(r["pid"]) in msg


def test_four_processes_two_devices_two_slots_via_env(procs, tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "0,1"}
    reports = race(procs, tmp_path, 4, mode="setup", slots=2, env=env)
    assert all("error" not in r for r in reports), reports
    held = [(r["device"], r["slot"]) for r in reports]
    assert len(set(held)) == 4, held
    assert set(held) == {("0", 0), ("1", 0), ("0", 1), ("1", 1)}
    assert Counter(d for d, _ in held) == {"0": 2, "1": 2}

    fifth = start_holder(tmp_path / "locks", slots=2, mode="setup", env=env)
    procs.append(fifth)
    err = report(fifth)
    assert fifth.wait(timeout=TIMEOUT_S) == 3
    assert "all 4 GPU slots" in err["error"]
    assert "(2 x 2 = 4)" in err["error"]


def test_killed_holder_frees_its_slot(procs, tmp_path):
    lock_dir = tmp_path / "locks"
    holder = start_holder(lock_dir, ["0"], 1)
    procs.append(holder)
    assert report(holder)["device"] == "0"

    blocked = start_holder(lock_dir, ["0"], 1)
    procs.append(blocked)
    assert str(holder.pid) in report(blocked)["error"]  # really held, by that pid

    os.kill(holder.pid, signal.SIGKILL)
    assert holder.wait(timeout=TIMEOUT_S) == -signal.SIGKILL
    assert gpu_lease.lock_path(lock_dir, "0", 0).exists()  # the file stays; the lock does not

    successor = start_holder(lock_dir, ["0"], 1)
    procs.append(successor)
    got = report(successor)
    assert (got.get("device"), got.get("slot")) == ("0", 0), got


def test_waiting_process_gets_the_slot_when_the_holder_exits(procs, tmp_path):
    lock_dir = tmp_path / "locks"
    holder = start_holder(lock_dir, ["0"], 1)
    procs.append(holder)
    report(holder)
    waiter = start_holder(lock_dir, ["0"], 1, wait_s=8.0)
    procs.append(waiter)
    time.sleep(0.5)
    assert waiter.poll() is None  # still waiting, not failed
    stop([holder])
    got = report(waiter)
    assert (got.get("device"), got.get("slot")) == ("0", 0), got


# --- in-process behaviour ------------------------------------------------------------------


def test_two_leases_spread_over_two_devices(tmp_path):
    with (
        gpu_lease.acquire(tmp_path, ["0", "1"], slots_per_gpu=2) as a,
        gpu_lease.acquire(tmp_path, ["0", "1"], slots_per_gpu=2) as b,
    ):
        assert a.device != b.device
        assert (a.slot, b.slot) == (0, 0)
        with gpu_lease.acquire(tmp_path, ["0", "1"], slots_per_gpu=2) as c:
            assert c.slot == 1


def test_release_frees_the_slot_and_note_names_holder(tmp_path):
    lease = gpu_lease.acquire(tmp_path, ["0"])
    assert lease.held
    assert lease.path == tmp_path / "gpu0.slot0.lock"
    assert f"pid={os.getpid()}" in lease.path.read_text()
    with pytest.raises(LeaseError, match=r"all 1 GPU slots .* held \(by pids \d+\)"):
        gpu_lease.acquire(tmp_path, ["0"])
    lease.release()
    lease.release()  # idempotent
    assert not lease.held
    with gpu_lease.acquire(tmp_path, ["0"]) as again:
        assert (again.device, again.slot) == ("0", 0)
    assert not again.held


def test_wait_then_raise_and_wait_then_succeed(tmp_path):
    lease = gpu_lease.acquire(tmp_path, ["0"])
    t0 = time.monotonic()
    with pytest.raises(LeaseError, match="after waiting 0.3 s"):
        gpu_lease.acquire(tmp_path, ["0"], wait_s=0.3, poll_s=0.05)
    assert time.monotonic() - t0 >= 0.3

    timer = threading.Timer(0.3, lease.release)
    timer.start()
    t0 = time.monotonic()
    with gpu_lease.acquire(tmp_path, ["0"], wait_s=5, poll_s=0.05) as got:
        assert got.device == "0"
        assert time.monotonic() - t0 >= 0.25
    timer.join()


def test_device_ids_are_sanitised_for_file_names(tmp_path):
    odd = ["MIG-GPU-1234/1/0", "MIG-GPU-1234_1_0"]
    paths = {gpu_lease.lock_path(tmp_path, d, 0) for d in odd}
    assert len(paths) == 2  # distinct despite the same sanitised text
    assert all(p.parent == tmp_path and "/" not in p.name for p in paths)
    with gpu_lease.acquire(tmp_path, odd) as lease:
        assert lease.device == odd[0]
        assert lease.path.exists()
    assert gpu_lease.lock_path(tmp_path, "GPU-8d9f-ab", 1).name == "gpuGPU-8d9f-ab.slot1.lock"


def test_acquire_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        gpu_lease.acquire(tmp_path, [])
    with pytest.raises(ValueError):
        gpu_lease.acquire(tmp_path, ["0"], slots_per_gpu=0)


def test_module_does_not_import_torch():
    code = (
        "import importlib.util, sys;"
        f"s = importlib.util.spec_from_file_location('gl', {str(MODULE_FILE)!r});"
        "m = importlib.util.module_from_spec(s); s.loader.exec_module(m);"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=TIMEOUT_S)


# --- setup_device_env ----------------------------------------------------------------------


def test_setup_under_slurm_takes_no_lease(tmp_path):
    env = {"SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": "3"}
    assert gpu_lease.setup_device_env(tmp_path / "locks", 2, env=env) is None
    assert env["CUDA_VISIBLE_DEVICES"] == "3"
    assert not (tmp_path / "locks").exists()


def test_setup_under_slurm_without_gpus_takes_no_lease(tmp_path):
    env = {"SLURM_JOB_ID": "42"}  # SLURM gave no GPU: do not look at the node's GPUs
    assert gpu_lease.setup_device_env(tmp_path / "locks", 1, env=env) is None
    assert "CUDA_VISIBLE_DEVICES" not in env


def test_setup_under_slurm_with_several_gpus_spreads_jobs(tmp_path):
    # A local Snakemake inside `salloc --gres=gpu:2`: its jobs must not all land on one GPU.
    env_a = {"SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": "0,1"}
    env_b = dict(env_a)
    a = gpu_lease.setup_device_env(tmp_path / "locks", 1, env=env_a)
    b = gpu_lease.setup_device_env(tmp_path / "locks", 1, env=env_b)
    try:
        assert {env_a["CUDA_VISIBLE_DEVICES"], env_b["CUDA_VISIBLE_DEVICES"]} == {"0", "1"}
    finally:
        a.release()
        b.release()


def test_setup_without_gpus_is_a_cpu_run(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": ""}
    assert gpu_lease.setup_device_env(tmp_path / "locks", 1, env=env) is None
    assert env == {"CUDA_VISIBLE_DEVICES": ""}
    assert not (tmp_path / "locks").exists()


def test_setup_narrows_cuda_visible_devices(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "0,1"}
    lease = gpu_lease.setup_device_env(tmp_path, 1, env=env)
    try:
        assert lease is not None and lease.held
        assert env["CUDA_VISIBLE_DEVICES"] in {"0", "1"}
        assert env["CUDA_VISIBLE_DEVICES"] == lease.device
        assert "CUDA_DEVICE_ORDER" not in env
        env2 = {"CUDA_VISIBLE_DEVICES": "0,1"}
        with gpu_lease.setup_device_env(tmp_path, 1, env=env2) as other:
            assert env2["CUDA_VISIBLE_DEVICES"] == other.device != lease.device
    finally:
        lease.release()


def fake_nvidia_smi(bin_dir: Path, body: str) -> dict[str, str]:
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + body + "\n")
    smi.chmod(0o755)
    return {"PATH": str(bin_dir)}


def test_setup_uses_nvidia_smi_when_cuda_visible_devices_unset(tmp_path):
    env = fake_nvidia_smi(tmp_path / "bin", "printf '0\\n1\\n'")
    with gpu_lease.setup_device_env(tmp_path / "locks", 1, env=env) as lease:
        assert env["CUDA_VISIBLE_DEVICES"] == lease.device == "0"
        assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


# --- visible_gpus --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cvd", "expected"),
    [
        ("0,1", ["0", "1"]),
        (" 2 , 3 ", ["2", "3"]),
        ("", []),
        ("7", ["7"]),
        ("GPU-aaaa-1111,GPU-bbbb-2222", ["GPU-aaaa-1111", "GPU-bbbb-2222"]),
        ("0,,1,", ["0", "1"]),
        ("-1", []),
        ("0,-1,1", ["0"]),
    ],
)
def test_visible_gpus_from_cuda_visible_devices(cvd, expected, tmp_path):
    # A PATH with a working fake nvidia-smi proves CUDA_VISIBLE_DEVICES takes precedence.
    env = fake_nvidia_smi(tmp_path / "bin", "echo 9")
    env["CUDA_VISIBLE_DEVICES"] = cvd
    assert gpu_lease.visible_gpus(env) == expected


def test_visible_gpus_from_nvidia_smi(tmp_path):
    body = (
        '[ "$1 $2" = "--query-gpu=index --format=csv,noheader" ] || exit 2\nprintf "0\\n1\\n2\\n"'
    )
    env = fake_nvidia_smi(tmp_path / "bin", body)
    assert gpu_lease.visible_gpus(env) == ["0", "1", "2"]


def test_visible_gpus_when_nvidia_smi_fails_or_is_missing(tmp_path, monkeypatch):
    # No NVML and no driver either (this machine's case, made hermetic for GPU hosts).
    monkeypatch.setattr(gpu_lease, "_load_nvml", lambda: None)
    monkeypatch.setattr(gpu_lease, "NVIDIA_DRIVER_FILES", ())
    env = fake_nvidia_smi(tmp_path / "bin", "echo 'NVIDIA-SMI has failed' >&2; echo 0; exit 9")
    assert gpu_lease.visible_gpus(env) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert gpu_lease.visible_gpus({"PATH": str(empty)}) == []


def test_under_slurm():
    assert gpu_lease.under_slurm({"SLURM_JOB_ID": "123"})
    assert not gpu_lease.under_slurm({"CUDA_VISIBLE_DEVICES": "0"})


# --- the training CLI without --resources gpu=N ------------------------------------------------


@pytest.mark.slow
def test_second_training_job_waits_for_the_one_gpu_slot(tmp_path, tiny_data, train_env, train_cli):
    """A new user's `snakemake --cores 4` on a one-GPU machine: more training jobs than GPU slots
    start at once. The second job says in one line that it waits, gets the slot when the first
    exits, and both finish; no traceback. (No CUDA here: the lease is taken on the fake device
    "0", then `--device auto` trains on the CPU.)"""

    env = {**train_env, "CUDA_VISIBLE_DEVICES": "0"}
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    locks = tmp_path / "locks"

    def start(name):
        cmd = train_cli(tiny_data, tmp_path / name, "--gpu-lock-dir", str(locks))
        cmd[cmd.index("--device") + 1] = "auto"
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)  # fmt: skip

    first = start("first")
    lock = gpu_lease.lock_path(locks / os.uname().nodename, "0", 0)
    t0 = time.monotonic()
    while f"pid={first.pid}" not in (lock.read_text() if lock.exists() else ""):
        assert first.poll() is None and time.monotonic() - t0 < 120, first.communicate()
        time.sleep(0.05)
    second = start("second")  # the slot is held now: it must wait, not fail
    outs = [p.communicate(timeout=300) for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outs
    err = outs[1][1]
    assert "Traceback" not in err and "error" not in err.lower(), err
    waiting = [line for line in err.splitlines() if "waiting for a free GPU slot" in line]
    assert len(waiting) == 1 and f"held (by pids {first.pid})" in waiting[0], err
    for name in ("first", "second"):
        meta = json.loads((tmp_path / name / "meta.json").read_text())
        assert meta["gpu_lease"] == "0/slot0" and meta["status"] == "completed"
        # --device auto without CUDA: the CPU's settings, recorded as they ran
        assert meta["execution"] == {
            "precision": "fp32", "memory_format": "contiguous", "cuda_graphs": False,
            "adam": "default", "compile": False, "deterministic": False,
        }  # fmt: skip
