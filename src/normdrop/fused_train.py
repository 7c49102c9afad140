"""A fused job: K runs of one architecture trained as one model (normdrop.fusion), each member's
outputs written as its unfused run's (steps.parquet, epochs.parquet, meta.json with
`fused_with`, TensorBoard events). `train_fused(cfgs, data, device) -> [TrainingResult]`.

    python -m normdrop.train --seeds 42 43 44 --outs runs/s42 runs/s43 runs/s44 ...
    python -m normdrop.train --lrs 1e-4 1e-3 1e-2 --outs runs/lr1e-4 runs/lr1e-3 runs/lr1e-2 ...

The epoch follows train.train step for step, per member: its own data order and augmentation
(its own generator), the epoch's record, evaluation (of its slice, by the unfused code) and
divergence. A member whose loss is not finite is recorded as diverged after that epoch and then
frozen (its updates masked); the others go on. One checkpoint holds the whole job, after every
epoch and every checkpoint_every_s seconds; a rerun resumes from it, bitwise on the same device
and execution.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from normdrop import layout
from normdrop.attempts import AttemptLog, Preempted, StopSignals, accounting
from normdrop.checkpoints import first_line, move_aside, ran_as
from normdrop.cli import reporters
from normdrop.config import ConfigError, RunConfig
from normdrop.data import Prepared, crop_flip, normalize, standardization
from normdrop.evaluation import Inputs, train_split_accuracy, val_and_test
from normdrop.execution import resolve_execution, use_deterministic_algorithms
from normdrop.fusion import (
    FusedModel,
    FusedObjects,
    StackedAdam,
    make_fused_step,
)
from normdrop.grid import fusion_refusal  # torch-free: planning refuses the same cells
from normdrop.models import count_parameters
from normdrop.outputs import epoch_record, steps_frame, write_outputs
from normdrop.progress import epoch_line
from normdrop.storage import atomic_write_torch
from normdrop.tracking import TensorBoardTracker
from normdrop.train import TrainingResult, make_scheduler

FUSED_CHECKPOINT_FORMAT = "fused-1"


@dataclass
class FusedHistory:
    """What a fused job has recorded, per member, and where it goes on (as checkpoints.History)."""

    rows: list[list[dict]]  # per member: its epochs.parquet rows
    step_losses: list[list[torch.Tensor]]  # per member: per finished epoch, host
    diverged: list[int | None]  # per member: the epoch it diverged in (1-based), or None
    resumes: list[dict] = field(default_factory=list)
    start_epoch: int = 0
    mid_epoch: dict | None = None  # {"step", "tensors": [perms (K, n), losses (S, K), correct]}
    elapsed: float = 0.0

    @classmethod
    def fresh(cls, k: int) -> FusedHistory:
        return cls([[] for _ in range(k)], [[] for _ in range(k)], [None] * k)


def member_label(cfg: RunConfig) -> str:
    return f"seed {cfg.seed} lr {cfg.lr:g}"


def build_fused(cfgs: list[RunConfig], data: Prepared, device) -> FusedObjects:
    """Model, optimizer, scheduler and the members' generators, seeded: the same on every call."""
    model = FusedModel(cfgs, data.in_shape, data.num_classes, device)
    optimizer = StackedAdam(model.params, cfgs, device)
    scheduler = make_scheduler(optimizer.schedule_groups, cfgs[0])
    gens = [torch.Generator(device=device).manual_seed(c.seed) for c in cfgs]
    return FusedObjects(model, optimizer, scheduler, gens, count_parameters(model.models[0]))


def _hashes(cfgs) -> list[str]:
    return [c.settings_hash() for c in cfgs]


def save_checkpoint(path, cfgs, device, ex, run: FusedObjects, hist, t0, epoch, step, mid):
    if not path:
        return
    rng = {"cpu": torch.get_rng_state(), "data": [g.get_state() for g in run.gens]}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    atomic_write_torch(
        path,
        {
            "format": FUSED_CHECKPOINT_FORMAT,
            "settings": cfgs[0].to_dict(),  # the first member's: what the status reads
            "members": [c.to_dict() for c in cfgs],
            "settings_hashes": _hashes(cfgs),
            "ran_as": ran_as(device, ex),
            "epoch": epoch,
            "step": step,
            "mid_epoch": mid,
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "rng": rng,
            "rows": hist.rows,
            "step_losses": hist.step_losses,
            "diverged": hist.diverged,
            "resumes": hist.resumes,
            "elapsed": time.perf_counter() - t0,
        },
    )


def _resume(path, cfgs, data, device, ex, log) -> tuple[FusedObjects, FusedHistory]:
    """The job's objects, fresh or as the checkpoint at `path` left them; a checkpoint of other
    members or settings, or one that cannot be read or resumed, is moved aside with one line."""
    run = build_fused(cfgs, data, device)
    if not path or not Path(path).exists():
        return run, FusedHistory.fresh(len(cfgs))
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if ckpt.get("format") != FUSED_CHECKPOINT_FORMAT:
            raise ValueError(f"format {ckpt.get('format')}, not {FUSED_CHECKPOINT_FORMAT}")
        if ckpt["settings_hashes"] != _hashes(cfgs):
            raise ValueError("other members or settings")
        run.model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng"]["cpu"])
        for gen, state in zip(run.gens, ckpt["rng"]["data"], strict=True):
            gen.set_state(state)
        if device.type == "cuda":
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
    except Exception as err:  # unreadable, stale or from another device: start over
        move_aside(Path(path), f"cannot be resumed ({type(err).__name__}: {first_line(err)})", log)
        return build_fused(cfgs, data, device), FusedHistory.fresh(len(cfgs))
    resume = {"epoch": ckpt["epoch"], "step": ckpt["step"]}
    changed = {k: v for k, v in ckpt["ran_as"].items() if ran_as(device, ex).get(k) != v}
    if changed:
        resume.update(bitwise=False, before=changed)
    hist = FusedHistory(
        ckpt["rows"],
        ckpt["step_losses"],
        ckpt["diverged"],
        ckpt["resumes"] + [resume],
        ckpt["epoch"],
        ckpt["mid_epoch"],
        ckpt["elapsed"],
    )
    log(f"resuming from {path}: epoch {hist.start_epoch + 1}, step {ckpt['step']}")
    return run, hist


def train_fused(
    cfgs: list[RunConfig],
    data: Prepared,
    device: torch.device,
    checkpoint: Path | None = None,
    log=print,
    trackers: list | None = None,
    member_logs: list | None = None,
    stop: StopSignals | None = None,
) -> list[TrainingResult]:
    """Train the members `cfgs` (equal but for seed and lr) fused; one TrainingResult each, as
    train.train returns for that member's unfused run. ConfigError if they cannot fuse.
    `log` gets every line, a member's prefixed with its seed and lr; `member_logs[m](line)`, if
    given, gets member m's epoch lines as its unfused run logs them. When `stop`
    (normdrop.attempts) asks, it checkpoints after that step and raises `Preempted`."""
    refusal = fusion_refusal(cfgs)
    if refusal:
        raise ConfigError(refusal)
    cfg, k = cfgs[0], len(cfgs)
    ex = resolve_execution(cfg, device)
    if cfg.deterministic:
        use_deterministic_algorithms()
    data = data.to(device)
    inputs = Inputs(*standardization(data.mean, data.std), ex.memory_format, ex.bf16)
    run, hist = _resume(checkpoint, cfgs, data, device, ex, log)
    step_fn = make_fused_step(run.model, run.optimizer, device, ex.bf16, cfg.grad_clip_norm)
    trackers, stop = trackers or [None] * k, stop or StopSignals()
    t0 = time.perf_counter() - hist.elapsed
    last_save = [time.monotonic()]

    def save(epoch, step, mid):
        save_checkpoint(checkpoint, cfgs, device, ex, run, hist, t0, epoch, step, mid)
        last_save[0] = time.monotonic()

    def due():
        return bool(checkpoint) and time.monotonic() - last_save[0] > cfg.checkpoint_every_s

    for tracker in trackers:
        if tracker:
            tracker.start(hist.start_epoch + 1)
    for epoch in range(hist.start_epoch, cfg.epochs):
        active = [d is None for d in hist.diverged]
        if not any(active):
            break
        lrs = [float(g["lr"]) for g in run.optimizer.schedule_groups.param_groups]
        losses, correct = _fused_epoch(
            epoch, run, data, inputs, cfg, hist, step_fn, active, save, due, stop
        )
        epoch_losses, correct = losses.cpu(), correct.cpu()  # the epoch's one host sync
        for m in (m for m in range(k) if active[m]):
            hist.step_losses[m].append(epoch_losses[m].clone())
            finite = bool(torch.isfinite(epoch_losses[m]).all())
            member = run.model.member(m)
            scores = val_and_test(member, data, inputs, cfg.eval_batch_size) if finite else {}
            n_correct = correct[m].item() / len(data.train_y)
            row = epoch_record(epoch, lrs[m], epoch_losses[m], n_correct, scores)
            row["wall_time_s"] = time.perf_counter() - t0
            hist.rows[m].append(row)
            log(f"[{member_label(cfgs[m])}] {epoch_line(row, cfg.epochs)}")
            if member_logs:
                member_logs[m](epoch_line(row, cfg.epochs))
            if trackers[m]:
                trackers[m].log_epoch(row)
            if not finite:
                hist.diverged[m] = epoch + 1
                log(f"[{member_label(cfgs[m])}] diverged: non-finite training loss in epoch "
                    f"{epoch + 1}; frozen, the other members go on")  # fmt: skip
        save(epoch + 1, 0, None)

    results = []
    for m, tracker in enumerate(trackers):
        acc = math.nan  # a diverged member is not evaluated
        if hist.diverged[m] is None:
            member = run.model.member(m)
            acc = train_split_accuracy(member, data, inputs, cfg.eval_batch_size)
        if tracker:
            tracker.finish(cfgs[m].to_dict(), {**hist.rows[m][-1], "train_eval_acc": acc})
        results.append(
            TrainingResult(
                steps=steps_frame(hist.step_losses[m]),
                epochs=pd.DataFrame(hist.rows[m]),
                status="diverged" if hist.diverged[m] else "completed",
                diverged_epoch=hist.diverged[m],
                train_eval_acc=acc,
                param_count=run.param_count,
                wall_time_s=time.perf_counter() - t0,
                resumes=hist.resumes,
                execution={**ex.describe(), "adam": "stacked (normdrop.fusion)", "fused": k},
            )
        )
    return results


def _fused_epoch(epoch, run, data, inputs, cfg, hist, step_fn, active, save, due, stop) -> tuple:
    """One epoch's fused steps: (losses (K, steps), correct (K,)), on the device; continues a
    mid-epoch checkpoint's epoch (hist.mid_epoch, then cleared). Each member draws its data
    order, then each batch's augmentation, from its own generator, in its unfused run's order."""
    device = data.train_y.device
    n, batch, k = len(data.train_y), cfg.batch_size, len(run.gens)
    steps_per_epoch = math.ceil(n / batch)
    run.model.train()
    active_t = torch.tensor(active, device=device)
    if hist.mid_epoch is not None:
        perms, losses, correct = (t.to(device) for t in hist.mid_epoch["tensors"])
        first_step, hist.mid_epoch = hist.mid_epoch["step"], None
    else:
        perms = torch.stack([torch.randperm(n, device=device, generator=g) for g in run.gens])
        # (steps, K): a checkpoint's len(losses) is the steps per epoch, as status reads it
        losses = torch.zeros(steps_per_epoch, k, device=device)
        correct = torch.zeros(k, device=device, dtype=torch.long)
        first_step = 0
    for step in range(first_step, steps_per_epoch):
        idx = perms[:, step * batch : (step + 1) * batch]  # (K, B): each member's own order
        x, y = data.train_x[idx], data.train_y[idx]  # (K, B, C, H, W) uint8, (K, B)
        if cfg.augment == "crop_flip":
            x = torch.stack([crop_flip(x[m], g) for m, g in enumerate(run.gens)])
        x = normalize(x, inputs.scale, inputs.shift)  # (1, C, 1, 1) broadcasts over K and B
        step_losses, n_correct = step_fn(x, y, active_t)
        losses[step] = step_losses
        correct += n_correct
        stopping = stop.after_step()  # SIGTERM/SIGUSR1 came: checkpoint now, then stop
        if stopping or due():
            tensors = [t.cpu() for t in (perms, losses, correct)]
            save(epoch, step + 1, {"step": step + 1, "tensors": tensors})
        if stopping:
            raise Preempted(stop.requested, epoch, step + 1)
    run.scheduler.step()
    run.optimizer.read_lrs()
    return losses.T, correct


# --------------------------------------------------------------------------- CLI
def _appender(path: Path):
    """A function that appends a line to `path` (made with its folder), flushed at once."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)

    def write(line: str) -> None:
        with open(path, "a") as f:
            f.write(line + "\n")

    return write


def member_configs(args, cfg: RunConfig) -> list[RunConfig]:
    """The members of `python -m normdrop.train --seeds ... | --lrs ...`: cfg with each seed
    and/or learning rate (one list of length 1 is repeated); ConfigError for what to fix."""
    seeds, lrs = args.seeds or [cfg.seed], args.lrs or [cfg.lr]
    k = max(len(seeds), len(lrs))
    if len(seeds) not in (1, k) or len(lrs) not in (1, k):
        raise ConfigError(f"--seeds gives {len(seeds)} members, --lrs {len(lrs)}: give as many")
    seeds, lrs = (v * k if len(v) == 1 else v for v in (seeds, lrs))
    cfgs = [dataclasses.replace(cfg, seed=s, lr=lr) for s, lr in zip(seeds, lrs, strict=True)]
    if len({(c.seed, c.lr) for c in cfgs}) < k:
        raise ConfigError("two members have the same seed and lr: each member must differ")
    return cfgs


def _member_dirs(args, cfgs, given, default) -> list[Path]:
    if given is None:
        return [default(c) for c in cfgs]
    if len(given) != len(cfgs):
        raise ConfigError(f"{len(given)} folders for {len(cfgs)} members: give one per member")
    return list(given)


def main_fused(args, cfg: RunConfig, data, device, checkpoint: Path, extra: dict) -> int:
    """`python -m normdrop.train` with --seeds or --lrs (train.main hands over here once the
    data, device and lease are set up): trains the members fused and writes each one's folder
    as its unfused run would, with `fused_with` (the other members' folders) in meta.json."""
    by_seed = args.seeds is not None

    def default_out(c):
        key = (
            layout.run_key("train", seed=c.seed)
            if by_seed
            else layout.run_key("lr_search", lr=c.lr)
        )
        return Path(args.out) / key

    try:
        cfgs = member_configs(args, cfg)
        outs = _member_dirs(args, cfgs, args.outs, default_out)
        tb = _member_dirs(args, cfgs, args.tensorboard_dirs, lambda c: None)
        logs = _member_dirs(args, cfgs, args.member_logs, lambda c: None)
        refusal = fusion_refusal(cfgs)
        if refusal:
            raise ConfigError(refusal)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    tb = [d or Path(out) / "tensorboard" for d, out in zip(tb, outs, strict=True)]
    trackers = [TensorBoardTracker(d) if args.tensorboard else None for d in tb]
    labels = ", ".join(member_label(c) for c in cfgs)
    print(f"{cfg.dataset}/{cfg.model}/{cfg.variant} fused: {labels} on {device}", flush=True)
    log, progress, close_progress = reporters(sys.stdout)
    attempts = AttemptLog(checkpoint)  # the job's attempts: each member's meta.json has them
    try:
        member_logs = [_appender(path) for path in logs] if args.member_logs else None
        with attempts.recording(), StopSignals.from_env() as stop:  # SIGTERM, SIGUSR1
            results = train_fused(cfgs, data, device, checkpoint, log, trackers, member_logs, stop)
            extra["accounting"] = accounting(device, extra["data_sha256"])
            extra["attempts"] = attempts.attempts(current_outcome="finished")
            for m, (c, result, out) in enumerate(zip(cfgs, results, outs, strict=True)):
                others = [str(o) for o in outs if o != out]
                member = {**extra, "fused_with": others, "fused_checkpoint": str(checkpoint)}
                member["tensorboard_dir"] = str(tb[m]) if trackers[m] else None
                write_outputs(out, c, result, member)
    except Preempted as stopped:  # after a step, its checkpoint written
        log(f"{stopped}; checkpoint {checkpoint} written: rerun to resume (exit {stopped.code})")
        return stopped.code
    except OSError as err:  # disk full, quota, permissions: the checkpoint is intact
        why = f"writing {err.filename} failed: {err.strerror or err}"
        print(f"error: {why}. The checkpoint {checkpoint} is intact: free space and rerun.",
              file=sys.stderr)  # fmt: skip
        return 1
    finally:
        close_progress()
    checkpoint.unlink(missing_ok=True)  # the members' outputs now hold everything it had
    attempts.remove()
    statuses = ", ".join(
        f"{member_label(c)} {r.status}" for c, r in zip(cfgs, results, strict=True)
    )
    print(f"fused job done: {statuses}; wrote {len(outs)} run folders")
    return 0
