"""Pick one GPU per training process when Snakemake runs several jobs on one workstation.

``snakemake --cores all --resources gpu=4`` limits how many jobs declaring ``resources: gpu=1``
run at once, but it never says *which* GPU a job should use: left alone, every job would land
on ``cuda:0``. So each training process, before it touches CUDA, calls
:func:`setup_device_env`, which takes a *lease* on a free (device, slot) pair and narrows
``CUDA_VISIBLE_DEVICES`` to that one device. ``slots_per_gpu`` lets several small runs share a
GPU: with 2, two processes may hold GPU 0 at the same time.

Why ``flock``
-------------
A lease is an exclusive ``fcntl.flock`` on a file ``<lock_dir>/gpu<device>.slot<slot>.lock``,
held through a file descriptor that stays open for the life of the process. The kernel drops
the lock whenever the last descriptor for it is closed, which includes the process dying in
any way (exception, Ctrl-C, OOM killer, ``SIGKILL``). There are therefore no stale lock files
to clean up: a lock file that exists but is not locked is simply a free slot. The file's text
(pid, host, start time, command) is only a note for humans and means nothing once the lock is
gone.

Notes:

* ``flock`` is reliable on local filesystems. On NFS it may be emulated, or not shared between
  hosts at all, so leases are meant for one workstation: keep ``lock_dir`` on a local disk.
* Under SLURM (``SLURM_JOB_ID`` set) no lease is taken: SLURM already set
  ``CUDA_VISIBLE_DEVICES`` to the GPUs it allocated to the job.
* A lock is shared with processes forked afterwards (e.g. DataLoader workers); it is freed when
  the last of them exits, or at once by :meth:`Lease.release`.
* When every slot is held, :func:`acquire` can wait for one (``wait_s``); the training CLI
  waits until a slot frees, so a grid started without ``--resources gpu=N`` queues its jobs on
  the leases instead of failing them.
* Leases are tried slot-major (slot 0 of every device, then slot 1, ...), so jobs spread over
  the devices before doubling up on one.

* Without ``CUDA_VISIBLE_DEVICES`` the GPUs are counted by nvidia-smi, else by NVML (the driver's
  library, through ctypes: it counts without initialising CUDA). Where neither can count but an
  NVIDIA driver is present, the process does not run unleased on GPU 0: it hides CUDA
  (``CUDA_VISIBLE_DEVICES=""``) and says so in one line, so ``--device auto`` runs on the CPU.

This module uses the standard library only and must not import torch: it has to run before
CUDA is initialised, because CUDA reads ``CUDA_VISIBLE_DEVICES`` only once (even
``torch.cuda.device_count()`` may initialise the driver, and the lease would come too late).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, MutableMapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

__all__ = [
    "Lease",
    "LeaseError",
    "NoSuchGPU",
    "acquire",
    "lock_path",
    "setup_device_env",
    "under_slurm",
    "visible_gpus",
]

log = logging.getLogger(__name__)

NVIDIA_SMI_TIMEOUT_S = 30.0
NVML_LIBRARY = "libnvidia-ml.so.1"  # installed with every NVIDIA driver, nvidia-smi or not
# Files an installed NVIDIA driver provides; without any, no CUDA device can exist.
NVIDIA_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl")

# Leases are kept here as well as returned, so that a caller who drops the Lease object does
# not lose the descriptor (the lock must live as long as the process).
_HELD: list[Lease] = []


class LeaseError(RuntimeError):
    """No GPU slot could be leased."""


class NoSuchGPU(ValueError):
    """The GPU asked for (``--device cuda:N``) is not among the visible ones."""


def under_slurm(env: Mapping[str, str] = os.environ) -> bool:
    """True when running inside a SLURM job (``SLURM_JOB_ID`` is set)."""
    return bool(env.get("SLURM_JOB_ID"))


def visible_gpus(env: Mapping[str, str] = os.environ) -> list[str]:
    """The device ids this process may choose from, as strings (they may be UUIDs).

    ``CUDA_VISIBLE_DEVICES`` split on commas if it is set (an empty value means no GPUs; as in
    CUDA, an entry ``-1`` hides itself and every entry after it). Otherwise the indices printed
    by ``nvidia-smi --query-gpu=index --format=csv,noheader`` if nvidia-smi is on ``PATH`` and
    succeeds; otherwise the indices of NVML's count; otherwise ``[]`` (see :func:`_count_gpus`
    for telling "none" from "could not count").
    """
    return _count_gpus(env) or []


def _count_gpus(env: Mapping[str, str]) -> list[str] | None:
    """As :func:`visible_gpus`, but None where GPUs may exist and could not be counted."""
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        devices: list[str] = []
        for item in cvd.split(","):
            item = item.strip()
            if not item:
                continue
            if item.startswith("-"):  # CUDA stops at the first invalid id; "-1" hides all
                break
            devices.append(item)
        return devices
    from_smi = _nvidia_smi_indices(env)
    if from_smi is not None:
        return from_smi
    count = _nvml_count()
    if count is not None:
        return [str(i) for i in range(count)]
    return None if any(os.path.exists(f) for f in NVIDIA_DRIVER_FILES) else []


def _nvidia_smi_indices(env: Mapping[str, str]) -> list[str] | None:
    """The GPU indices nvidia-smi prints, or None where it is missing or fails."""
    smi = shutil.which("nvidia-smi", path=env.get("PATH"))
    if smi is None:
        return None
    try:
        proc = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi failed (%s); counting GPUs with NVML", exc)
        return None
    if proc.returncode != 0:
        log.warning(
            "nvidia-smi exited with %d (%s); counting GPUs with NVML",
            proc.returncode,
            proc.stderr.strip(),
        )
        return None
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()]


def _load_nvml():
    """The NVML library (ctypes), or None where the driver does not provide it."""
    try:
        return ctypes.CDLL(NVML_LIBRARY)
    except OSError:
        return None


def _nvml_count() -> int | None:
    """The number of GPUs NVML sees (all of them, in PCI bus order), or None. NVML talks to the
    driver, not to the CUDA runtime: CUDA_VISIBLE_DEVICES can still be set afterwards."""
    nvml = _load_nvml()
    if nvml is None or nvml.nvmlInit_v2() != 0:  # 0: NVML_SUCCESS
        return None
    try:
        count = ctypes.c_uint(0)
        ok = nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0
        return count.value if ok else None
    finally:
        nvml.nvmlShutdown()


def _file_safe(device: str) -> str:
    """A file-name-safe form of a device id; a hash keeps rewritten ids distinct."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", device)
    if safe != device:
        safe += "-" + hashlib.sha1(device.encode()).hexdigest()[:8]
    return safe


def lock_path(lock_dir: Path | str, device: str, slot: int) -> Path:
    """The lock file for one (device, slot)."""
    return Path(lock_dir) / f"gpu{_file_safe(device)}.slot{slot}.lock"


class Lease:
    """An exclusive hold on one (device, slot); the lock lives as long as :attr:`fd` is open.

    Use :meth:`release` or ``with`` to give it back early; otherwise it is held until the
    process exits. Dropping the object does *not* release it.
    """

    def __init__(self, device: str, slot: int, path: Path, fd: int) -> None:
        self.device = device
        self.slot = slot
        self.path = path
        self.fd = fd

    @property
    def held(self) -> bool:
        return self.fd >= 0

    def release(self) -> None:
        """Unlock and close the lock file. Safe to call more than once."""
        if self.fd < 0:
            return
        fd, self.fd = self.fd, -1
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # the note is stale from now on
        try:
            # Explicit unlock: forked children may still hold copies of the descriptor.
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
            if self in _HELD:
                _HELD.remove(self)
        log.debug("released GPU %s slot %d", self.device, self.slot)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "held" if self.held else "released"
        return f"Lease(device={self.device!r}, slot={self.slot}, path={str(self.path)!r}, {state})"


def _try_lock(path: Path) -> int | None:
    """Open and non-blockingly lock ``path``; the fd if we got it, None if someone holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o664)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise LeaseError(
                f"cannot flock {path}: {exc}. GPU leases need a local filesystem that supports "
                "flock; point the lock directory at a local disk (e.g. under /tmp)."
            ) from exc
        raise
    return fd


def _write_note(fd: int, device: str, slot: int) -> None:
    """Record who holds the lease, for humans (`cat` the lock file). Best effort."""
    started = datetime.now(UTC).isoformat(timespec="seconds")
    cmd = " ".join(sys.argv) if sys.argv else "?"
    note = (
        f"pid={os.getpid()} host={socket.gethostname()} started={started} "
        f"device={device} slot={slot} cmd={cmd}\n"
    )
    try:
        os.ftruncate(fd, 0)
        os.write(fd, note.encode(errors="replace"))
    except OSError as exc:
        log.debug("could not write lease note: %s", exc)


def _holder_pids(paths: Sequence[Path]) -> list[str]:
    """Pids named in the notes of (held) lock files; '?' where the note is missing."""
    pids: list[str] = []
    for path in paths:
        try:
            match = re.search(r"\bpid=(\d+)", path.read_text(errors="replace"))
        except OSError:
            match = None
        pid = match.group(1) if match else "?"
        if pid not in pids:
            pids.append(pid)
    return pids


def acquire(
    lock_dir: Path | str,
    devices: Sequence[str],
    slots_per_gpu: int = 1,
    wait_s: float = 0.0,
    poll_s: float = 0.5,
) -> Lease:
    """Lease a free (device, slot), trying slot 0 of every device first, then slot 1, ...

    Never blocks on a single lock. If every slot is held, says so in one log line (warning)
    and polls, every ``poll_s`` seconds at first and backing off to every 2 s, for up to
    ``wait_s`` seconds (``math.inf``: until a slot frees), then raises :class:`LeaseError`
    naming the holders' pids.
    """
    devices = list(dict.fromkeys(str(d).strip() for d in devices))  # dedupe, keep order
    if not devices or any(not d for d in devices):
        raise ValueError(f"need at least one non-empty device id, got {devices!r}")
    if slots_per_gpu < 1:
        raise ValueError(f"slots_per_gpu must be >= 1, got {slots_per_gpu}")
    if poll_s <= 0:
        raise ValueError(f"poll_s must be > 0, got {poll_s}")
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)

    order = [(device, slot) for slot in range(slots_per_gpu) for device in devices]
    deadline = time.monotonic() + max(wait_s, 0.0)
    poll, waiting = poll_s, False
    while True:
        for device, slot in order:
            path = lock_path(lock_dir, device, slot)
            fd = _try_lock(path)
            if fd is None:
                continue
            _write_note(fd, device, slot)
            lease = Lease(device, slot, path, fd)
            _HELD.append(lease)
            log.info("leased GPU %s slot %d (%s)", device, slot, path)
            return lease
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        if not waiting:
            pids = ", ".join(_holder_pids([lock_path(lock_dir, d, s) for d, s in order]))
            log.warning(
                "waiting for a free GPU slot: all %d slots in %s are held (by pids %s)",
                len(order),
                lock_dir,
                pids,
            )
            waiting = True
        time.sleep(min(poll, remaining))
        poll = min(poll * 1.5, max(poll_s, 2.0))

    n = len(order)
    pids = ", ".join(_holder_pids([lock_path(lock_dir, d, s) for d, s in order]))
    waited = f" after waiting {wait_s:g} s" if wait_s > 0 else ""
    raise LeaseError(
        f"all {n} GPU slots in {lock_dir} are held (by pids {pids}){waited}; "
        f"is --resources gpu=N larger than the number of GPUs x slots_per_gpu "
        f"({len(devices)} x {slots_per_gpu} = {n})?"
    )


def setup_device_env(
    lock_dir: Path | str,
    slots_per_gpu: int = 1,
    env: MutableMapping[str, str] = os.environ,
    *,
    wait_s: float = 0.0,
    poll_s: float = 0.5,
    device_index: int | None = None,
) -> Lease | None:
    """Lease one GPU for this process and narrow ``CUDA_VISIBLE_DEVICES`` to it.

    Call it at start-up, BEFORE torch initialises CUDA (before any ``torch.cuda`` call or
    ``.to("cuda")``; best before ``import torch``): CUDA reads ``CUDA_VISIBLE_DEVICES`` once,
    so a later change has no effect.

    * Under SLURM with at most one GPU given (or none): returns None and changes nothing.
    * No GPU visible (see :func:`visible_gpus`): returns None (a CPU run).
    * GPUs may exist but could not be counted (no nvidia-smi, no NVML, a driver present): sets
      ``env["CUDA_VISIBLE_DEVICES"] = ""`` (CUDA hidden: a CPU run, never an unleased GPU 0),
      logs one warning line and returns None.
    * Otherwise: acquires a lease (see :func:`acquire`), sets
      ``env["CUDA_VISIBLE_DEVICES"] = lease.device`` and returns the lease, held until the
      process exits; the leased GPU is then ``cuda:0`` in this process. When the devices came
      from nvidia-smi or NVML, ``CUDA_DEVICE_ORDER`` defaults to ``PCI_BUS_ID`` so that CUDA
      numbers the GPUs as they do.

    ``device_index`` (``--device cuda:N``): lease GPU N of the visible ones (CUDA's numbering
    before the lease) rather than any free one; :class:`NoSuchGPU` if there is no GPU N.
    Raises :class:`LeaseError` if every slot is still held after ``wait_s`` seconds.
    """
    from_smi = "CUDA_VISIBLE_DEVICES" not in env
    # Under SLURM a job uses what SLURM gave it (nothing, if it set no CUDA_VISIBLE_DEVICES),
    # unless it gave several GPUs to one job: a local Snakemake inside `salloc --gres=gpu:4`
    # must still spread its jobs over them.
    if under_slurm(env) and (from_smi or len(visible_gpus(env)) <= 1):
        log.info("under SLURM: using CUDA_VISIBLE_DEVICES=%s", env.get("CUDA_VISIBLE_DEVICES"))
        return None
    devices = _count_gpus(env)
    if devices is None:
        env["CUDA_VISIBLE_DEVICES"] = ""
        log.warning(
            "cannot count the GPUs (no working nvidia-smi, no NVML) to lease one: CUDA is hidden "
            "from this run (CUDA_VISIBLE_DEVICES=''); set CUDA_VISIBLE_DEVICES to use GPUs"
        )
        return None
    if not devices:
        log.info("no GPU visible: running on CPU")
        return None
    if device_index is not None:
        if not 0 <= device_index < len(devices):
            raise NoSuchGPU(
                f"--device cuda:{device_index}: there are {len(devices)} visible GPU(s) "
                f"({', '.join(devices)}), numbered from 0"
            )
        devices = [devices[device_index]]
    lease = acquire(lock_dir, devices, slots_per_gpu, wait_s=wait_s, poll_s=poll_s)
    if from_smi:
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    env["CUDA_VISIBLE_DEVICES"] = lease.device
    return lease
