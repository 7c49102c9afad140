"""The graphs section's step-level checks, for gpu_check.py (a library, not a script): a captured
CUDA graph of the training step against as many eager steps from the same state, the lr that
reaches the graph, no host sync per step, and the fused step (K members, normdrop.fusion)
captured against the fused step eager. Each takes gpu_check's `Check` and returns report rows
(check_rows.py).
"""

from __future__ import annotations

import copy
import math
import warnings
from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch
from check_rows import row

from normdrop.checkpoints import restore_optimizer
from normdrop.data import normalize, standardization
from normdrop.execution import (
    capture_train_step,
    copy_lr_into,
    lr_to_device,
    make_train_step,
    named_tensors,
    resolve_execution,
)
from normdrop.fusion import FusedModel, StackedAdam, capture_fused_step, make_fused_step
from normdrop.models import build_model
from normdrop.train import make_optimizer, make_scheduler

if TYPE_CHECKING:
    from gpu_check import Check

# Graph vs eager, deterministic, same kernels: bitwise is expected. Floats within this (rtol,
# atol) still pass, reported "bitwise False" with the first step and tensor that differ;
# integers (num_batches_tracked, Adam's step on CPU, RNG state) must be equal.
GRAPH_TOLERANCE = (1e-5, 1e-7)
GRAPH_STEPS = 5
FUSED_K = 3  # members of the fused graph rows (seeds 42, 43, 44)
FUSED_LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


# The graphs section runs train()'s own parts (normdrop.execution, normdrop.train): the eager
# step, the capture, the lr tensors. This is the one place where a CPU stands in for CUDA.
def capture(step, model, optimizer, x_shape, memory_format, device):
    """capture_train_step on CUDA; on CPU the eager step itself, so that the comparisons run."""
    if device.type != "cuda":
        return step
    return capture_train_step(step, model, optimizer, x_shape, memory_format, device)


def snapshot(model, optimizer, device) -> dict[str, torch.Tensor]:
    """Everything a training step changes, cloned: weights, BN statistics and counters, Adam
    state (step, moments), lr, and the state of the RNG dropout draws from."""
    out = {f"model {k}": v.detach().clone() for k, v in model.state_dict().items()}
    for i, state in enumerate(optimizer.state.values()):
        out |= {f"adam {i} {k}": torch.as_tensor(v).clone() for k, v in state.items()}
    out["lr"] = torch.as_tensor(optimizer.param_groups[0]["lr"]).clone()
    cuda = device.type == "cuda"
    out["rng state"] = torch.cuda.get_rng_state(device) if cuda else torch.get_rng_state()
    return out


def first_difference(a: list[dict], b: list[dict]) -> dict:
    """Two runs' per-step snapshots compared in order: bitwise equal, or the first step and
    tensor that differ, and whether every difference is within GRAPH_TOLERANCE."""
    first, within = None, True
    for step, (sa, sb) in enumerate(zip(a, b, strict=True), start=1):
        for key in sa:
            x, y = sa[key].cpu(), sb[key].cpu()
            if torch.equal(x, y):
                continue
            same_shape = x.shape == y.shape and x.is_floating_point()
            within &= same_shape and torch.allclose(x, y, *GRAPH_TOLERANCE)
            diff = f"max |diff| {(x - y).abs().max():.3g}" if same_shape else "shape or dtype"
            first = first or f"step {step}, {key} ({diff})"
    return {"bitwise": first is None, "first difference": first, "ok": within}


def _setup_steps(c: Check, model_name: str) -> SimpleNamespace:
    """Model, optimizer, scheduler (x 0.1 after epoch 1), eager step and lr tensors, made as
    train() makes them under CUDA graphs (on CPU: eager), deterministic; `capture()` makes the
    graph; GRAPH_STEPS + 1 normalized batches."""
    graphs_on = "on" if c.cuda else "off"
    cfg = c.cell(
        model_name, deterministic=True, cuda_graphs=graphs_on, epochs=3, lr_milestones=(1,)
    )
    ex = resolve_execution(cfg, c.device)
    data = c.data(GRAPH_STEPS + 1).to(c.device)
    x = normalize(data.train_x, *standardization(data.mean, data.std))
    x = x.contiguous(memory_format=ex.memory_format)
    batches = list(zip(x.split(cfg.batch_size), data.train_y.split(cfg.batch_size), strict=True))
    torch.manual_seed(cfg.seed)
    model = build_model(
        model_name, data.in_shape, 10, cfg.width, cfg.norm, cfg.dropout_rate, cfg.init
    )
    model = model.to(c.device, memory_format=ex.memory_format).train()
    optimizer = make_optimizer(model, cfg, ex)
    s = SimpleNamespace(model=model, optimizer=optimizer, scheduler=make_scheduler(optimizer, cfg))
    s.captured = lr_to_device(optimizer, c.device) if c.cuda else []  # as train() before capture
    s.step = make_train_step(model, optimizer, c.device, ex.bf16)
    shape, s.memory_format, s.batches = batches[0][0].shape, ex.memory_format, batches
    s.capture = lambda: capture(s.step, model, optimizer, shape, ex.memory_format, c.device)
    return s


def _steps(s: SimpleNamespace, step, device) -> list[dict]:
    out = []
    for x, y in s.batches[1:]:
        loss = step(x, y)[0].clone()
        out.append({"loss": loss, **snapshot(s.model, s.optimizer, device)})
    return out


def graph_vs_eager(c: Check, model_name: str) -> list[dict]:
    """From one state, on the same batches: GRAPH_STEPS replays of the captured step against as
    many eager steps of a copy; and the state right after capture against right before it."""
    s, twin = _setup_steps(c, model_name), _setup_steps(c, model_name)
    s.step(*s.batches[0])  # Adam's state exists, non-zero, before capture: restoring it is tested
    twin.model.load_state_dict(s.model.state_dict())
    # as a resume does; a deep copy: load_state_dict would keep the very tensors on one device
    restore_optimizer(twin.optimizer, copy.deepcopy(s.optimizer.state_dict()))
    if c.cuda:
        copy_lr_into(twin.captured, twin.optimizer)
    before = snapshot(s.model, s.optimizer, c.device)
    graph = s.capture()
    restored = first_difference([before], [snapshot(s.model, s.optimizer, c.device)])
    set_rng = torch.cuda.set_rng_state if c.cuda else torch.set_rng_state
    set_rng(before["rng state"])
    replays = _steps(s, graph, c.device)
    set_rng(before["rng state"])
    d = first_difference(replays, _steps(twin, twin.step, c.device))
    where = f"; first difference at {d['first difference']}" if d["first difference"] else ""
    stand_in = "" if c.cuda else " (eager stand-in for the graph: the comparison ran)"
    detail = f"{GRAPH_STEPS} steps: bitwise {d['bitwise']}{where}{stand_in}"
    restore = (restored["first difference"] or "model, Adam, RNG as before") if c.cuda else ""
    ok = restored["bitwise"] if c.cuda else None
    return [
        row(f"graph == eager, {model_name}", d["ok"], detail, "cuda_graphs"),
        row(f"capture restores state, {model_name}", ok, restore, "cuda_graphs"),
    ]


def lr_reaches_graph(c: Check, model_name: str) -> dict:
    """Past a milestone the lr the graph reads holds the new value; at lr 0 a replay leaves the
    weights unchanged (BN statistics still move: they are not weights)."""
    s = _setup_steps(c, model_name)
    model, optimizer, graph = s.model, s.optimizer, s.capture()
    lr0 = float(optimizer.param_groups[0]["lr"])
    with warnings.catch_warnings():  # no optimizer.step() before it: on purpose
        warnings.simplefilter("ignore", UserWarning)
        s.scheduler.step()  # epoch 1 ends: past the milestone
    if c.cuda:  # as train() does at the start of every epoch
        copy_lr_into(s.captured, optimizer)
    # on CUDA the tensor the graph reads; on CPU what the eager step reads
    seen = float(s.captured[0] if c.cuda else optimizer.param_groups[0]["lr"])
    # rel_tol: on CUDA the lr is a float32 tensor
    decayed = math.isclose(seen, lr0 * 0.1, rel_tol=1e-6)
    problems = [] if decayed else [f"after the milestone the graph reads {seen:g}"]
    torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _epoch: 0.0)  # sets the lr to 0
    if c.cuda:
        copy_lr_into(s.captured, optimizer)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    graph(*s.batches[1])
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, weights[n])]
    problems += [f"at lr 0 a replay changed {moved[0]}"] if moved else []
    stand_in = "" if c.cuda else " (eager stand-in)"
    detail = "; ".join(problems) or f"milestone: {lr0:g} -> {seen:g}; lr 0: weights kept{stand_in}"
    return row(f"lr reaches the graph, {model_name}", not problems, detail, "cuda_graphs")


def no_host_sync(c: Check, model_name: str) -> dict:
    """train()'s per-step work (batch by index, step, loss recorded on the device), eager and
    replayed, under torch.cuda.set_sync_debug_mode("error"): a hidden host sync raises."""
    check = f"no host sync per step, {model_name}"
    if not c.cuda:
        return row(check, None)
    s = _setup_steps(c, model_name)
    graph = s.capture()
    x_all, y_all = (torch.cat(t) for t in zip(*s.batches, strict=True))
    losses, n = torch.zeros(2, device=c.device), len(s.batches[0][1])
    perm, failures = torch.randperm(len(y_all), device=c.device), []
    for name, fn in (("eager", s.step), ("graph", graph)):
        torch.cuda.synchronize(c.device)
        torch.cuda.set_sync_debug_mode("error")
        try:
            for i in range(2):
                idx = perm[i * n : (i + 1) * n]
                x = x_all[idx].contiguous(memory_format=s.memory_format)
                losses[i] = fn(x, y_all[idx])[0]  # as train() records it: on the device
        except RuntimeError as err:
            failures.append(f"{name} step: {str(err).splitlines()[0]}")
        finally:
            torch.cuda.set_sync_debug_mode(0)
    graph_syncs = any(f.startswith("graph") for f in failures)
    keep = "cuda_graphs" if graph_syncs else "nothing (a speed defect of the eager step)"
    return row(check, not failures, "; ".join(failures) or "eager and graph steps", keep)


# --------------------------------------------------------------------------- the fused step
def capture_fused(step, model, optimizer, x_shape, device):
    """capture_fused_step on CUDA; on CPU the eager fused step itself (as `capture`)."""
    if device.type != "cuda":
        return step
    return capture_fused_step(step, model, optimizer, x_shape, device)


def _setup_fused(c: Check, model_name: str, memory_format) -> SimpleNamespace:
    """FUSED_K members (seeds 42, 43, 44; bn: dropout off), fp32, deterministic, as the fused
    job builds them (FusedModel, StackedAdam capturable on CUDA, make_fused_step) with each
    member's 4-d slices in `memory_format`; GRAPH_STEPS + 1 batches of (K, B, ...); `capture()`
    makes the graph (on CPU: the eager step stands in)."""
    cfgs = [
        c.cell(model_name, "bn", seed=seed, deterministic=True, precision="fp32")
        for seed in (42, 43, 44)[:FUSED_K]
    ]
    data = c.data((GRAPH_STEPS + 1) * FUSED_K).to(c.device)
    x = normalize(data.train_x, *standardization(data.mean, data.std))
    b = cfgs[0].batch_size
    xs = x.split(FUSED_K * b)
    ys = data.train_y.split(FUSED_K * b)
    batches = [
        (xb.view(FUSED_K, b, *data.in_shape), yb.view(FUSED_K, b))
        for xb, yb in zip(xs, ys, strict=True)
    ]
    model = FusedModel(cfgs, data.in_shape, 10, c.device, memory_format)
    model.train()
    adam = StackedAdam(model.params, cfgs, c.device, capturable=c.cuda)
    s = SimpleNamespace(model=model, optimizer=adam, batches=batches)
    s.step = make_fused_step(model, adam, c.device, bf16=False)
    s.active = torch.ones(FUSED_K, dtype=torch.bool, device=c.device)
    shape = batches[0][0].shape
    s.capture = lambda: capture_fused(s.step, model, adam, shape, c.device)
    return s


def _fused_state(s: SimpleNamespace) -> dict[str, torch.Tensor]:
    """The fused model's params and buffers and StackedAdam's moments and step, cloned."""
    out = {f"model {k}": v.detach().clone() for k, v in named_tensors(s.model.state_dict())}
    for i, state in enumerate(s.optimizer.state.values()):
        out |= {f"adam {i} {k}": v.clone() for k, v in state.items()}
    return out


def fused_graph_vs_eager(c: Check, model_name: str, layout: str) -> list[dict]:
    """From one state (one eager step taken: Adam state non-zero), on the same batches:
    GRAPH_STEPS replays of the captured fused step against as many eager fused steps of a twin
    built the same way; per step the K members' losses, after the last the whole state. And the
    state right after capture against right before it (CUDA)."""
    name = f"fused graph == fused eager, {model_name} K={FUSED_K} {layout}"
    s, twin = (_setup_fused(c, model_name, FUSED_LAYOUTS[layout]) for _ in range(2))
    for run in (s, twin):
        run.step(*run.batches[0], run.active)
    before = _fused_state(s)
    graph = s.capture()
    restored = first_difference([before], [_fused_state(s)])

    def steps(run, step):
        out = [{"losses": step(x, y, run.active)[0].clone()} for x, y in run.batches[1:]]
        out[-1] |= _fused_state(run)
        return out

    d = first_difference(steps(s, graph), steps(twin, twin.step))
    where = f"; first difference at {d['first difference']}" if d["first difference"] else ""
    stand_in = "" if c.cuda else " (eager stand-in for the graph: the comparison ran)"
    detail = f"{GRAPH_STEPS} steps, fp32, dropout off: bitwise {d['bitwise']}{where}{stand_in}"
    restore = (restored["first difference"] or "model, Adam as before") if c.cuda else ""
    check = f"fused capture restores state, {model_name} {layout}"
    return [
        row(name, d["ok"], detail, "cuda_graphs with fuse"),
        row(check, restored["bitwise"] if c.cuda else None, restore, "cuda_graphs with fuse"),
    ]
