"""One training run of the study: `train(settings, data, device) -> TrainingResult`, and its CLI;
`train_members` is the one training loop, for K >= 1 members (K > 1: fused, normdrop.fusion).

    python -m normdrop.train --data resources/prepared/cifar10.pt --dataset cifar10 \
        --model resnet20 --width 32 --norm batch --dropout-rate 0.3 --seed 42 --lr 1e-3 \
        --out results/runs/cifar10/resnet20/bn_dropout/seed42
    python -m normdrop.train ... --seeds 42 43 44 --outs runs/s42 runs/s43 runs/s44  # fused
    python -m normdrop.train ... --lrs 1e-4 1e-3 1e-2 --out runs/cell  # fused, <out>/lr<LR>

The whole dataset lives on the run's device as uint8; shuffling, augmentation and normalization
happen there. Per-step losses and correct counts stay on the device until the epoch ends (one
host sync per epoch). The run checkpoints atomically after every epoch and every
`checkpoint_every_s` seconds (mid-epoch too); rerun it and it resumes exactly where it stopped.
Fused members each write their run folder as their unfused run would, with `fused_with` (the
other members' folders) in meta.json; one checkpoint holds the whole job.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from normdrop import layout, provenance
from normdrop.attempts import EXIT_HELP, AttemptLog, Preempted, StopSignals, accounting
from normdrop.checkpoints import (
    Checkpointer,
    History,
    Resumable,
    first_line,
    load_checkpoint,
    move_aside,
    resume,
)
from normdrop.cli import OneLineErrorParser, add_member_arguments, reporters, setting_help
from normdrop.config import ConfigError, RunConfig
from normdrop.data import (
    DataError,
    Prepared,
    crop_flip,
    data_sha256,
    load_prepared,
    normalize,
    prepare_command,
    standardization,
)
from normdrop.evaluation import Inputs, train_split_accuracy, val_and_test
from normdrop.execution import (
    Execution,
    capture_train_step,
    copy_lr_into,
    cuda_index,
    lr_to_device,
    make_train_step,
    resolve_device,
    resolve_execution,
    use_deterministic_algorithms,
)
from normdrop.fusion import FusedModel, StackedAdam, capture_fused_step, make_fused_step
from normdrop.grid import fusion_refusal  # torch-free: planning refuses the same cells
from normdrop.models import build_model, count_parameters
from normdrop.outputs import epoch_record, steps_frame, write_outputs
from normdrop.progress import epoch_line
from normdrop.tracking import TensorBoardTracker, Tracker


@dataclass
class TrainingResult:
    """What `train` returns; `write_outputs` (normdrop.outputs) turns it into the run's files."""

    steps: pd.DataFrame  # one row per optimizer step: epoch, step, loss
    epochs: pd.DataFrame  # one row per epoch (see `train`)
    status: str  # "completed" or "diverged"
    diverged_epoch: int | None
    train_eval_acc: float  # eval mode, training split, after the last epoch
    param_count: int
    wall_time_s: float
    resumes: list[dict] = field(default_factory=list)  # where a killed run picked up again
    execution: dict = field(default_factory=dict)  # how it ran: Execution.describe()


# --------------------------------------------------------------------------- the run's parts
def make_optimizer(model: torch.nn.Module, cfg: RunConfig, ex: Execution) -> torch.optim.Adam:
    """Adam with the settings' hyperparameters, fused and capturable as the execution needs."""
    hyper = dict(lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(
        model.parameters(), **hyper, fused=ex.fused_adam or None, capturable=ex.cuda_graphs
    )


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: RunConfig):
    """The learning-rate schedule, stepped once per epoch: x lr_gamma after each milestone
    (MultiStepLR); with `warmup_epochs` w > 0, the rate of epoch e < w is first scaled by
    (e + 1) / (w + 1), a linear warm-up (docs/protocol.md)."""
    if cfg.warmup_epochs == 0:
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, list(cfg.lr_milestones), cfg.lr_gamma
        )
    w, milestones, gamma = cfg.warmup_epochs, cfg.lr_milestones, cfg.lr_gamma

    def factor(epoch: int) -> float:  # MultiStepLR's decay times the warm-up's ramp
        decay = gamma ** sum(m <= epoch for m in milestones)
        return min(1.0, (epoch + 1) / (w + 1)) * decay

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class OneRun(Resumable):
    """An unfused run (K = 1): the plain module (or its torch.compile), torch.optim.Adam, and a
    CUDA graph of the step where the execution captures one. What the loop uses of it, as of a
    `FusedRun`: `gens`, `make_step(...)`, `member(m)`, `epoch_lrs()`, `execution(ex)`."""

    forward: object  # the model, or torch.compile(model)
    param_count: int
    graph_step: object = None  # the captured step for full batches, under CUDA graphs
    captured_lr: list = field(default_factory=list)  # the lr tensors the graph reads

    def make_step(self, ex: Execution, x_shape, device, cfg: RunConfig):
        """`step(x (1, B, ...), y (1, B), active (1,)) -> (losses (1,), correct (1,))`: the
        member's step on x[0]; under CUDA graphs the graph captured for full batches of
        `x_shape` (an epoch's last, smaller batch runs eagerly). `active` is not read: a
        diverged run ends the loop."""
        eager = make_train_step(self.forward, self.optimizer, device, ex.bf16, cfg.grad_clip_norm)
        if ex.cuda_graphs:
            self.captured_lr = lr_to_device(self.optimizer, device)
            self.graph_step = capture_train_step(
                eager, self.model, self.optimizer, x_shape, ex.memory_format, device
            )
        full, graph = x_shape[0], self.graph_step

        def step(x, y, active):
            x, y = x[0].contiguous(memory_format=ex.memory_format), y[0]  # (B, C, H, W), (B,)
            loss, n_correct = (graph if graph and len(y) == full else eager)(x, y)
            return loss.view(1), n_correct.view(1)

        return step

    def member(self, m: int) -> torch.nn.Module:
        return self.model

    def epoch_lrs(self) -> list[float]:
        """The rate of the epoch about to run (the scheduler's), where the step reads it."""
        if self.graph_step:
            copy_lr_into(self.captured_lr, self.optimizer)  # the graph reads the scheduler's
        return [float(self.optimizer.param_groups[0]["lr"])]

    def execution(self, ex: Execution) -> dict:
        return ex.describe()


@dataclass
class FusedRun(Resumable):
    """K > 1 members fused (normdrop.fusion): FusedModel, StackedAdam, one generator each; the
    same interface to the loop as `OneRun`."""

    param_count: int  # of one member
    graph_step: object = None  # the captured fused step for full batches, under CUDA graphs

    def make_step(self, ex: Execution, x_shape, device, cfg: RunConfig):
        """`step(x (K, B, ...), y (K, B), active (K,)) -> (losses (K,), correct (K,))`; the
        update of a member not `active` (diverged) is masked. Under CUDA graphs, as K = 1: the
        graph captured for full batches of `x_shape` (per member), eager for the last, smaller
        batch; the graph reads StackedAdam's (K,) lr tensor, which `epoch_lrs` fills in place."""
        eager = make_fused_step(self.model, self.optimizer, device, ex.bf16, cfg.grad_clip_norm)
        if not ex.cuda_graphs:
            return eager
        shape = (len(self.gens), *x_shape)  # (K, B, C, H, W)
        self.graph_step = capture_fused_step(eager, self.model, self.optimizer, shape, device)
        full, graph = x_shape[0], self.graph_step

        def step(x, y, active):
            return (graph if y.shape[1] == full else eager)(x, y, active)

        return step

    def member(self, m: int) -> torch.nn.Module:
        return self.model.member(m)  # member m's slice in its own module, for evaluation

    def epoch_lrs(self) -> list[float]:
        self.optimizer.read_lrs()  # the scheduler's rates into the (K,) tensor a graph reads
        return [float(g["lr"]) for g in self.optimizer.schedule_groups.param_groups]

    def execution(self, ex: Execution) -> dict:
        return {**ex.describe(), "adam": "stacked (normdrop.fusion)", "fused": len(self.gens)}


def build_objects(cfgs: list[RunConfig], data: Prepared, device, ex: Execution):
    """The members' model, optimizer, scheduler and data generators, each seeded from its
    member's seed: the same objects on every call. One member: a `OneRun`; more: a `FusedRun`,
    each member with the initial weights of its unfused run."""
    gens = [torch.Generator(device=device).manual_seed(c.seed) for c in cfgs]
    cfg = cfgs[0]
    if len(cfgs) > 1:
        model = FusedModel(cfgs, data.in_shape, data.num_classes, device, ex.memory_format)
        optimizer = StackedAdam(model.params, cfgs, device, capturable=ex.cuda_graphs)
        scheduler = make_scheduler(optimizer.schedule_groups, cfg)  # each member's own rate
        return FusedRun(model, optimizer, scheduler, gens, count_parameters(model.models[0]))
    torch.manual_seed(cfg.seed)  # model initialization and dropout masks
    model = build_model(cfg.model, data.in_shape, data.num_classes, **cfg.model_settings())
    model = model.to(device, memory_format=ex.memory_format)
    param_count = count_parameters(model)
    optimizer = make_optimizer(model, cfg, ex)
    scheduler = make_scheduler(optimizer, cfg)
    forward = torch.compile(model) if cfg.compile else model
    return OneRun(model, optimizer, scheduler, gens, forward, param_count)


def member_label(cfg: RunConfig) -> str:
    """How a fused job's lines name a member: 'seed 42 lr 0.001'."""
    return f"seed {cfg.seed} lr {cfg.lr:g}"


def _start_or_resume(cfgs, data, device, ex, checkpoint, log) -> tuple:
    """(the job's objects, its History), fresh or as `checkpoint` left them; one not resumable
    is moved aside."""
    run = build_objects(cfgs, data, device, ex)
    ckpt = load_checkpoint(Path(checkpoint), cfgs, log) if checkpoint else None
    if ckpt is None:
        return run, History.fresh(len(cfgs))
    try:
        history = resume(ckpt, run, device, ex)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
        why = f"cannot be resumed ({type(err).__name__}: {first_line(err)})"
        move_aside(Path(checkpoint), why, log)
        return build_objects(cfgs, data, device, ex), History.fresh(len(cfgs))
    log(f"resuming from {checkpoint}: epoch {history.start_epoch + 1}, step {ckpt['step']}")
    if history.resumes[-1].get("bitwise") is False:
        before = history.resumes[-1]["before"]
        log(f"resumed on another device or execution (before: {before}): not bitwise")
    return run, history


# --------------------------------------------------------------------------- training
def train(
    cfg: RunConfig,
    data: Prepared,
    device: torch.device,
    checkpoint: Path | None = None,
    log=print,
    progress=None,
    tracker: Tracker | None = None,
    stop: StopSignals | None = None,
) -> TrainingResult:
    """Train cfg.model on `data` for cfg.epochs epochs; resume from `checkpoint` if it exists.
    One member of `train_members`, which says what is recorded."""
    return train_members([cfg], data, device, checkpoint, log, progress, [tracker], None, stop)[0]


def train_members(
    cfgs: list[RunConfig],
    data: Prepared,
    device: torch.device,
    checkpoint: Path | None = None,
    log=print,
    progress=None,
    trackers: list[Tracker | None] | None = None,
    member_logs: list | None = None,
    stop: StopSignals | None = None,
) -> list[TrainingResult]:
    """Train K >= 1 members `cfgs` (K > 1: equal but for seed and lr, trained fused, each the run
    it replaces; ConfigError if they cannot fuse) on `data` for their epochs; resume from
    `checkpoint` if it exists. One TrainingResult per member.

    Per epoch each member records: epoch (1-based), lr (the rate used during the epoch),
    train_loss_mean and train_loss_sd (mean and sample SD of the epoch's mini-batch losses),
    train_acc (running, train mode), val/test loss and accuracy (eval mode), wall_time_s (since
    the start, summed over resumed sessions). A member whose loss is not finite is recorded as
    diverged after that epoch and frozen (its updates masked); the loop ends when no member is
    left (K = 1: the run stops).

    `log(line)` gets one line per member and epoch and per event (resume, divergence), a
    member's prefixed with its seed and lr when K > 1; `member_logs[m](line)`, if given, gets
    member m's lines unprefixed, as its unfused run logs them. `progress(done, epochs, row)`, if
    given, is called before the first epoch (row None) and after each epoch (row: the last
    member's record), e.g. to drive a progress bar. `trackers[m]` (normdrop.tracking), if given,
    gets member m's records and, at the end, its settings with the final metrics. When `stop`
    (normdrop.attempts) asks, it checkpoints after that step and raises `Preempted`.
    """
    refusal = fusion_refusal(cfgs) if len(cfgs) > 1 else None
    if refusal:
        raise ConfigError(refusal)
    cfg, k = cfgs[0], len(cfgs)  # what the members share: epochs, batches, execution
    ex = resolve_execution(cfg, device)  # bf16, memory format, CUDA graphs, fused Adam
    if cfg.deterministic:
        use_deterministic_algorithms()
    data = data.to(device)
    inputs = Inputs(*standardization(data.mean, data.std), ex.memory_format, ex.bf16)
    run, history = _start_or_resume(cfgs, data, device, ex, checkpoint, log)
    x_shape = (cfg.batch_size, *data.in_shape)  # full batches replay one graph, if captured
    step_fn = run.make_step(ex, x_shape, device, cfg)
    prefixes = [""] if k == 1 else [f"[{member_label(c)}] " for c in cfgs]
    trackers, stop = trackers or [None] * k, stop or StopSignals()

    t0 = time.perf_counter() - history.elapsed
    saver = Checkpointer(checkpoint, cfgs, device, ex, run, history, t0)
    if progress:
        progress(history.start_epoch, cfg.epochs, None)
    for tracker in filter(None, trackers):
        tracker.start(history.start_epoch + 1)  # supersedes what a killed session logged
    for epoch in range(history.start_epoch, cfg.epochs):
        active = [d is None for d in history.diverged]
        if not any(active):
            break
        lrs = run.epoch_lrs()
        losses, correct = _train_epoch(
            epoch, run, data, inputs, cfg, history, saver, step_fn, active, stop
        )
        epoch_losses, correct = losses.cpu(), correct.cpu()  # the epoch's one host sync
        for m in (m for m in range(k) if active[m]):
            member_losses = epoch_losses[:, m].clone()  # (steps,)
            history.step_losses[m].append(member_losses)
            finite = bool(torch.isfinite(member_losses).all())
            member = run.member(m)
            scores = val_and_test(member, data, inputs, cfg.eval_batch_size) if finite else {}
            accuracy = correct[m].item() / len(data.train_y)
            row = epoch_record(epoch, lrs[m], member_losses, accuracy, scores)
            row["wall_time_s"] = time.perf_counter() - t0
            history.epoch_rows[m].append(row)
            lines = [epoch_line(row, cfg.epochs)]
            if trackers[m]:
                trackers[m].log_epoch(row)
            if not finite:
                history.diverged[m] = epoch + 1
                then = "stopping" if k == 1 else "frozen, the other members go on"
                lines.append(f"diverged: non-finite training loss in epoch {epoch + 1}; {then}")
            for line in lines:
                log(prefixes[m] + line)
                if member_logs:
                    member_logs[m](line)
        if progress:
            progress(epoch + 1, cfg.epochs, row)
        if not any(d is None for d in history.diverged):
            break  # nothing left to train: no checkpoint
        saver.save(epoch + 1, 0, None)

    results = []
    for m, tracker in enumerate(trackers):
        train_eval_acc = math.nan  # a diverged member is not evaluated
        if history.diverged[m] is None:
            member = run.member(m)
            train_eval_acc = train_split_accuracy(member, data, inputs, cfg.eval_batch_size)
        rows = history.epoch_rows[m]
        if tracker:
            tracker.finish(cfgs[m].to_dict(), {**rows[-1], "train_eval_acc": train_eval_acc})
        results.append(
            TrainingResult(
                steps=steps_frame(history.step_losses[m]),
                epochs=pd.DataFrame(rows),
                status="diverged" if history.diverged[m] else "completed",
                diverged_epoch=history.diverged[m],
                train_eval_acc=train_eval_acc,
                param_count=run.param_count,
                wall_time_s=time.perf_counter() - t0,
                resumes=history.resumes,
                execution=run.execution(ex),
            )
        )
    return results


def _train_epoch(epoch, run, data, inputs, cfg, history, saver, step_fn, active, stop) -> tuple:
    """One epoch's optimizer steps of the K members: (losses (steps_per_epoch, K), correct
    counts (K,)), on the device. Each member draws its data order, then each batch's
    augmentation, from its own generator, in its unfused run's order. Continues the epoch a
    mid-epoch checkpoint stopped in (history.mid_epoch, then cleared). Raises `Preempted` after
    the step in which `stop` was signalled, its checkpoint written."""
    gens, scale, shift = run.gens, inputs.scale, inputs.shift
    device = data.train_y.device
    n, batch, k = len(data.train_y), cfg.batch_size, len(gens)
    steps_per_epoch = math.ceil(n / batch)  # the last, smaller batch is kept (as a DataLoader)
    run.model.train()
    active_t = torch.tensor(active, device=device)
    if history.mid_epoch is not None:  # resuming inside this epoch
        perms, losses, correct = (t.to(device) for t in history.mid_epoch["tensors"])
        first_step, history.mid_epoch = history.mid_epoch["step"], None
    else:
        perms = torch.stack([torch.randperm(n, device=device, generator=g) for g in gens])
        # (steps, K): a checkpoint's len(losses) is the steps per epoch, as status reads it
        losses = torch.zeros(steps_per_epoch, k, device=device)
        correct = torch.zeros(k, device=device, dtype=torch.long)
        first_step = 0
    for step in range(first_step, steps_per_epoch):
        idx = perms[:, step * batch : (step + 1) * batch]  # (K, B): each member's own order
        x, y = data.train_x[idx], data.train_y[idx]  # (K, B, C, H, W) uint8, (K, B) int64
        if cfg.augment == "crop_flip":
            x = torch.stack([crop_flip(x[m], g) for m, g in enumerate(gens)])
        x = normalize(x, scale, shift)  # (1, C, 1, 1) broadcasts over K and B
        step_losses, n_correct = step_fn(x, y, active_t)
        losses[step] = step_losses  # stays on the device: no sync
        correct += n_correct
        stopping = stop.after_step()  # SIGTERM/SIGUSR1 came: checkpoint now, then stop
        if stopping or saver.due():  # mid-epoch, every checkpoint_every_s: syncs, rarely
            tensors = [t.cpu() for t in (perms, losses, correct)]
            saver.save(epoch, step + 1, {"step": step + 1, "tensors": tensors})
        if stopping:
            raise Preempted(stop.requested, epoch, step + 1)
    run.scheduler.step()
    return losses, correct


# --------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="python -m normdrop.train",
        description=__doc__.split("\n")[0],
        epilog="Example, with the data file prepared by hand first: "
        f"{prepare_command('synthetic', 'synthetic.pt')} && python -m normdrop.train --data "
        "synthetic.pt --dataset synthetic --model cnn --width 8 --epochs 4 --lr-milestones 3 "
        "--out runs/cnn. " + EXIT_HELP,
    )
    p.add_argument(
        "--data", type=Path, required=True,
        help="prepared dataset file (.pt) that `python -m normdrop.data prepare` wrote (required)",
    )  # fmt: skip
    p.add_argument(
        "--out", type=Path, required=True,
        help="run folder for steps.parquet, epochs.parquet and meta.json (required)",
    )  # fmt: skip
    p.add_argument(
        "--checkpoint", type=Path,
        help="checkpoint file; a rerun resumes from it (default: <out>/checkpoint.pt)",
    )  # fmt: skip
    p.add_argument(
        "--lr-from", type=Path,
        help="JSON file whose 'lr' replaces --lr, e.g. the search's selected.json (default: none)",
    )  # fmt: skip
    p.add_argument(
        "--device", default="auto",
        help="where to train (default: auto, CUDA if available; allowed: auto, cpu, cuda, cuda:N)",
    )  # fmt: skip
    p.add_argument(
        "--gpu-lock-dir", type=Path,
        help="folder of GPU lease lock files shared by the runs (default: <out>/../.gpu-locks)",
    )  # fmt: skip
    p.add_argument(
        "--gpu-slots", type=int, default=1,
        help="runs that may share one GPU (default: 1; allowed: >= 1)",
    )  # fmt: skip
    p.add_argument(
        "--gpu-wait-s", type=float, default=math.inf,
        help="seconds to wait for a free GPU slot (default: inf, until one frees; allowed: >= 0)",
    )  # fmt: skip
    p.add_argument(
        "--tensorboard", action=argparse.BooleanOptionalAction, default=True,
        help="write TensorBoard event files while training (default: on)",
    )  # fmt: skip
    p.add_argument(
        "--tensorboard-dir", type=Path,
        help="folder of this run's event files (default: <out>/tensorboard)",
    )  # fmt: skip
    for f in dataclasses.fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        default = None if f.default is dataclasses.MISSING else f.default
        help = setting_help(f)
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help)
        elif isinstance(default, tuple):
            kind = type(default[0]) if default else int
            p.add_argument(flag, type=kind, nargs="*", default=default, help=help)
        else:
            kind = {"width": int, "dataset": str, "model": str}.get(f.name, type(default))
            p.add_argument(flag, type=kind, default=default, required=default is None, help=help)
    add_member_arguments(p)  # --seeds, --lrs: K members trained fused
    return p


def _fail(message: str, code: int = 2) -> int:
    """One line on stderr; 2 for what the user can fix in the command (usage, config, input)."""
    print(f"error: {message}", file=sys.stderr)
    return code


def main(argv=None) -> int:
    parser = _parser()
    parser.set_defaults(variant=None)  # no --variant: named from norm and dropout, as the grid
    args = parser.parse_args(argv)
    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)}
    if settings["variant"] is None:
        settings["variant"] = layout.variant_name(settings["norm"], settings["dropout_rate"])
    extra = {"lr_source": "--lr"}
    if args.lr_from:
        try:
            settings["lr"] = float(json.loads(args.lr_from.read_text())["lr"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            parser.error(f"--lr-from {args.lr_from}: no readable 'lr' ({err})")
        extra["lr_source"] = str(args.lr_from)
    try:
        cfg = RunConfig.from_dict(settings)
        data = load_prepared(args.data, cfg.dataset)  # CPU only: before any GPU wait
    except ConfigError as err:
        parser.error(str(err))
    except DataError as err:
        return _fail(str(err))
    if data.name != cfg.dataset:
        parser.error(f"--data {args.data} holds dataset {data.name!r}, not {cfg.dataset!r}")

    lease = None
    if args.device != "cpu":
        from normdrop import gpu_lease  # before anything initialises CUDA

        # Per host: device ids repeat across the nodes that may share this filesystem.
        lock_dir = (args.gpu_lock_dir or Path(args.out).parent / ".gpu-locks") / platform.node()
        try:
            lease = gpu_lease.setup_device_env(
                lock_dir,
                args.gpu_slots,
                wait_s=args.gpu_wait_s,
                device_index=cuda_index(args.device),
            )
        except gpu_lease.NoSuchGPU as err:
            parser.error(str(err))
        except gpu_lease.LeaseError as err:
            return _fail(str(err), 1)
    try:
        device = resolve_device(args.device, leased=lease is not None)
        execution = resolve_execution(cfg, device)
    except ConfigError as err:
        return _fail(str(err))
    extra["data_file"] = str(args.data)
    extra["data_sha256"] = data_sha256(args.data)  # what the run saw, whatever the path holds later
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    extra["device"] = str(device) + gpu
    extra["gpu_lease"] = None if lease is None else f"{lease.device}/slot{lease.slot}"
    checkpoint = args.checkpoint or Path(args.out) / "checkpoint.pt"
    extra["started_at"] = provenance.now()
    try:  # K = 1 without --seeds and --lrs: the run of --out
        cfgs = member_configs(args, cfg)
        outs, tb_dirs, logs = _member_paths(args, cfgs)
        refusal = fusion_refusal(cfgs) if len(cfgs) > 1 else None
        if refusal:
            raise ConfigError(refusal)
    except ConfigError as err:
        return _fail(str(err))
    trackers = [TensorBoardTracker(d) if args.tensorboard else None for d in tb_dirs]
    fused = "" if len(cfgs) == 1 else " fused:"
    labels = ", ".join(member_label(c) for c in cfgs)
    print(
        f"{cfg.dataset}/{cfg.model}/{cfg.variant}{fused} {labels} on {device}",
        flush=True,  # a job's log shows it has started before its first epoch ends
    )
    print(f"execution: {execution.describe()}", flush=True)

    log, progress, close_progress = reporters(sys.stdout)
    attempts = AttemptLog(checkpoint)  # every attempt's start and end, next to the checkpoint
    try:
        member_logs = [_appender(path) for path in logs] if logs else None
        with attempts.recording(), StopSignals.from_env() as stop:  # SIGTERM, SIGUSR1
            results = train_members(
                cfgs, data, device, checkpoint, log, progress, trackers, member_logs, stop
            )
            extra["accounting"] = accounting(device, extra["data_sha256"])
            extra["attempts"] = attempts.attempts(current_outcome="finished")
            each = zip(cfgs, results, outs, tb_dirs, trackers, strict=True)
            for c, result, out, tb, tracker in each:
                member = {**extra, "tensorboard_dir": str(tb) if tracker else None}
                if len(cfgs) > 1:  # the job's other members' folders, and its checkpoint
                    others = [str(o) for o in outs if o != out]
                    member.update(fused_with=others, fused_checkpoint=str(checkpoint))
                write_outputs(out, c, result, member)
    except Preempted as stopped:  # after a step, its checkpoint written
        log(f"{stopped}; checkpoint {checkpoint} written: rerun to resume (exit {stopped.code})")
        return stopped.code
    except OSError as err:  # disk full, quota, permissions: nothing partial is left behind
        return _fail(
            f"writing {err.filename or args.out} failed: {err.strerror or err}. Earlier outputs "
            f"and the last checkpoint ({checkpoint}) are intact: free space and rerun.",
            1,
        )
    finally:
        close_progress()
    checkpoint.unlink(missing_ok=True)  # the outputs now hold everything it had
    attempts.remove()
    if len(cfgs) == 1:
        print(f"{results[0].status}: wrote {args.out} in {results[0].wall_time_s:.1f}s")
    else:
        statuses = ", ".join(
            f"{member_label(c)} {r.status}" for c, r in zip(cfgs, results, strict=True)
        )
        print(f"fused job done: {statuses}; wrote {len(outs)} run folders")
    return 0


def member_configs(args, cfg: RunConfig) -> list[RunConfig]:
    """The members of `python -m normdrop.train [--seeds ...] [--lrs ...]`: cfg with each seed
    and/or learning rate (one list of length 1 is repeated); [cfg] without either option.
    ConfigError for what to fix."""
    seeds, lrs = args.seeds or [cfg.seed], args.lrs or [cfg.lr]
    k = max(len(seeds), len(lrs))
    if len(seeds) not in (1, k) or len(lrs) not in (1, k):
        raise ConfigError(f"--seeds gives {len(seeds)} members, --lrs {len(lrs)}: give as many")
    seeds, lrs = (v * k if len(v) == 1 else v for v in (seeds, lrs))
    cfgs = [dataclasses.replace(cfg, seed=s, lr=lr) for s, lr in zip(seeds, lrs, strict=True)]
    if len({(c.seed, c.lr) for c in cfgs}) < k:
        raise ConfigError("two members have the same seed and lr: each member must differ")
    return cfgs


def _member_paths(args, cfgs: list[RunConfig]) -> tuple[list, list, list]:
    """(run folders, TensorBoard folders, member logs or []), one per member. Without --seeds and
    --lrs: --out, --tensorboard-dir. With them: --outs (default <out>/seed<S> with --seeds, else
    <out>/lr<LR>), --tensorboard-dirs (default <member>/tensorboard), --member-logs (default:
    none)."""
    if args.seeds is None and args.lrs is None:
        out = Path(args.out)
        return [out], [args.tensorboard_dir or out / "tensorboard"], []
    kind, key = ("train", "seed") if args.seeds else ("lr_search", "lr")
    default = [Path(args.out) / layout.run_key(kind, **{key: getattr(c, key)}) for c in cfgs]

    def per_member(given, fallback):
        if given is not None and len(given) != len(cfgs):
            raise ConfigError(f"{len(given)} folders for {len(cfgs)} members: give one per member")
        return list(given) if given is not None else fallback

    outs = per_member(args.outs, default)
    tb_dirs = per_member(args.tensorboard_dirs, [Path(o) / "tensorboard" for o in outs])
    return outs, tb_dirs, per_member(args.member_logs, [])


def _appender(path: Path):
    """A function that appends a line to `path` (made with its folder), flushed at once."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)

    def write(line: str) -> None:
        with open(path, "a") as f:
            f.write(line + "\n")

    return write


if __name__ == "__main__":
    raise SystemExit(main())
