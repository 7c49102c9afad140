"""GPU check: whether the GPU path trains right, then how fast, in one command.

    PYTHONPATH=src python3 benchmarks/gpu_check.py --out DIR   # the one command on a GPU machine
    ./dev.sh gpu-check [--out DIR] [--device cuda|cpu] [--tiny] [--sections ...] [--budget-s S]

Needs torch (2.11 on), torchvision, numpy, pandas, pyarrow and pyyaml only: no snakemake, no
jsonschema, nothing to install, so that it runs with the CUDA build of PyTorch a GPU machine comes
with. Sections, correctness first and speed last (`--sections` picks any subset, in this order):

  graphs     deterministic mode, MLP, CNN, ResNet-20, ViT and LSTM: GRAPH_STEPS graph replays
             equal as many eager steps from the same state (losses, weights, BN statistics and
             counters, Adam state, RNG state); a capture leaves model, optimizer and RNG as they
             were; the lr reaches the graph; no host sync per step; the fused step (K = 3, CNN
             and ResNet-20, contiguous and channels_last, fp32, dropout off) captured equals it
             eager, and its capture leaves the state as it was; nn.LSTM with dropout refused;
             resumes across settings (eager -> graphs, CPU -> CUDA) through the training CLI; a
             lease without nvidia-smi; short runs of compile + graphs and of augment crop_flip.
             On CPU the eager step stands in for the graph; what needs CUDA says so.
  smoke      each model (config.yaml's, ViT, LSTM) x each variant of config.yaml, a few steps on
             CIFAR- and MNIST-shaped data with the workflow's default settings: finite losses,
             outputs written (in the temporary folder).
  resume     the training CLI SIGKILLed in epoch 2 and rerun ends with the metrics of the
             uninterrupted run: bitwise with --deterministic (also with CUDA graphs), within
             RESUME_TOLERANCE without.
  leases     two processes with gpu_slots_per_gpu 2 on one GPU hold different slots.
  precision  the CNN, the same seeds and batches in bf16 and fp32 (and bf16 with graphs): the
             mean same-seed difference of final test accuracy and training loss within 2
             standard errors of the seed-to-seed spread (`compare`); tiny: information only.
  speed      images/s per model: eager, compiled (ResNet-20), CUDA graphs against the textbook
             loop (speed.py); 1 and k processes timed over one shared window; the grid's time.
  fusion     K seeds fused (normdrop.train.train_members, the workflow's path) against K
             processes one after another and K processes sharing the GPU, per model, K = 3, 4,
             12 (speed only);
             in the settings' memory format (auto: channels_last on CUDA); at K = 3 also fused
             with CUDA graphs and (CNN, ResNet-20) fused contiguous, on CUDA.

Writes DIR/gpu_check.md, whose first line is the verdict, and DIR/gpu_check.json, both rewritten
after every section (killed, DIR still holds the finished sections); everything else goes to a
temporary folder, removed at the end. A failing row, a non-finite loss or a crash fails the check
(an exception fails its row only: the other rows and sections still run); the verdict names the
setting to keep off for each failure. A section whose projected time (PROJECTED_S) no longer fits
the time budget (--budget-s, default 420 s) is skipped and named. `--tiny` shrinks every size so
that the test suite runs the whole script on CPU; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import fused_speed
import speed
import torch
import yaml
from check_rows import guard, row, section, verdict, write_report
from graph_steps import (
    FUSED_K,
    FUSED_LAYOUTS,
    fused_graph_vs_eager,
    graph_vs_eager,
    lr_reaches_graph,
    no_host_sync,
)

from normdrop.config import ConfigError, run_config, to_cli_args
from normdrop.execution import resolve_execution, use_deterministic_algorithms
from normdrop.outputs import write_outputs
from normdrop.train import train

ROOT = Path(__file__).resolve().parents[1]
# Resumed vs uninterrupted run without --deterministic: non-deterministic kernels (atomics in
# cuDNN's backward) differ in the last bits and bf16 rounding carries that on. Bounds of the
# order of bf16 noise: relative difference of the per-epoch mean loss, absolute of accuracies.
RESUME_TOLERANCE = {"loss_rel": 0.02, "acc": 0.03}
SPEEDUP_TARGET = 3.0  # ours / textbook images/s per model
GRID_TARGET_H = 1.0  # the full grid projected on one GPU
SEEDS = (42, 43, 44)
GRAPH_MODELS = ("mlp", "cnn", "resnet20", "vit", "lstm")
FUSED_GRAPH_MODELS = ("cnn", "resnet20")  # the fused step captured, in both layouts
# Seconds each section is projected to take: (one H100/H200 at full sizes, estimated, not yet
# measured: docs/gpu.md; --tiny on this project's 2 shared CPU cores, measured). A section
# that would end past the budget is skipped; the sums but fusion's fit the default budget:
# fusion (3 models x K = 3, 4, 12, estimated) is run on its own, `--sections fusion`.
PROJECTED_S = {
    "graphs": (125, 30),
    "smoke": (30, 45),
    "resume": (80, 50),
    "leases": (10, 2),
    "precision": (30, 10),
    "speed": (140, 75),
    "fusion": (360, 50),
}
BUDGET_S = 420  # one command of a 15-minute GPU loan, leaving time for start-up and a rerun


@dataclass(frozen=True)
class Sizes:
    batch: int
    smoke_steps: int
    resume_steps: int  # per epoch, 3 epochs
    speed_steps: int  # per timed epoch
    processes: tuple[int, ...]  # concurrency levels besides 1
    window_s: float  # the shared window concurrent processes are timed over
    precision_seeds: tuple[int, ...]
    precision_epochs: int
    precision_steps: int  # per epoch
    precision_test: int  # test images (and validation images) of the precision runs


FULL = Sizes(128, 20, 20, 200, (4,), 3.0, (42, 43, 44, 45), 5, 80, 1024)
TINY = Sizes(32, 3, 6, 2, (2,), 0.5, (42, 43), 2, 4, 64)


# --------------------------------------------------------------------------- setup
class Check:
    """What every section reads: device, sizes, the config's grid (with the ViT and the LSTM of
    their studies), where to write (the report) and where to put everything else (tmp)."""

    def __init__(self, args):
        self.device = torch.device(args.device)
        self.cuda, self.tiny = self.device.type == "cuda", args.tiny
        self.sizes = TINY if args.tiny else FULL
        self.config = yaml.safe_load((ROOT / "config.yaml").read_text())
        studies = {"vit": "transformer", "lstm": "recurrent"}
        self.models = dict(self.config["models"]) | {
            m: yaml.safe_load((ROOT / "studies" / f"{s}.yaml").read_text())["models"][m]
            for m, s in studies.items()
        }
        self.out, self.tmp = args.out, Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        self.env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])
        )

    def cell(self, model: str, variant: str = "bn_dropout", seed=SEEDS[0], **overrides):
        """The workflow's settings for one cell, one epoch unless overridden."""
        width = speed.TINY_WIDTH[model] if self.tiny else self.models[model]["width"]
        settings = dict(width=width, batch_size=self.sizes.batch, epochs=1, lr_milestones=())
        config = {**self.config, "models": self.models}
        return run_config(config, "synthetic", model, variant, seed, **settings | overrides)

    def data(self, steps: int, shape: str = "cifar", seed: int = 0):
        return speed.synthetic(self.tmp, steps * self.sizes.batch, shape, seed)


def finite(result) -> bool:
    return bool(torch.isfinite(torch.tensor(result.steps["loss"].to_numpy())).all())


# --------------------------------------------------------------------------- graphs
def cross_resumes(c: Check) -> list[dict]:
    """A checkpoint written under one setting, resumed under another, by the training CLI: it
    must finish, and meta.json must say what ran."""
    cases = {  # name: (flags of the killed run, of the resumed run, setting to keep off)
        "eager -> graphs": (["--cuda-graphs", "off"], ["--cuda-graphs", "on"], "cuda_graphs"),
        "CPU -> CUDA": (["--device", "cpu"], [], "resuming CPU checkpoints on CUDA"),
    }
    if not c.cuda:
        return [row(f"resume {name}", None) for name in cases]
    rows = []
    for name, (first, then, keep_off) in cases.items():
        rows += guard(f"resume {name}", keep_off, cross_resume, c, name, first, then, keep_off)
    return rows


def cross_resume(c: Check, name: str, first: list, then: list, keep_off: str) -> dict:
    out = c.tmp / f"cross-{name.split()[0]}"
    killed = _run_killed(c, out, ["--deterministic", *first])
    text = _run(c, out, ["--deterministic", *then])
    meta = json.loads((out / "meta.json").read_text()) if (out / "meta.json").exists() else {}
    ran = meta.get("execution", {})
    ok = killed and meta.get("status") == "completed" and bool(meta.get("resumes"))
    ok &= ran.get("cuda_graphs") is True or "graphs" not in name
    ok &= str(meta.get("device", "")).startswith("cuda")
    detail = f"resumes {meta.get('resumes')}, {ran}" if meta else f"no meta.json: {text[-300:]}"
    return row(f"resume {name}", ok, detail, keep_off)


LEASE_HOLDER = r"""
import json, os, sys
from normdrop import gpu_lease
lease = gpu_lease.setup_device_env(sys.argv[1], int(sys.argv[3]), wait_s=30)
info = {"pid": os.getpid(), "slot": getattr(lease, "slot", None),
        "device": getattr(lease, "device", None),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
if sys.argv[2] == "cuda":
    import torch
    x = torch.ones(1, device="cuda")  # CUDA starts only now, narrowed to the leased GPU
    info["cuda_devices_seen"] = torch.cuda.device_count()
print(json.dumps(info), flush=True)
sys.stdin.read()  # hold the lease until the parent closes stdin
"""


def hold_leases(c: Check, env: dict, n: int, lock_dir: Path) -> list[dict]:
    """n processes each taking a lease (gpu_slots_per_gpu n); their reports once all hold."""
    cmd = [sys.executable, "-c", LEASE_HOLDER, str(lock_dir), c.device.type, str(n)]
    popen = dict(env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    procs = [subprocess.Popen(cmd, **popen) for _ in range(n)]
    try:
        return [json.loads(p.stdout.readline() or f'{{"exit": {p.wait()}}}') for p in procs]
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=60)


def lease_without_nvidia_smi(c: Check) -> dict:
    check, keep_off = "lease without nvidia-smi", "gpu leases without CUDA_VISIBLE_DEVICES"
    if not c.cuda:
        return row(check, None)
    env = {k: v for k, v in c.env.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["PATH"] = str(c.tmp / "no-nvidia-smi")  # an empty folder: no nvidia-smi on PATH
    (c.tmp / "no-nvidia-smi").mkdir(exist_ok=True)
    [held] = hold_leases(c, env, 1, c.tmp / "locks-no-smi")
    ok = held.get("slot") is not None and held.get("cuda_devices_seen") == 1
    return row(check, ok, json.dumps(held), keep_off)


def short_run(c: Check, check: str, model: str, keep_off: str, needs_cuda: bool, **settings):
    """3 steps of `model` with `settings`: finite losses."""
    if needs_cuda and not c.cuda:
        return row(check, None)
    result = train(c.cell(model, **settings), c.data(3), c.device, log=speed.quiet)
    ok = finite(result) and result.status == "completed"
    return row(check, ok, f"{len(result.steps)} steps, losses finite: {finite(result)}", keep_off)


def lstm_graphs_refused(c: Check) -> dict:
    """cuda_graphs on for nn.LSTM with dropout (cuDNN's dropout state is not graph-safe) stops
    with one line before anything runs; pure settings logic, so on a CPU too."""
    cfg = c.cell("lstm", "dropout", cuda_graphs="on")  # norm none: nn.LSTM, dropout on
    try:
        resolve_execution(cfg, torch.device("cuda"))
    except ConfigError as err:
        ok = "\n" not in str(err) and "lstm" in str(err)
        return row("graphs refused: lstm, norm none + dropout", ok, str(err), "cuda_graphs")
    return row("graphs refused: lstm, norm none + dropout", False, "accepted", "cuda_graphs")


def graphs(c: Check) -> dict:
    deterministic = torch.are_deterministic_algorithms_enabled()
    use_deterministic_algorithms()
    try:
        rows = []
        for model in GRAPH_MODELS:
            rows += guard(f"graph == eager, {model}", "cuda_graphs", graph_vs_eager, c, model)
            rows += guard(
                f"lr reaches the graph, {model}", "cuda_graphs", lr_reaches_graph, c, model
            )
            rows += guard(f"no host sync per step, {model}", "cuda_graphs", no_host_sync, c, model)
        for model in FUSED_GRAPH_MODELS:
            for layout in FUSED_LAYOUTS:
                check = f"fused graph == fused eager, {model} K={FUSED_K} {layout}"
                keep = "cuda_graphs with fuse"
                rows += guard(check, keep, fused_graph_vs_eager, c, model, layout)
    finally:  # the sections after this one run as the workflow does by default
        torch.use_deterministic_algorithms(deterministic)
        torch.backends.cudnn.deterministic = deterministic
    rows += guard(
        "graphs refused: lstm, norm none + dropout", "cuda_graphs", lstm_graphs_refused, c
    )
    graphs_on = "on" if c.cuda else "off"
    rows += cross_resumes(c)
    keep = "gpu leases without CUDA_VISIBLE_DEVICES"
    rows += guard("lease without nvidia-smi", keep, lease_without_nvidia_smi, c)
    both = dict(compile=True, cuda_graphs="on")
    args = ("compile + graphs", "mlp", "compile with cuda_graphs", True)
    rows += guard("compile + graphs", "compile with cuda_graphs", short_run, c, *args, **both)
    crop = dict(augment="crop_flip", cuda_graphs=graphs_on)
    args = ("augment crop_flip", "cnn", "augment: crop_flip", False)
    rows += guard("augment crop_flip", "augment: crop_flip", short_run, c, *args, **crop)
    return section(rows)


# --------------------------------------------------------------------------- smoke
def smoke_run(c: Check, shape: str, model: str, variant: str, data) -> dict:
    cfg = c.cell(model, variant)
    result = train(cfg, data, c.device, log=speed.quiet)
    folder = c.tmp / "smoke" / shape / model / variant  # not under --out: 3 files per run
    write_outputs(folder, cfg, result, {"device": str(c.device)})
    written = all((folder / f).exists() for f in ("steps.parquet", "epochs.parquet", "meta.json"))
    ok = result.status == "completed" and finite(result) and written
    detail = f"final loss {result.steps.loss.iloc[-1]:.4f}, outputs written {written}"
    ex = result.execution
    detail += f" ({ex['precision']}, {ex['memory_format']}, Adam {ex['adam']})"
    return row(f"{shape} {model} {variant}", ok, detail, "the GPU (device cuda)")


def smoke(c: Check) -> dict:
    rows = []
    for shape in ("cifar", "mnist"):
        data = c.data(c.sizes.smoke_steps, shape)
        for model in c.models:
            for variant in c.config["variants"]:
                check = f"{shape} {model} {variant}"
                rows += guard(
                    check, "the GPU (device cuda)", smoke_run, c, shape, model, variant, data
                )
    passed = sum(r["status"] == "pass" for r in rows)
    return section(rows, f"{passed}/{len(rows)} runs finished with finite losses and their outputs")


# --------------------------------------------------------------------------- resume
def _run_cmd(c: Check, out: Path, flags: list[str]) -> list[str]:
    """The training CLI on 3 epochs of resume_steps - 1 full batches and a smaller last one
    (eager under CUDA graphs), the CNN with BN and dropout, checkpointing after every step."""
    n_train = round((c.sizes.resume_steps - 0.5) * c.sizes.batch)
    data = speed.synthetic_file(c.tmp, n_train, "cifar", seed=3)
    cfg = c.cell("cnn", epochs=3, lr_milestones=(2,), checkpoint_every_s=0.0)
    paths = ["--data", data, "--out", out, "--checkpoint", out.with_suffix(".ckpt")]
    device = ["--device", c.device, "--gpu-lock-dir", c.tmp / "locks"]
    cli = [sys.executable, "-m", "normdrop.train"]
    return cli + [str(arg) for arg in paths + device] + to_cli_args(cfg) + flags


def _run(c: Check, out: Path, flags: list[str]) -> str:
    cmd = _run_cmd(c, out, flags)
    proc = subprocess.run(cmd, env=c.env, capture_output=True, text=True, timeout=600)
    return proc.stdout + proc.stderr + f"\n(exit {proc.returncode})"


def _run_killed(c: Check, out: Path, flags: list[str]) -> bool:
    """The training CLI, SIGKILLed once its checkpoint is one saved inside epoch 2; False if it
    ended first."""
    cmd, ckpt = _run_cmd(c, out, flags), out.with_suffix(".ckpt")
    proc = subprocess.Popen(cmd, env=c.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < 300:
        try:
            saved = torch.load(ckpt, map_location="cpu", weights_only=True)
            if saved["epoch"] == 1 and saved["mid_epoch"] is not None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
        except Exception:  # not written yet, or being replaced
            pass
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    return False


def _compare(out_a: Path, out_b: Path) -> dict:
    """Bitwise equality and largest differences of two runs' per-epoch and per-step metrics."""
    import pandas as pd

    a, b = (
        pd.read_parquet(o / "epochs.parquet").drop(columns="wall_time_s") for o in (out_a, out_b)
    )
    sa, sb = (pd.read_parquet(o / "steps.parquet") for o in (out_a, out_b))
    loss_rel = float(((a.train_loss_mean - b.train_loss_mean).abs() / a.train_loss_mean).max())
    acc = float(max((a[k] - b[k]).abs().max() for k in ("train_acc", "val_acc", "test_acc")))
    within = loss_rel <= RESUME_TOLERANCE["loss_rel"] and acc <= RESUME_TOLERANCE["acc"]
    return {
        "bitwise": a.equals(b) and sa.equals(sb),
        "within": within,
        "max rel. loss diff": loss_rel,
        "max acc diff": acc,
    }


def resume_mode(c: Check, mode: str, flags: list, must: str, keep_off: str) -> dict:
    ref, out = (c.tmp / f"resume-{mode.replace(' ', '-')}-{k}" for k in ("ref", "killed"))
    text = _run(c, ref, flags)
    killed = _run_killed(c, out, flags)
    text += _run(c, out, flags)
    if not (out / "meta.json").exists() or not (ref / "meta.json").exists():
        raise RuntimeError(f"{mode}: the training CLI did not finish: {text[-2000:]}")
    d = _compare(ref, out)
    resumes = json.loads((out / "meta.json").read_text())["resumes"]
    detail = f"killed in epoch 2 {killed}, resumes {resumes}, must be {must}"
    ok = killed and bool(resumes) and d[must]
    return row(f"{mode}: killed + resumed == uninterrupted", ok, detail, keep_off, **d)


def resume(c: Check) -> dict:
    modes = {  # mode: (CLI flags, what the resumed run must match, setting to keep off)
        "deterministic": (["--deterministic"], "bitwise", "resuming (deterministic)"),
        "default": (["--no-deterministic"], "within", "resuming"),
    }
    if c.cuda:
        graphs_on = ["--deterministic", "--cuda-graphs", "on"]
        modes["cuda graphs"] = (graphs_on, "bitwise", "cuda_graphs")
    if c.tiny:  # the code path once: each mode is 3 training processes (the suite's time)
        modes = {"deterministic": modes["deterministic"]}
    rows = []
    for mode, (flags, must, keep_off) in modes.items():
        check = f"{mode}: killed + resumed == uninterrupted"
        rows += guard(check, keep_off, resume_mode, c, mode, flags, must, keep_off)
    tolerance = f"{RESUME_TOLERANCE['loss_rel']} relative loss, {RESUME_TOLERANCE['acc']} accuracy"
    passed = sum(r["status"] == "pass" for r in rows)
    summary = f"{passed}/{len(rows)} killed and resumed runs equal the uninterrupted ones"
    return section(rows, summary + f" (without bitwise: within {tolerance})")


# --------------------------------------------------------------------------- leases
def leases(c: Check) -> dict:
    rows = guard("2 processes, gpu_slots_per_gpu 2", "gpu_slots_per_gpu > 1", lease_rows, c)
    return section(rows, rows[0].get("summary", ""))


def lease_rows(c: Check) -> list[dict]:
    env = dict(c.env)
    if c.cuda:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        index = c.device.index or 0
        env["CUDA_VISIBLE_DEVICES"] = visible.split(",")[index] if visible else str(index)
        where = f"GPU {env['CUDA_VISIBLE_DEVICES']}"
    else:
        env["CUDA_VISIBLE_DEVICES"] = "0"  # a fake device list: only the lease files are real
        where = "a fake device list (CPU: CUDA is not touched)"
    held = hold_leases(c, env, 2, c.tmp / "lease-locks")
    slots = sorted(h.get("slot") for h in held if h.get("slot") is not None)
    ok = slots == [0, 1] and all(h.get("cuda_devices_seen", 1) == 1 for h in held)
    rows = [
        row(f"process {i + 1}", ok, json.dumps(h), "gpu_slots_per_gpu > 1", slot=h.get("slot"))
        for i, h in enumerate(held)
    ]
    expected = "" if ok else " (expected [0, 1], one device each)"
    rows[0]["summary"] = f"2 processes, gpu_slots_per_gpu 2, on {where}: slots {slots}{expected}"
    return rows


# --------------------------------------------------------------------------- precision
def precision_run(c: Check, group: str, seed: int, settings: dict, data, runs: dict) -> dict:
    cfg = c.cell("cnn", seed=seed, epochs=c.sizes.precision_epochs, **settings)
    result = train(cfg, data, c.device, log=speed.quiet)
    last = result.epochs.iloc[-1]
    runs[group, seed] = {"test_acc": float(last.test_acc), "train_loss": last.train_loss_mean}
    keep_off = "precision: bf16" + (", cuda_graphs" if "graphs" in group else "")
    return row(f"{group} seed {seed}", finite(result), "", keep_off, **runs[group, seed])


def compare(runs: dict, a: str, b: str, metric: str, n_test: int) -> dict:
    """Group a against group b on `metric`, same seed against same seed (same initial weights,
    batches and dropout masks: only the arithmetic differs). The tolerance: within 2 standard
    errors of what a change of seed makes, 2 x sqrt(2 / n) x the seed SD of b over n pairs, as
    if a's run were another seed's (the most its arithmetic can move a run by chance); the
    seed SD at least the binomial SD of one run's accuracy on n_test images, sqrt(p (1 - p) /
    n_test), and 1 % of the mean loss. Larger, precision shifts a result more than the seeds the
    study averages over: it fails."""
    seeds = sorted(s for g, s in runs if g == a and (b, s) in runs)
    if len(seeds) < 2:
        return row(f"{a} vs {b}: {metric}", False, f"{len(seeds)} same-seed pairs finished")
    mean_a = statistics.fmean(runs[a, s][metric] for s in seeds)
    values_b = [runs[b, s][metric] for s in seeds]
    mean_b = statistics.fmean(values_b)
    floor = math.sqrt(mean_b * (1 - mean_b) / n_test) if metric == "test_acc" else 0.01 * mean_b
    seed_sd = max(statistics.stdev(values_b), floor)
    bound = 2 * math.sqrt(2 / len(seeds)) * seed_sd
    diff = mean_a - mean_b
    detail = f"mean of {len(seeds)} same-seed differences {diff:+.4f}, tolerance {bound:.4f} "
    detail += f"(2 SE of a seed change: seed SD {seed_sd:.4f})"
    keep_off = "precision: bf16" + (", cuda_graphs" if "graphs" in a else "")
    return row(f"{a} vs {b}: {metric}", abs(diff) <= bound, detail, keep_off, difference=diff)


def precision(c: Check) -> dict:
    n_train, n_test = c.sizes.precision_steps * c.sizes.batch, c.sizes.precision_test
    data = speed.synthetic(c.tmp, n_train, "cifar", seed=5, n_eval=n_test)
    groups = {"fp32": {"precision": "fp32"}, "bf16": {"precision": "bf16"}}
    if c.cuda:
        groups["bf16, cuda graphs"] = {"precision": "bf16", "cuda_graphs": "on"}
    rows, runs = [], {}
    for group, settings in groups.items():
        for seed in c.sizes.precision_seeds:
            keep_off = "precision: bf16" + (", cuda_graphs" if "graphs" in group else "")
            args = (c, group, seed, settings, data, runs)
            rows += guard(f"{group} seed {seed}", keep_off, precision_run, *args)
    pairs = [("bf16", "fp32"), ("bf16, cuda graphs", "bf16")][: len(groups) - 1]
    compared = [
        compare(runs, a, b, m, n_test) for a, b in pairs for m in ("test_acc", "train_loss")
    ]
    if c.tiny:  # 2 seeds, a few steps: the code path, not a comparison
        compared = [r | {"status": "info"} for r in compared]
    rows += compared
    steps = c.sizes.precision_epochs * c.sizes.precision_steps
    summary = f"CNN bn_dropout, {len(c.sizes.precision_seeds)} seeds x {steps} steps, "
    summary += f"{n_test} test images: " + "; ".join(
        f"{r['check']} {r['status']}" for r in compared
    )
    summary += " (tiny: information only)" if c.tiny else ""
    return section(rows, summary)


# --------------------------------------------------------------------------- speed
SPEED_KEEP_OFF = {
    "eager": "the GPU (device cuda)",
    "compile": "compile",
    "cuda graphs": "cuda_graphs",
}


def speed_model(c: Check, model: str) -> dict:
    """speed.measure for one model; a setting that crashed fails the row, naming the setting."""
    compile_ = {"compile": True} if not c.tiny and model == "resnet20" else None
    graphs_on = {"cuda_graphs": "on"} if c.cuda else None
    settings = {"eager": {}, "compile": compile_, "cuda graphs": graphs_on}
    cfg = replace(c.cell(model), batch_size=speed.BATCH)
    processes = c.sizes.processes if not c.tiny or model == "mlp" else ()
    workers = 8 if c.cuda else 2
    r = speed.measure(
        cfg, "cifar", c.sizes.speed_steps, c.device, c.tmp, settings, workers, processes,
        c.sizes.window_s,
    )  # fmt: skip
    failed = r.pop("failed", {})
    keep_off = ", ".join(SPEED_KEEP_OFF[k] for k in failed)
    detail = "; ".join(f"{k}: {v}" for k, v in failed.items())
    return row(f"speed {model}", not failed, detail, keep_off) | r


def speed_section(c: Check) -> dict:
    """speed.measure per model: eager, compiled (ResNet-20; not in tiny mode: a minute or more
    on a CPU), CUDA graphs (CUDA only), textbook loop, 1 and k processes over one shared window
    (tiny mode: the MLP only); the grid projected at each model's best rate, MNIST at the
    CIFAR-shaped."""
    rows = []
    for model in c.config["models"]:
        rows += guard(f"speed {model}", "the GPU (device cuda)", speed_model, c, model)
    measured = [r for r in rows if r.get("best")]
    hours = None
    if {r["model"] for r in measured} == set(c.config["models"]):
        hours = speed.grid_hours(c.config, speed.grid_rates(measured))
    ratios = [r["best / textbook"] for r in measured if "best / textbook" in r]
    met = {True: "met", False: "not met"}
    summary = "best / textbook: not measured" if not ratios else ""
    if ratios:
        worst = min(ratios)
        summary = f"best / textbook {worst:.2f}x at worst (target {SPEEDUP_TARGET:g}x: "
        summary += f"{met[worst >= SPEEDUP_TARGET]})"
    if hours is None:
        summary += "; grid not projected (a model has no figure)"
    else:
        summary += f"; projected grid {hours:.2f} h (target {GRID_TARGET_H:g} h: "
        summary += f"{met[hours <= GRID_TARGET_H]})"
    note = "images/s (eval: of train's loss_and_accuracy), CIFAR-shaped, batch 128, bn_dropout; "
    note += "'1 proc.', 'k proc.': the eager step in 1 and in k processes at once, all timed over "
    note += f"one shared {c.sizes.window_s:g} s window; the projection: each model's best "
    note += "setting scaled by the sharing gain (k proc. / 1 proc.), every variant at the "
    note += "bn_dropout rate"
    s = section(rows, summary, grid_hours=hours, note=note)
    return s | {"status": "fail" if s["status"] == "fail" else "info"}


# --------------------------------------------------------------------------- fusion
def fusion(c: Check) -> dict:
    """Aggregate images/s of K fused members against K separate processes (one at a time: the
    single process's rate) and K processes sharing the device, per model and K. The fused job
    runs in the settings' memory format (auto: channels_last on CUDA, each member's slices
    channels_last); at the first K, also with CUDA graphs (CUDA) and, for the convolutional
    models, contiguous (CUDA)."""
    rows, steps = [], c.sizes.speed_steps
    data = speed.synthetic(c.tmp, steps * speed.BATCH, "cifar")
    for model in ("cnn",) if c.tiny else ("mlp", "cnn", "resnet20"):
        cfg = replace(c.cell(model), batch_size=speed.BATCH)
        layout = resolve_execution(cfg, c.device).describe()["memory_format"]
        alone = speed.ours_images_per_s(cfg, data, c.device)["images_per_s"]
        for i, k in enumerate((2,) if c.tiny else (3, 4, 12)):
            fused = fused_speed.fused_images_per_s(cfg, data, c.device, k)
            shared = speed.concurrent_images_per_s(
                cfg, "cifar", steps, c.device, k, c.sizes.window_s
            )
            rows.append(
                {"model": model, "K": k, "memory format": layout, "fused images/s": fused,
                 "separate images/s": alone, "shared images/s": shared,
                 "fused / separate": fused / alone, "fused / shared": fused / shared}
            )  # fmt: skip
            if i == 0 and layout == "channels_last" and model != "mlp":
                plain = replace(cfg, memory_format="contiguous")
                contiguous = fused_speed.fused_images_per_s(plain, data, c.device, k)
                rows[-1]["fused contiguous images/s"] = contiguous
            if i == 0 and c.cuda:  # the fused step captured (full batches), as K = 1's graphs
                captured = replace(cfg, cuda_graphs="on")
                graphs = fused_speed.fused_images_per_s(captured, data, c.device, k)
                rows[-1]["fused graphs images/s"] = graphs
    best = max(rows, key=lambda r: r["fused / separate"])
    summary = f"best: {best['model']} K={best['K']} fused {best['fused images/s']:,.0f} images/s"
    summary += f", {best['fused / separate']:.2f}x one process, {best['fused / shared']:.2f}x "
    summary += f"{best['K']} processes sharing the device ({best['memory format']})"
    return {"status": "info", "summary": summary, "rows": rows}


# --------------------------------------------------------------------------- report
SECTIONS = {
    "graphs": graphs,
    "smoke": smoke,
    "resume": resume,
    "leases": leases,
    "precision": precision,
    "speed": speed_section,
    "fusion": fusion,
}


def projected_s(c: Check, name: str) -> float | None:
    """The section's projected seconds on this device and sizes; None where there is no basis
    (full sizes on a CPU)."""
    cuda_s, tiny_s = PROJECTED_S[name]
    return cuda_s if c.cuda and not c.tiny else tiny_s if c.tiny else None


def run_section(c: Check, name: str) -> dict:
    try:
        return SECTIONS[name](c)
    except Exception as err:  # a crash outside any row: the report still names what broke
        summary = f"crashed: {type(err).__name__}: {err}"
        return {"status": "fail", "summary": summary, "traceback": traceback.format_exc()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "results" / "gpu-check")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: checks the script runs")
    p.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    p.add_argument(
        "--budget-s", type=float, default=BUDGET_S,
        help=f"seconds the check may take; a section that would end later is skipped (default: "
        f"{BUDGET_S})",
    )  # fmt: skip
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary folder")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available (use --device cpu)")
    c, t_start = Check(args), time.perf_counter()
    plan = [n for n in SECTIONS if n in args.sections]
    basis = "one H100/H200, estimated" if c.cuda else "tiny on 2 CPU cores, measured"
    budget = {"budget_s": args.budget_s, "basis": basis}
    budget["plan"] = {n: projected_s(c, n) for n in plan}
    report = {"machine": speed.machine(c.device), "tiny": args.tiny, "budget": budget}
    report |= {"sections": {}, "skipped": {}, "seconds": 0.0}
    report["verdict"] = verdict(report, args.tiny, pending=plan)
    write_report(c.out, report)
    print(f"# GPU check on {report['machine']['device']}{' (tiny)' if args.tiny else ''}")
    print(f"temporary folder: {c.tmp}", flush=True)
    try:
        for i, name in enumerate(plan):
            t0, projected = time.perf_counter(), projected_s(c, name)
            left = args.budget_s - (t0 - t_start)
            if projected is not None and projected > left:
                why = f"projected {projected:g} s, {max(left, 0):.0f} s of the budget left"
                report["skipped"][name] = why
                line = f"{name}: skipped for time: {why}"
            else:
                s = run_section(c, name)
                s["seconds"], s["projected_s"] = round(time.perf_counter() - t0, 1), projected
                report["sections"][name] = s
                line = f"{name}: {s['status']}: {s['summary']} ({s['seconds']} s)"
            report["seconds"] = round(time.perf_counter() - t_start, 1)
            report["verdict"] = verdict(report, args.tiny, pending=plan[i + 1 :])
            write_report(c.out, report)  # before the line: whoever sees it finds the report
            print(line, flush=True)
    finally:
        if not args.keep_tmp:
            shutil.rmtree(c.tmp, ignore_errors=True)
    print(f"report: {c.out / 'gpu_check.md'}, {c.out / 'gpu_check.json'}")
    print(f"gpu-check: {report['verdict']}")
    return 1 if report["verdict"].startswith("FAIL") else 0


if __name__ == "__main__":
    raise SystemExit(main())
