"""One training run of the study: `train(settings, data, device) -> TrainingResult`, and its CLI.

    python -m normdrop.train --data resources/prepared/cifar10.pt --dataset cifar10 \
        --model resnet20 --width 32 --norm batch --dropout-rate 0.3 --seed 42 --lr 1e-3 \
        --out results/runs/cifar10/resnet20/bn_dropout/seed42

The whole dataset lives on the run's device as uint8; shuffling, augmentation and normalization
happen there. Per-step losses and correct counts stay on the device until the epoch ends (one
host sync per epoch). The run checkpoints atomically after every epoch and every
`checkpoint_every_s` seconds (mid-epoch too); rerun it and it resumes exactly where it stopped.
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
class RunObjects(Resumable):
    """One run's objects, from the settings alone: what its checkpoint saves, and forward."""

    forward: object  # the model, or torch.compile(model)
    param_count: int


def build_objects(cfg: RunConfig, data: Prepared, device, ex: Execution) -> RunObjects:
    """Model, optimizer, scheduler and data generator, seeded: the same objects on every call."""
    torch.manual_seed(cfg.seed)  # model initialization and dropout masks
    model = build_model(cfg.model, data.in_shape, data.num_classes, **cfg.model_settings())
    model = model.to(device, memory_format=ex.memory_format)
    param_count = count_parameters(model)
    optimizer = make_optimizer(model, cfg, ex)
    scheduler = make_scheduler(optimizer, cfg)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    forward = torch.compile(model) if cfg.compile else model
    return RunObjects(model, optimizer, scheduler, gen, forward, param_count)


def _start_or_resume(cfg, data, device, ex, checkpoint, log) -> tuple[RunObjects, History]:
    """The run's objects, fresh or as `checkpoint` left them; one not resumable is moved aside."""
    run = build_objects(cfg, data, device, ex)
    ckpt = load_checkpoint(Path(checkpoint), cfg, log) if checkpoint else None
    if ckpt is None:
        return run, History()
    try:
        history = resume(ckpt, run, device, ex)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
        why = f"cannot be resumed ({type(err).__name__}: {first_line(err)})"
        move_aside(Path(checkpoint), why, log)
        return build_objects(cfg, data, device, ex), History()
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

    Per epoch it records: epoch (1-based), lr (the rate used during the epoch), train_loss_mean
    and train_loss_sd (mean and sample SD of the epoch's mini-batch losses), train_acc (running,
    train mode), val/test loss and accuracy (eval mode), wall_time_s (since the start, summed over
    resumed sessions). A non-finite loss ends the run after that epoch, as 'diverged'.

    `log(line)` gets one line per epoch and per event (resume, divergence); `progress(done,
    epochs, row)`, if given, is called before the first epoch (row None) and after each epoch
    (row: that epoch's record), e.g. to drive a progress bar. `tracker` (normdrop.tracking), if
    given, gets each epoch's record and, at the end, the settings with the final metrics. When
    `stop` (normdrop.attempts) asks, it checkpoints after that step and raises `Preempted`.
    """
    ex = resolve_execution(cfg, device)  # bf16, memory format, CUDA graphs, fused Adam
    if cfg.deterministic:
        use_deterministic_algorithms()
    data = data.to(device)
    inputs = Inputs(*standardization(data.mean, data.std), ex.memory_format, ex.bf16)
    run, history = _start_or_resume(cfg, data, device, ex, checkpoint, log)

    x_shape = (cfg.batch_size, *data.in_shape)  # full batches replay one graph, if captured
    eager_step, graph_step, captured_lr = _train_steps(run, ex, x_shape, device, cfg)

    t0 = time.perf_counter() - history.elapsed
    saver = Checkpointer(checkpoint, cfg, device, ex, run, history, t0)
    diverged_epoch = None
    if progress:
        progress(history.start_epoch, cfg.epochs, None)
    if tracker:
        tracker.start(history.start_epoch + 1)  # supersedes what a killed session logged
    for epoch in range(history.start_epoch, cfg.epochs):
        if graph_step:
            copy_lr_into(captured_lr, run.optimizer)  # the graph reads the scheduler's rate
        lr = float(run.optimizer.param_groups[0]["lr"])
        steps, stop = (eager_step, graph_step), stop or StopSignals()
        losses, correct = _train_epoch(epoch, run, data, inputs, cfg, history, saver, steps, stop)
        epoch_losses = losses.cpu()  # the epoch's one host sync
        history.step_losses.append(epoch_losses)
        finite = bool(torch.isfinite(epoch_losses).all())
        scores = val_and_test(run.model, data, inputs, cfg.eval_batch_size) if finite else {}
        row = epoch_record(epoch, lr, epoch_losses, correct.item() / len(data.train_y), scores)
        row["wall_time_s"] = time.perf_counter() - t0
        history.epoch_rows.append(row)
        log(epoch_line(row, cfg.epochs))
        if progress:
            progress(epoch + 1, cfg.epochs, row)
        if tracker:
            tracker.log_epoch(row)
        if not finite:
            diverged_epoch = epoch + 1
            log(f"diverged: non-finite training loss in epoch {diverged_epoch}; stopping")
            break
        saver.save(epoch + 1, 0, None)

    train_eval_acc = math.nan  # a diverged run is not evaluated
    if diverged_epoch is None:
        train_eval_acc = train_split_accuracy(run.model, data, inputs, cfg.eval_batch_size)
    if tracker:
        tracker.finish(cfg.to_dict(), {**history.epoch_rows[-1], "train_eval_acc": train_eval_acc})
    return TrainingResult(
        steps=steps_frame(history.step_losses),
        epochs=pd.DataFrame(history.epoch_rows),
        status="diverged" if diverged_epoch else "completed",
        diverged_epoch=diverged_epoch,
        train_eval_acc=train_eval_acc,
        param_count=run.param_count,
        wall_time_s=time.perf_counter() - t0,
        resumes=history.resumes,
        execution=ex.describe(),
    )


def _train_steps(run: RunObjects, ex: Execution, x_shape, device, cfg: RunConfig) -> tuple:
    """(eager_step, graph_step or None, the lr tensors the graph reads): under CUDA graphs the
    step captured for full batches of `x_shape` (an epoch's last, smaller batch runs eagerly)."""
    eager_step = make_train_step(run.forward, run.optimizer, device, ex.bf16, cfg.grad_clip_norm)
    if not ex.cuda_graphs:
        return eager_step, None, []
    captured_lr = lr_to_device(run.optimizer, device)
    graph_step = capture_train_step(
        eager_step, run.model, run.optimizer, x_shape, ex.memory_format, device
    )
    return eager_step, graph_step, captured_lr


def _train_epoch(epoch, run, data, inputs, cfg, history, saver, steps, stop) -> tuple:
    """One epoch's optimizer steps: (losses (steps_per_epoch,), correct count), on the device.
    Continues the epoch a mid-epoch checkpoint stopped in (history.mid_epoch, then cleared).
    Raises `Preempted` after the step in which `stop` was signalled, its checkpoint written."""
    eager_step, graph_step = steps
    gen, scale, shift, memory_format = run.gen, inputs.scale, inputs.shift, inputs.memory_format
    device = data.train_y.device
    n, batch = len(data.train_y), cfg.batch_size
    steps_per_epoch = math.ceil(n / batch)  # the last, smaller batch is kept (as a DataLoader)
    run.model.train()
    if history.mid_epoch is not None:  # resuming inside this epoch
        perm, losses, correct = (t.to(device) for t in history.mid_epoch["tensors"])
        first_step, history.mid_epoch = history.mid_epoch["step"], None
    else:
        perm = torch.randperm(n, device=device, generator=gen)
        losses = torch.zeros(steps_per_epoch, device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        first_step = 0
    for step in range(first_step, steps_per_epoch):
        idx = perm[step * batch : (step + 1) * batch]
        x, y = data.train_x[idx], data.train_y[idx]  # (B, C, H, W) uint8, (B,) int64
        if cfg.augment == "crop_flip":
            x = crop_flip(x, gen)
        x = normalize(x, scale, shift).contiguous(memory_format=memory_format)
        full = len(y) == batch
        loss, n_correct = (graph_step if graph_step and full else eager_step)(x, y)
        losses[step] = loss  # stays on the device: no sync
        correct += n_correct
        stopping = stop.after_step()  # SIGTERM/SIGUSR1 came: checkpoint now, then stop
        if stopping or saver.due():  # mid-epoch, every cfg.checkpoint_every_s: syncs, rarely
            tensors = [t.cpu() for t in (perm, losses, correct)]
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
    add_member_arguments(p)  # --seeds, --lrs: a fused job (normdrop.fused_train)
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
    if args.seeds or args.lrs:  # K members trained as one model
        from normdrop.fused_train import main_fused  # (it imports this module)

        return main_fused(args, cfg, data, device, checkpoint, extra)
    tensorboard_dir = args.tensorboard_dir or Path(args.out) / "tensorboard"
    tracker = TensorBoardTracker(tensorboard_dir) if args.tensorboard else None
    extra["tensorboard_dir"] = str(tensorboard_dir) if tracker else None
    print(
        f"{cfg.dataset}/{cfg.model}/{cfg.variant} seed {cfg.seed} lr {cfg.lr:g} on {device}",
        flush=True,  # a job's log shows it has started before its first epoch ends
    )
    print(f"execution: {execution.describe()}", flush=True)

    log, progress, close_progress = reporters(sys.stdout)
    attempts = AttemptLog(checkpoint)  # every attempt's start and end, next to the checkpoint
    try:
        with attempts.recording(), StopSignals.from_env() as stop:  # SIGTERM, SIGUSR1
            result = train(cfg, data, device, checkpoint, log, progress, tracker, stop)
            extra["accounting"] = accounting(device, extra["data_sha256"])
            extra["attempts"] = attempts.attempts(current_outcome="finished")
            write_outputs(args.out, cfg, result, extra)
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
    print(f"{result.status}: wrote {args.out} in {result.wall_time_s:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
