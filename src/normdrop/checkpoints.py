"""A training job's checkpoint (one run, or K fused members): written atomically after every
epoch and every `checkpoint_every_s` seconds (mid-epoch too), read back with weights_only, and
resumed exactly where it stopped, RNG states included. A checkpoint of other settings, or one
that cannot be read or resumed, is moved aside (never deleted) and the run starts over; one
written on another device type or under another execution resumes, marked "not bitwise" in its
resume entry.

The file format is this module's: `Checkpointer.save` writes it, `load_checkpoint` and `resume`
read it for training, and `read_checkpoint_summary` gives the status command what it needs
(progress, elapsed time, settings) as a `CheckpointSummary`. torch is imported inside the
functions that use it, not at the top: the status command imports this module where torch may
be absent.

One format whatever the number of members K (an unfused run is K = 1): the members' settings and
hashes, per member its history (epoch rows, step losses, divergence) and data generator state.
Format 2 replaced format 1 (one run only, and a second copy of this code for fused jobs): a
format-1 checkpoint is moved aside with its one line and its run starts over; keeping K = 1 files
readable would have kept two readers for the few runs in flight at the upgrade.
"""

from __future__ import annotations

import hashlib
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from normdrop.config import RunConfig
from normdrop.storage import atomic_write_torch

if TYPE_CHECKING:
    import torch

CHECKPOINT_FORMAT = 2


@dataclass
class Resumable:
    """The live objects of a job (K >= 1 members) that a checkpoint saves and puts back."""

    model: Any  # torch.nn.Module (K = 1) or fusion.FusedModel: state_dict, load_state_dict
    optimizer: Any  # torch.optim.Adam (K = 1) or fusion.StackedAdam
    scheduler: Any  # a torch.optim.lr_scheduler (MultiStepLR or LambdaLR)
    gens: list  # per member: its torch.Generator of data order and augmentation, on the device


@dataclass
class History:
    """What a job's members have recorded, and where the job goes on; saved in and resumed from
    checkpoints. The lists hold one entry per member."""

    epoch_rows: list[list[dict]]  # per member: its epochs.parquet rows
    step_losses: list[list[torch.Tensor]]  # per member: per finished epoch, (steps,), host
    diverged: list[int | None]  # per member: the epoch it diverged in (1-based), or None
    resumes: list[dict] = field(default_factory=list)
    start_epoch: int = 0  # 0-based epoch to run next (or to continue, if mid_epoch)
    # {"step", "tensors": [perms (K, n), losses (steps, K), correct (K,)]} of that epoch
    mid_epoch: dict | None = None
    elapsed: float = 0.0  # training seconds of the earlier sessions

    @classmethod
    def fresh(cls, k: int) -> History:
        return cls([[] for _ in range(k)], [[] for _ in range(k)], [None] * k)


def settings_hashes(cfgs: list[RunConfig]) -> list[str]:
    return [c.settings_hash() for c in cfgs]


class Checkpointer:
    """Writes the job's checkpoint atomically: after each epoch and, mid-epoch, when `due()`
    (every checkpoint_every_s seconds, the members' common setting). No path: writes nothing
    and is never due."""

    def __init__(self, path, cfgs, device, ex, live: Resumable, history: History, t0: float):
        self.path, self.cfgs, self.device, self.ex = path, cfgs, device, ex
        self.live, self.history, self.t0 = live, history, t0
        self.last_save = time.monotonic()

    def due(self) -> bool:
        every = self.cfgs[0].checkpoint_every_s
        return bool(self.path) and time.monotonic() - self.last_save > every

    def save(self, epoch: int, step: int, mid: dict | None) -> None:
        if not self.path:
            return
        live, history = self.live, self.history
        atomic_write_torch(
            self.path,
            {
                "format": CHECKPOINT_FORMAT,
                "settings": self.cfgs[0].to_dict(),  # the job's epochs, save interval: status
                "members": [c.to_dict() for c in self.cfgs],  # each member's, for the status
                "settings_hashes": settings_hashes(self.cfgs),
                "ran_as": ran_as(self.device, self.ex),  # a resume under another is marked
                "epoch": epoch,  # 0-based epoch to run next (or to continue, if mid-epoch)
                "step": step,
                "mid_epoch": mid,
                "model": live.model.state_dict(),
                "optimizer": live.optimizer.state_dict(),
                "scheduler": live.scheduler.state_dict(),
                "rng": _rng_state(self.device, live.gens),
                "epoch_rows": history.epoch_rows,
                "step_losses": history.step_losses,
                "diverged": history.diverged,
                "resumes": history.resumes,
                "elapsed": time.perf_counter() - self.t0,
            },
        )
        self.last_save = time.monotonic()


def _rng_state(device, gens):
    import torch

    state = {"cpu": torch.get_rng_state(), "data": [g.get_state() for g in gens]}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict, device: torch.device, gens: list) -> bool:
    """The RNG states of a checkpoint put back: the CPU generator, the members' data generators
    `gens` and, on CUDA, the default CUDA generator (dropout). A state written on another device
    type does not fit (a CPU generator's state is 5056 bytes, a CUDA one's 16: seed and Philox
    offset); that generator is then seeded from the saved state's bytes instead (deterministic,
    but not the stream an uninterrupted run would have drawn). True if every state was put back
    as is."""
    import torch

    torch.set_rng_state(state["cpu"])
    bitwise = True
    for gen, saved in zip(gens, state["data"], strict=True):
        if saved.numel() == gen.get_state().numel():
            gen.set_state(saved)
        else:
            gen.manual_seed(_seed_from(saved))
            bitwise = False
    if device.type == "cuda":
        saved = state.get("cuda")
        if saved is not None and saved.numel() == torch.cuda.get_rng_state(device).numel():
            torch.cuda.set_rng_state(saved, device)
        else:
            torch.cuda.manual_seed(_seed_from(state["cpu"] if saved is None else saved))
            bitwise = False
    return bitwise


def _seed_from(state: torch.Tensor) -> int:
    return int.from_bytes(hashlib.sha256(state.numpy().tobytes()).digest()[:8], "little")


def restore_optimizer(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """`saved` (an optimizer state_dict) loaded into `optimizer`, keeping the flags of the
    execution that runs now: load_state_dict would put back the saving run's `capturable`,
    `fused` and `foreach` (an eager checkpoint resumed under CUDA graphs would then fail to
    capture, and a CPU one resumed on CUDA would run unfused). Loading with the current flags
    also moves Adam's step counts where they belong (on the device when capturable or fused)."""
    flags = ("capturable", "fused", "foreach")
    groups = [
        {**group, **{k: now[k] for k in flags if k in now}}
        for group, now in zip(saved["param_groups"], optimizer.param_groups, strict=True)
    ]
    optimizer.load_state_dict({**saved, "param_groups": groups})
    _state_like_params(optimizer)


def _state_like_params(optimizer: torch.optim.Optimizer) -> None:
    """Each restored state tensor of a param's shape (Adam's moments) laid out as its param:
    load_state_dict keeps the checkpoint's strides (contiguous from a CPU run), and CUDA's fused
    Adam refuses params, grads and states of different layouts (channels_last conv weights)."""
    import torch

    for param, state in optimizer.state.items():
        for key, value in state.items():
            same_shape = torch.is_tensor(value) and value.shape == param.shape
            if same_shape and value.stride() != param.stride():
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def load_checkpoint(path: Path, cfgs: list[RunConfig], log) -> dict | None:
    """The checkpoint at `path` if it belongs to these members' settings (in this order); a
    stale or broken one is moved
    aside (never deleted: it may still be wanted) and the run starts from epoch 1.

    It is read with weights_only=True: a file on a shared filesystem must not be able to run code
    when loaded, so only tensors and plain containers are accepted (what `train` saves)."""
    import torch

    if not path.exists():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        problem = None
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            problem = f"format {ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt)}"
        elif ckpt["settings_hashes"] != settings_hashes(cfgs):
            problem = "different settings or members"
    except pickle.UnpicklingError as err:
        unsafe = "Weights only load failed" in str(err)  # torch's words for a refused object
        problem = "unsafe" if unsafe else f"unreadable (UnpicklingError: {first_line(err)})"
    except Exception as err:  # truncated or unreadable
        problem = f"unreadable ({type(err).__name__}: {first_line(err)})"
    if problem is None:
        return ckpt
    if problem == "unsafe":
        why = "cannot be read safely (weights_only: it holds objects other than tensors and plain "
        why += "containers)"
    else:
        why = f"not usable ({problem})"
    move_aside(path, why, log)
    return None


def move_aside(path: Path, why: str, log) -> None:
    aside = path.with_name(f"{path.name}.stale-{int(time.time())}")
    path.rename(aside)
    log(f"checkpoint {path} {why}: moved aside to {aside}; starting from epoch 1")


def first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [""])[0]


def resume(ckpt: dict, live: Resumable, device: torch.device, ex) -> History:
    """The run's objects and history as `ckpt` left them. A checkpoint written on another device
    type or under another execution (not in the settings hash, on purpose) resumes too, with the
    optimizer set for this execution; as its numbers cannot continue bitwise, that is logged and
    recorded in the resume's entry (meta.json "resumes")."""
    import torch

    live.model.load_state_dict(ckpt["model"])
    if isinstance(live.optimizer, torch.optim.Optimizer):  # K = 1: with this execution's flags
        restore_optimizer(live.optimizer, ckpt["optimizer"])
        _lr_as_float(live.optimizer)
    else:  # fusion.StackedAdam: its own state, its rates put back as floats
        live.optimizer.load_state_dict(ckpt["optimizer"])
    live.scheduler.load_state_dict(ckpt["scheduler"])
    rng_kept = restore_rng(ckpt["rng"], device, live.gens)
    now = ran_as(device, ex)
    # Checkpoints from before "ran_as" tell only their device, by a CUDA RNG state.
    before = ckpt.get("ran_as", {"device": "cuda" if "cuda" in ckpt["rng"] else "cpu"})
    changed = {k: v for k, v in before.items() if now.get(k) != v}
    resume = {"epoch": ckpt["epoch"], "step": ckpt["step"]}
    if changed or not rng_kept:
        resume.update(bitwise=False, before={"device": before["device"], **changed})
    history = History(
        epoch_rows=ckpt["epoch_rows"],
        step_losses=ckpt["step_losses"],
        diverged=ckpt["diverged"],
        resumes=ckpt["resumes"] + [resume],
        start_epoch=ckpt["epoch"],
        mid_epoch=ckpt["mid_epoch"],
        elapsed=ckpt["elapsed"],
    )
    return history


def ran_as(device: torch.device, ex) -> dict:
    """How a session ran, as its checkpoints record it: device type, torch version (kernels
    change between versions) and the Execution's description."""
    import torch

    return {
        "device": device.type,
        "torch": str(torch.__version__),
        **ex.describe(),
    }  # a str: weights_only


def _lr_as_float(optimizer) -> None:
    """The learning rate as a float (eager Adam); checkpoints may hold a tensor (graphs)."""
    for group in optimizer.param_groups:
        group["lr"] = float(group["lr"])


# --------------------------------------------------------------------------- for the status
@dataclass(frozen=True)
class CheckpointSummary:
    """What the status command reads of a checkpoint: `done` (epochs finished, fractional when
    saved mid-epoch), `elapsed_s` (training seconds so far), the job's `settings` (its first
    member's) and `members`, one per member (one for an unfused run); or, when the file cannot
    be read here, `problem` (one line: why) and the rest None or empty."""

    done: float | None = None
    elapsed_s: float | None = None
    settings: dict | None = None
    problem: str | None = None
    members: tuple[MemberSummary, ...] = ()


@dataclass(frozen=True)
class MemberSummary:
    """One member of a checkpointed job: its settings, and the epoch it diverged in (1-based;
    None while it goes on: its progress is then the job's `done`)."""

    settings: dict
    diverged_epoch: int | None = None


def read_checkpoint_summary(path: Path) -> CheckpointSummary | None:
    """The summary of the checkpoint at `path`; None when there is no file. A checkpoint being
    replaced, of another format, refused by weights_only, or unreadable because torch is not
    installed gives a summary whose `problem` says so (never an exception): the run's state then
    comes from its log."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        import torch
    except ImportError:
        return CheckpointSummary(problem="torch is not installed here: checkpoint not read")
    try:  # mmap: only the few numbers read here come off the disk, not the model's weights
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:  # renamed away (moved aside, or the run finished) meanwhile
        return None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        return CheckpointSummary(problem=f"unreadable ({type(err).__name__}: {first_line(err)})")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        return CheckpointSummary(problem=f"format {found}, not {CHECKPOINT_FORMAT}")
    done = float(ckpt["epoch"])
    mid = ckpt["mid_epoch"]
    if mid:  # tensors = (perms, per-step losses (steps, K), correct): len(losses) = steps
        done += mid["step"] / len(mid["tensors"][1])
    members = tuple(
        MemberSummary(settings, diverged)
        for settings, diverged in zip(ckpt["members"], ckpt["diverged"], strict=True)
    )
    return CheckpointSummary(done, float(ckpt["elapsed"]), ckpt["settings"], None, members)
