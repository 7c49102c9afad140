"""One training run of the study: `train(settings, data, device) -> RunResult`, and its CLI.

    python -m normdrop.train --data resources/prepared/cifar10.pt --dataset cifar10 \
        --model resnet20 --width 32 --norm batch --dropout 0.3 --seed 42 --lr 1e-3 \
        --out results/runs/cifar10/resnet20/bn_dropout/seed42

The whole dataset lives on the run's device as uint8; shuffling, augmentation and normalization
happen there. Per-step losses and correct counts accumulate in device tensors and reach the host
once per epoch, so the hot loop never waits on a host synchronization. The run checkpoints
atomically after every epoch and every `checkpoint_every_s` seconds (mid-epoch too); rerun with
the same checkpoint path and it resumes exactly where it stopped, RNG states included.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pickle
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from normdrop import provenance
from normdrop.config import ConfigError, RunConfig
from normdrop.data import (
    DataError,
    Prepared,
    crop_flip,
    load_prepared,
    normalize,
    standardization,
)
from normdrop.models import build_model, count_parameters
from normdrop.storage import atomic_write_group, atomic_write_torch

CHECKPOINT_FORMAT = 1


@dataclass
class RunResult:
    steps: pd.DataFrame  # one row per optimizer step: epoch, step, loss
    epochs: pd.DataFrame  # one row per epoch (see `train`)
    status: str  # "completed" or "diverged"
    diverged_epoch: int | None
    train_eval_acc: float  # eval mode, training split, after the last epoch
    param_count: int
    wall_time_s: float
    resumes: list[dict] = field(default_factory=list)  # where a killed run picked up again
    execution: dict = field(default_factory=dict)  # how it ran: Execution.describe()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return device


@dataclass(frozen=True)
class Execution:
    """How a run executes on its device, resolved once from its settings (speed, not numbers)."""

    bf16: bool  # bf16 autocast for the forward pass (fp32 weights, optimizer state, BN stats)
    memory_format: torch.memory_format
    cuda_graphs: bool  # the training step captured once and replayed (_capture_train_step)
    fused_adam: bool
    compile: bool
    deterministic: bool

    def describe(self) -> dict:
        """What ran, for meta.json and the log."""
        return {
            "precision": "bf16" if self.bf16 else "fp32",
            "memory_format": "channels_last"
            if self.memory_format == torch.channels_last
            else "contiguous",
            "cuda_graphs": self.cuda_graphs,
            "adam": "fused" if self.fused_adam else "default",  # default: for-loop on CPU
            "compile": self.compile,
            "deterministic": self.deterministic,
        }


def resolve_execution(cfg: RunConfig, device: torch.device) -> Execution:
    """The settings' `auto`s made concrete for `device`; ConfigError for what it cannot do."""
    cuda = device.type == "cuda"
    if cfg.cuda_graphs == "on" and not cuda:
        raise ConfigError(
            f"setting 'cuda_graphs' = 'on' needs a CUDA device, not {device}; use auto or off"
        )
    # channels_last makes cuDNN's bf16 convolutions use tensor cores without transposes.
    channels_last = cfg.memory_format == "channels_last" or (cfg.memory_format == "auto" and cuda)
    return Execution(
        bf16=cfg.precision == "bf16" or (cfg.precision == "auto" and cuda),
        memory_format=torch.channels_last if channels_last else torch.contiguous_format,
        # auto stays off until a run on a real GPU shows the same metrics, faster (README).
        cuda_graphs=cfg.cuda_graphs == "on",
        # CPU has a fused Adam too, but the CPU runs are the reference numbers: kept as they are.
        fused_adam=cuda,
        compile=cfg.compile,
        deterministic=cfg.deterministic,
    )


def use_deterministic_algorithms() -> None:
    """Deterministic kernels, process-wide (the CLI trains one run per process): bitwise-equal
    reruns and resumes on one GPU model. cuBLAS reads CUBLAS_WORKSPACE_CONFIG when it makes its
    first handle, at the run's first matmul: train() calls this before building its model.
    An op with no deterministic CUDA kernel warns instead of stopping the run: ResNet-20's
    adaptive_avg_pool2d backward is flagged, though with a 1x1 output it takes the kernel
    without atomics."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def _capture_train_step(step_fn, model, optimizer, x_shape, memory_format, device, warmup=3):
    """The training step `step_fn(x, y) -> (loss, correct)` (forward, backward, Adam step) as one
    CUDA graph for batches of shape x_shape: returns `graph_step(x, y)`, which copies the batch
    into static buffers and replays the graph. CUDA only; see torch.cuda.graphs, "Whole-network
    capture". The optimizer must be capturable (its lr a device tensor, step counts on device).

    Capture needs a few warm-up steps on a side stream first; they change the weights, BN
    statistics, optimizer state and CUDA RNG, so all of these are put back in place (same memory:
    the graph reads and writes those addresses) and the run goes on exactly where it was.
    Dropout in the graph draws from the default CUDA generator (graph-safe Philox): each replay
    advances its offset, so every step gets fresh masks from the run's seeded stream."""
    static_x = torch.zeros(x_shape, device=device).contiguous(memory_format=memory_format)
    static_y = torch.zeros(x_shape[0], dtype=torch.long, device=device)
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved_state = {p: {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
    saved_rng = torch.cuda.get_rng_state(device)

    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step_fn(static_x, static_y)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)  # grads are then allocated inside the graph's pool
    with torch.cuda.graph(graph):
        static_loss, static_correct = step_fn(static_x, static_y)

    with torch.no_grad():
        for k, v in model.state_dict().items():
            v.copy_(saved_model[k])
        for p, state in optimizer.state.items():
            for k, v in state.items():  # state a fresh run did not have yet starts at zero
                v.copy_(saved_state[p][k]) if p in saved_state else v.zero_()
    torch.cuda.set_rng_state(saved_rng, device)

    def graph_step(x, y):
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
        return static_loss, static_correct  # overwritten by the next replay: use before then

    return graph_step


def _lr_as(optimizer, tensor_device: torch.device | None) -> None:
    """The learning rate as a float (eager Adam), or as a tensor on tensor_device (capturable Adam
    in a CUDA graph: the scheduler then fills it in place, and the graph reads the new value).
    Checkpoints may hold either, so this also runs after loading one."""
    for group in optimizer.param_groups:
        lr = float(group["lr"])
        group["lr"] = lr if tensor_device is None else torch.tensor(lr, device=tensor_device)


@torch.no_grad()
def evaluate(model, x_u8, y, scale, shift, batch_size, use_bf16, memory_format):
    """(mean cross-entropy, accuracy) over a whole split, in eval mode, in large batches."""
    model.eval()
    loss_sum = torch.zeros((), device=y.device)
    correct = torch.zeros((), device=y.device, dtype=torch.long)
    for i in range(0, len(y), batch_size):
        x = normalize(x_u8[i : i + batch_size], scale, shift)
        x = x.contiguous(memory_format=memory_format)
        with torch.autocast(y.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y[i : i + batch_size], reduction="sum")
        correct += (logits.argmax(1) == y[i : i + batch_size]).sum()
    return loss_sum.item() / len(y), correct.item() / len(y)


def _rng_state(device, gen):
    state = {"cpu": torch.get_rng_state(), "data": gen.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state, device, gen):
    torch.set_rng_state(state["cpu"])
    gen.set_state(state["data"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _load_checkpoint(path: Path, cfg: RunConfig, log) -> dict | None:
    """The checkpoint at `path` if it belongs to these settings; a stale or broken one is moved
    aside (never deleted: it may still be wanted) and the run starts from epoch 1.

    It is read with weights_only=True: a file on a shared filesystem must not be able to run code
    when loaded, so only tensors and plain containers are accepted (what `train` saves)."""
    if not path.exists():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        problem = None
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            problem = f"format {ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt)}"
        elif ckpt["settings_hash"] != cfg.settings_hash():
            problem = "different settings"
    except pickle.UnpicklingError as err:
        unsafe = "Weights only load failed" in str(err)  # torch's words for a refused object
        problem = "unsafe" if unsafe else f"unreadable (UnpicklingError: {_first_line(err)})"
    except Exception as err:  # truncated or unreadable
        problem = f"unreadable ({type(err).__name__}: {_first_line(err)})"
    if problem is None:
        return ckpt
    aside = path.with_name(f"{path.name}.stale-{int(time.time())}")
    path.rename(aside)
    if problem == "unsafe":
        why = "cannot be read safely (weights_only: it holds objects other than tensors and plain "
        why += "containers)"
    else:
        why = f"not usable ({problem})"
    log(f"checkpoint {path} {why}: moved aside to {aside}; starting from epoch 1")
    return None


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [""])[0]


def train(
    cfg: RunConfig,
    data: Prepared,
    device: torch.device,
    checkpoint: Path | None = None,
    log=print,
    progress=None,
) -> RunResult:
    """Train cfg.model on `data` for cfg.epochs epochs; resume from `checkpoint` if it exists.

    Per epoch it records: epoch (1-based), lr (the rate used during the epoch), train_loss_mean
    and train_loss_sd (mean and sample SD of the epoch's mini-batch losses), train_acc (running,
    train mode), val/test loss and accuracy (eval mode), wall_time_s (since the start, summed over
    resumed sessions). A non-finite loss ends the run after that epoch, as 'diverged'.

    `log(line)` gets one line per epoch and per event (resume, divergence); `progress(done,
    epochs, row)`, if given, is called before the first epoch (row None) and after each epoch
    (row: that epoch's record), e.g. to drive a progress bar.
    """
    ex = resolve_execution(cfg, device)  # bf16, memory format, CUDA graphs, fused Adam
    use_bf16, memory_format = ex.bf16, ex.memory_format
    if cfg.deterministic:
        use_deterministic_algorithms()
    data = data.to(device)
    scale, shift = standardization(data.mean, data.std)  # (1, C, 1, 1) each, on the device

    torch.manual_seed(cfg.seed)  # model initialization and dropout masks
    model = build_model(
        cfg.model, data.in_shape, data.num_classes, cfg.width, cfg.norm, cfg.dropout, cfg.init
    )
    model = model.to(device, memory_format=memory_format)
    param_count = count_parameters(model)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
        fused=ex.fused_adam or None, capturable=ex.cuda_graphs,
    )  # fmt: skip
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.milestones), cfg.gamma)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)  # data order and augmentation
    forward = torch.compile(model) if cfg.compile else model

    n, batch = len(data.train_y), cfg.batch_size
    steps_per_epoch = math.ceil(n / batch)  # the last, smaller batch is kept (as a DataLoader)
    epoch_rows: list[dict] = []
    step_losses: list[torch.Tensor] = []  # per finished epoch, on the host
    resumes: list[dict] = []
    start_epoch, mid_epoch, elapsed = 0, None, 0.0

    ckpt = _load_checkpoint(Path(checkpoint), cfg, log) if checkpoint else None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        _set_rng_state(ckpt["rng"], device, gen)
        _lr_as(optimizer, None)
        epoch_rows, step_losses = ckpt["epoch_rows"], ckpt["step_losses"]
        start_epoch, mid_epoch, elapsed = ckpt["epoch"], ckpt["mid_epoch"], ckpt["elapsed"]
        resumes = ckpt["resumes"] + [{"epoch": start_epoch, "step": ckpt["step"]}]
        log(f"resuming from {checkpoint}: epoch {start_epoch + 1}, step {ckpt['step']}")

    def eager_step(x, y):
        """One optimizer step on batch (x, y); (loss, correct count), on the device."""
        # No autocast cache: it must be off under CUDA graph capture, and each weight is cast
        # once per forward here, so it saved nothing.
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16,
                            cache_enabled=False):  # fmt: skip
            logits = forward(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach(), (logits.argmax(1) == y).sum()

    graph_step = None  # full batches replay one CUDA graph; the last, smaller one runs eagerly
    if ex.cuda_graphs:
        _lr_as(optimizer, device)
        graph_step = _capture_train_step(
            eager_step, model, optimizer, (batch, *data.in_shape), memory_format, device
        )

    def save_checkpoint(epoch, step, mid):
        atomic_write_torch(
            checkpoint,
            {
                "format": CHECKPOINT_FORMAT,
                "settings": cfg.to_dict(),
                "settings_hash": cfg.settings_hash(),
                "epoch": epoch,  # 0-based epoch to run next (or to continue, if mid-epoch)
                "step": step,
                "mid_epoch": mid,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": _rng_state(device, gen),
                "epoch_rows": epoch_rows,
                "step_losses": step_losses,
                "resumes": resumes,
                "elapsed": time.perf_counter() - t0,
            },
        )

    t0 = time.perf_counter() - elapsed
    last_save = time.monotonic()
    diverged_epoch = None
    if progress:
        progress(start_epoch, cfg.epochs, None)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        if mid_epoch is not None:  # resuming inside this epoch
            perm, losses, correct = (t.to(device) for t in mid_epoch["tensors"])
            first_step, mid_epoch = mid_epoch["step"], None
        else:
            perm = torch.randperm(n, device=device, generator=gen)
            losses = torch.zeros(steps_per_epoch, device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            first_step = 0
        lr = float(optimizer.param_groups[0]["lr"])
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
            if checkpoint and time.monotonic() - last_save > cfg.checkpoint_every_s:
                tensors = [t.cpu() for t in (perm, losses, correct)]
                save_checkpoint(epoch, step + 1, {"step": step + 1, "tensors": tensors})
                last_save = time.monotonic()
        scheduler.step()

        epoch_losses = losses.cpu()  # the epoch's one host sync
        step_losses.append(epoch_losses)
        finite = bool(torch.isfinite(epoch_losses).all())
        if finite:
            val_loss, val_acc = evaluate(
                model, data.val_x, data.val_y, scale, shift, cfg.eval_batch_size, use_bf16,
                memory_format,
            )  # fmt: skip
            test_loss, test_acc = evaluate(
                model, data.test_x, data.test_y, scale, shift, cfg.eval_batch_size, use_bf16,
                memory_format,
            )  # fmt: skip
        else:
            val_loss = val_acc = test_loss = test_acc = math.nan
        epoch_rows.append(
            {
                "epoch": epoch + 1,
                "lr": lr,
                "train_loss_mean": float(epoch_losses.mean()),
                "train_loss_sd": float(epoch_losses.std()) if len(epoch_losses) > 1 else 0.0,
                "train_acc": correct.item() / n,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "test_loss": test_loss,
                "test_acc": test_acc,
                "wall_time_s": time.perf_counter() - t0,
            }
        )
        r = epoch_rows[-1]
        log(
            f"epoch {epoch + 1}/{cfg.epochs} lr {lr:.2e} loss {r['train_loss_mean']:.4f} "
            f"(sd {r['train_loss_sd']:.4f}) train {r['train_acc']:.4f} val {val_acc:.4f} "
            f"test {test_acc:.4f} [{r['wall_time_s']:.1f}s]"
        )
        if progress:
            progress(epoch + 1, cfg.epochs, r)
        if not finite:
            diverged_epoch = epoch + 1
            log(f"diverged: non-finite training loss in epoch {diverged_epoch}; stopping")
            break
        if checkpoint:
            save_checkpoint(epoch + 1, 0, None)
            last_save = time.monotonic()

    train_eval_acc = math.nan
    if diverged_epoch is None:
        _, train_eval_acc = evaluate(
            model, data.train_x, data.train_y, scale, shift, cfg.eval_batch_size, use_bf16,
            memory_format,
        )  # fmt: skip
    losses_all = torch.cat(step_losses) if step_losses else torch.zeros(0)
    steps = pd.DataFrame(
        {
            "epoch": [e + 1 for e, t in enumerate(step_losses) for _ in range(len(t))],
            "step": range(1, len(losses_all) + 1),
            "loss": losses_all.double().numpy(),
        }
    )
    return RunResult(
        steps=steps,
        epochs=pd.DataFrame(epoch_rows),
        status="diverged" if diverged_epoch else "completed",
        diverged_epoch=diverged_epoch,
        train_eval_acc=train_eval_acc,
        param_count=param_count,
        wall_time_s=time.perf_counter() - t0,
        resumes=resumes,
        execution=ex.describe(),
    )


def write_outputs(out: Path, cfg: RunConfig, result: RunResult, extra: dict) -> None:
    """steps.parquet, epochs.parquet and meta.json, replaced together; meta.json (whose presence
    marks a finished run) last. A failure while writing leaves the previous files untouched."""
    out = Path(out)
    meta = {
        "settings": cfg.to_dict(),
        "settings_hash": cfg.settings_hash(),
        "dataset": cfg.dataset,
        "model": cfg.model,
        "variant": cfg.variant,
        "seed": cfg.seed,
        "lr": cfg.lr,
        "status": result.status,
        "diverged_epoch": result.diverged_epoch,
        "train_eval_acc": result.train_eval_acc,
        "param_count": result.param_count,
        "wall_time_s": result.wall_time_s,
        "resumes": result.resumes,
        "execution": result.execution,
        "git_revision": provenance.git_revision(),
        "versions": provenance.library_versions(),
        "finished_at": provenance.now(),
        **provenance.machine(),
        **extra,
    }
    text = json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write_group(
        {
            out / "steps.parquet": lambda f: result.steps.to_parquet(f, index=False),
            out / "epochs.parquet": lambda f: result.epochs.to_parquet(f, index=False),
            out / "meta.json": lambda f: f.write(text.encode()),
        }
    )


# --------------------------------------------------------------------------- CLI
class _EpochBar:
    """A run's progress in a terminal: a tqdm bar over epochs, log lines written above it."""

    def __init__(self, stream):
        self.stream, self.bar = stream, None

    def log(self, line: str) -> None:
        tqdm.write(line, file=self.stream)

    def __call__(self, done: int, epochs: int, row: dict | None) -> None:
        if self.bar is None:  # `done` > 0 when resumed: the rate counts this session's epochs
            self.bar = tqdm(total=epochs, initial=done, unit="epoch", file=self.stream)
            return
        if row:
            loss, val = f"{row['train_loss_mean']:.4f}", f"{row['val_acc']:.4f}"
            self.bar.set_postfix(loss=loss, val=val, refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def reporters(stream) -> tuple:
    """(log, progress, close) for `train`: a bar when `stream` is a terminal; otherwise (a file
    or a pipe, as the workflow's logs) one plain flushed line per epoch, no control characters."""
    if stream.isatty():
        bar = _EpochBar(stream)
        return bar.log, bar, bar.close
    return (lambda line: print(line, file=stream, flush=True)), None, lambda: None


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2 (argparse's default adds the usage)
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m normdrop.train", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="prepared dataset file (.pt)")
    p.add_argument("--out", type=Path, required=True, help="run folder for parquet + meta.json")
    p.add_argument("--checkpoint", type=Path, help="resume file (default: <out>/checkpoint.pt)")
    p.add_argument("--lr-from", type=Path, help="JSON file with the selected 'lr' (overrides --lr)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--gpu-lock-dir", type=Path, help="folder of GPU lease lock files")
    p.add_argument("--gpu-slots", type=int, default=1, help="runs that may share one GPU")
    p.add_argument(
        "--gpu-wait-s", type=float, default=math.inf,
        help="wait this long for a free GPU slot (default: until one frees)",
    )  # fmt: skip
    for f in dataclasses.fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        default = None if f.default is dataclasses.MISSING else f.default
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif isinstance(default, tuple):
            kind = type(default[0]) if default else int
            p.add_argument(flag, type=kind, nargs="*", default=default)
        else:
            kind = {"width": int, "dataset": str, "model": str}.get(f.name, type(default))
            p.add_argument(flag, type=kind, default=default, required=default is None)
    return p


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)}
    extra = {"lr_source": "--lr"}
    if args.lr_from:
        try:
            settings["lr"] = float(json.loads(args.lr_from.read_text())["lr"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            parser.error(f"--lr-from {args.lr_from}: no readable 'lr' ({err})")
        extra["lr_source"] = str(args.lr_from)
    try:
        cfg = RunConfig.from_dict(settings)
    except ConfigError as err:
        parser.error(str(err))

    lease = None
    if args.device != "cpu":
        from normdrop import gpu_lease  # before anything initialises CUDA

        # Per host: device ids repeat across the nodes that may share this filesystem.
        lock_dir = (args.gpu_lock_dir or Path(args.out).parent / ".gpu-locks") / platform.node()
        try:
            lease = gpu_lease.setup_device_env(lock_dir, args.gpu_slots, wait_s=args.gpu_wait_s)
        except gpu_lease.LeaseError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    try:
        device = resolve_device(args.device)
        execution = resolve_execution(cfg, device)
        data = load_prepared(args.data)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1
    if data.name != cfg.dataset:
        parser.error(f"--data {args.data} holds dataset {data.name!r}, not {cfg.dataset!r}")
    extra["data_file"] = str(args.data)
    extra["device"] = str(device) + (
        f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    )
    extra["gpu_lease"] = None if lease is None else f"{lease.device}/slot{lease.slot}"
    checkpoint = args.checkpoint or Path(args.out) / "checkpoint.pt"
    extra["started_at"] = provenance.now()
    print(
        f"{cfg.dataset}/{cfg.model}/{cfg.variant} seed {cfg.seed} lr {cfg.lr:g} on {device}",
        flush=True,  # a job's log shows it has started before its first epoch ends
    )
    print(f"execution: {execution.describe()}", flush=True)

    log, progress, close_progress = reporters(sys.stdout)
    try:
        result = train(cfg, data, device, checkpoint, log=log, progress=progress)
        write_outputs(args.out, cfg, result, extra)
    except OSError as err:  # disk full, quota, permissions: nothing partial is left behind
        print(
            f"error: writing {err.filename or args.out} failed: {err.strerror or err}. Earlier "
            f"outputs and the last checkpoint ({checkpoint}) are intact: free space and rerun.",
            file=sys.stderr,
        )
        return 1
    finally:
        close_progress()
    checkpoint.unlink(missing_ok=True)  # the outputs now hold everything it had
    print(f"{result.status}: wrote {args.out} in {result.wall_time_s:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
