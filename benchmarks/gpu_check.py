"""GPU check: everything the GPU path needs, checked and measured in one command.

    ./dev.sh gpu-check [--out DIR] [--device cuda|cpu] [--tiny]
    PYTHONPATH=src python3 benchmarks/gpu_check.py [--out DIR] ...   # without our venv

Needs torch, torchvision, numpy, pandas, pyarrow and pyyaml only (no snakemake, no jsonschema),
so that it runs with the CUDA build of PyTorch a GPU machine comes with. Sections:

  smoke      each model x each variant of config.yaml, a short epoch on CIFAR- and MNIST-shaped
             synthetic data with the workflow's default execution settings: finite losses,
             outputs written (steps.parquet, epochs.parquet, meta.json).
  resume     the training CLI SIGKILLed in the middle of epoch 2 and rerun ends with the metrics
             of the uninterrupted run: bitwise with --deterministic, and within RESUME_TOLERANCE
             without (non-deterministic kernels).
  leases     two processes with gpu_slots_per_gpu 2 on one GPU hold different slots (on CPU:
             the same, on a fake device list; no CUDA is touched).
  speed      images/s per model: ours eager, compiled, with CUDA graphs, against the textbook
             DataLoader loop of bench_train.py; aggregate images/s of 1, 2, 4 processes sharing
             the device; the projected time of the full grid with the best of them.
  fusion     a prototype, for speed only: the 3 seeds of one cell as one model in one process
             (torch.func.stack_module_state + vmap over functional_call), aggregate images/s
             against 3 separate processes. Not wired into the workflow.
  precision  the CNN, a few epochs, 3 seeds each in bf16 and fp32: the difference of final test
             accuracy and of the last epoch's loss SD, set against the spread over seeds.

Writes <out>/gpu_check.md and <out>/gpu_check.json and prints a one-line verdict last. The
verdict fails when smoke, resume or leases fail or any section crashes; speed, fusion and
precision report figures and the targets (3x the textbook loop per model; the grid in under
1 hour on one GPU). `--tiny` (with `--device cpu`: about a minute) shrinks every size so that
the test suite can run the whole script; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import bench_train as bench  # this folder: synthetic data, the textbook loop, the projection
import torch
import torch.nn.functional as F
import yaml

from normdrop.config import run_config
from normdrop.data import SyntheticSpec, download, prepare
from normdrop.models import build_model
from normdrop.train import train, write_outputs

ROOT = Path(__file__).resolve().parents[1]
# Resumed vs uninterrupted run without --deterministic: non-deterministic kernels (atomics in
# cuDNN's backward) differ in the last bits, and bf16 rounding carries that on. Bounds of the
# order of bf16 noise (see tests/test_gpu_path.py): relative difference of the per-epoch mean
# training loss, absolute difference of accuracies.
RESUME_TOLERANCE = {"loss_rel": 0.02, "acc": 0.03}
SPEEDUP_TARGET = 3.0  # ours / textbook images/s per process, every model
GRID_TARGET_H = 1.0  # the full grid projected on one GPU


@dataclass(frozen=True)
class Sizes:
    batch: int
    smoke_steps: int
    resume_steps: int  # per epoch, 3 epochs
    speed_steps: int  # per timed measurement
    processes: tuple[int, ...]  # concurrency levels
    fusion_steps: int
    precision_epochs: int
    precision_train: int  # training images
    tiny: bool


FULL = Sizes(128, 50, 20, 200, (1, 2, 4), 100, 5, 10_000, tiny=False)
TINY = Sizes(32, 3, 6, 2, (1, 2), 3, 2, 256, tiny=True)
SEEDS = (42, 43, 44)


def log(msg: str) -> None:
    print(msg, flush=True)


def quiet(_line: str) -> None:
    pass


class Check:
    """What every section reads: device, sizes, the config's grid, where to write."""

    def __init__(self, args):
        self.device = torch.device(args.device)
        self.sizes = TINY if args.tiny else FULL
        self.config = yaml.safe_load((ROOT / "config.yaml").read_text())
        self.out = args.out
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}  # fmt: skip
        self.env = {k: v for k, v in self.env.items() if not k.startswith("SLURM_")}

    def width(self, model: str) -> int:
        if self.sizes.tiny:
            return bench.TINY_WIDTH[model]
        return self.config["models"][model]["width"]

    def cell(self, model: str, variant: str, dataset: str, seed=SEEDS[0], **overrides):
        """The workflow's settings for one cell of config.yaml (one epoch unless overridden)."""
        settings = dict(width=self.width(model), batch_size=self.sizes.batch, epochs=1,
                        milestones=())  # fmt: skip
        return run_config(self.config, dataset, model, variant, seed, **{**settings,
                          **overrides})  # fmt: skip


def finite(result) -> bool:
    return bool(torch.isfinite(torch.tensor(result.steps["loss"].to_numpy())).all())


# --------------------------------------------------------------------------- smoke
def smoke(c: Check) -> dict:
    rows = []
    for shape in ("cifar", "mnist"):
        data = bench.make_prepared(c.sizes.smoke_steps * c.sizes.batch, shape)
        for model in c.config["models"]:
            for variant in c.config["variants"]:
                cfg = c.cell(model, variant, data.name)
                t0 = time.perf_counter()
                result = train(cfg, data, c.device, log=quiet)
                folder = c.out / "smoke" / shape / model / variant
                write_outputs(folder, cfg, result, {"device": str(c.device)})
                files = all((folder / f).exists() for f in bench_files())
                ok = result.status == "completed" and finite(result) and files
                rows.append({
                    "shape": shape, "model": model, "variant": variant,
                    "steps": len(result.steps), "final loss": round(result.steps.loss.iloc[-1], 4),
                    "finite": finite(result), "outputs": files, "seconds":
                    round(time.perf_counter() - t0, 2), "ok": ok,
                })  # fmt: skip
    passed = sum(r["ok"] for r in rows)
    ex = result.execution
    return {
        "status": "pass" if passed == len(rows) else "fail",
        "summary": f"{passed}/{len(rows)} runs finished with finite losses and their outputs "
        f"({ex['precision']}, {ex['memory_format']}, Adam {ex['adam']})",
        "rows": rows,
    }


def bench_files():
    return ("steps.parquet", "epochs.parquet", "meta.json")


# --------------------------------------------------------------------------- resume
def _train_cmd(c: Check, data: Path, out: Path, ckpt: Path, flags: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "normdrop.train", "--data", str(data), "--dataset", "synthetic",
        "--model", "cnn", "--width", str(c.width("cnn")), "--norm", "batch", "--dropout", "0.3",
        "--epochs", "3", "--milestones", "2", "--batch-size", str(c.sizes.batch),
        "--device", str(c.device), "--out", str(out), "--checkpoint", str(ckpt),
        "--checkpoint-every-s", "0", "--gpu-lock-dir", str(c.tmp / "locks"), *flags,
    ]  # fmt: skip


def _kill_mid_epoch_2(proc, ckpt: Path, timeout_s=300.0) -> bool:
    """SIGKILL proc once its checkpoint is one saved inside epoch 2; False if it ended first."""
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < timeout_s:
        try:
            saved = torch.load(ckpt, map_location="cpu", weights_only=True)
            if saved["epoch"] == 1 and saved["mid_epoch"] is not None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
        except Exception:  # not written yet
            pass
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    return False


def _compare(out_a: Path, out_b: Path) -> dict:
    """Bitwise equality and the largest differences of two runs' per-epoch and per-step metrics."""
    import pandas as pd

    a, b = (pd.read_parquet(o / "epochs.parquet").drop(columns="wall_time_s")
            for o in (out_a, out_b))  # fmt: skip
    sa, sb = (pd.read_parquet(o / "steps.parquet") for o in (out_a, out_b))
    loss_rel = float(((a.train_loss_mean - b.train_loss_mean).abs() / a.train_loss_mean).max())
    acc = float(max((a[k] - b[k]).abs().max() for k in ("train_acc", "val_acc", "test_acc")))
    return {
        "bitwise equal": a.equals(b) and sa.equals(sb),
        "max rel. loss diff": f"{loss_rel:.2e}",
        "max acc diff": f"{acc:.4f}",
        "within": loss_rel <= RESUME_TOLERANCE["loss_rel"] and acc <= RESUME_TOLERANCE["acc"],
    }


def resume(c: Check) -> dict:
    # 3 epochs of resume_steps - 1 full batches and a last, smaller one (eager under CUDA graphs).
    n_train = round((c.sizes.resume_steps - 0.5) * c.sizes.batch / 0.9)  # 10% go to validation
    spec = SyntheticSpec(n_train=n_train, n_test=500, num_classes=10, channels=3, size=32,
                         noise=0.35, seed=3)  # fmt: skip
    download("synthetic", c.tmp / "raw", spec)
    data = prepare("synthetic", c.tmp / "raw", c.tmp / "synthetic.pt", val_fraction=0.1)
    # mode -> (CLI flags, what the resumed run must match: bitwise, or within the tolerance)
    modes = {"deterministic": (["--deterministic"], "bitwise"),
             "default": (["--no-deterministic"], "within")}  # fmt: skip
    if c.device.type == "cuda":
        modes["cuda graphs, deterministic"] = (
            ["--deterministic", "--cuda-graphs", "on"],
            "bitwise",
        )
    rows = []
    for mode, (flags, must) in modes.items():
        outs = {k: c.tmp / f"resume-{mode.replace(', ', '-')}-{k}".replace(" ", "_")
                for k in ("ref", "killed")}  # fmt: skip
        killed = False
        for k, out in outs.items():
            ckpt = out.with_suffix(".ckpt")
            cmd = _train_cmd(c, data, out, ckpt, flags)
            proc = subprocess.Popen(cmd, env=c.env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)  # fmt: skip
            if k == "killed":
                killed = _kill_mid_epoch_2(proc, ckpt)
                proc = subprocess.Popen(cmd, env=c.env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)  # fmt: skip
            text = proc.communicate(timeout=600)[0]
            if proc.returncode:
                raise RuntimeError(f"{mode}: training CLI exited {proc.returncode}: {text[-2000:]}")
        d = _compare(outs["ref"], outs["killed"])
        meta = json.loads((outs["killed"] / "meta.json").read_text())
        ok = killed and bool(meta["resumes"]) and d[must.replace("bitwise", "bitwise equal")]
        rows.append({"mode": mode, "compared": "killed + resumed vs uninterrupted",
                     "killed mid-epoch 2": killed, "resumes": str(meta["resumes"]),
                     **d, "must be": must, "ok": ok})  # fmt: skip
        if mode.startswith("cuda graphs"):  # the graph against eager, both deterministic
            d = _compare(c.tmp / "resume-deterministic-ref", outs["ref"])
            rows.append({"mode": mode, "compared": "uninterrupted: cuda graphs vs eager", **d,
                         "must be": "within", "ok": d["within"]})  # fmt: skip
    ok = all(r["ok"] for r in rows)
    return {
        "status": "pass" if ok else "fail",
        "summary": "; ".join(
            f"{r['mode']} ({r['compared']}): bitwise {r['bitwise equal']}, "
            f"max rel. loss diff {r['max rel. loss diff']}, max acc diff "
            f"{r['max acc diff']}"
            for r in rows
        )  # fmt: skip
        + f" (tolerance without bitwise: {RESUME_TOLERANCE['loss_rel']} relative loss, "
        f"{RESUME_TOLERANCE['acc']} accuracy)",
        "rows": rows,
    }


# --------------------------------------------------------------------------- leases
HOLDER = r"""
import json, os, sys
from normdrop import gpu_lease
lease = gpu_lease.setup_device_env(sys.argv[1], 2, wait_s=30)
info = {"pid": os.getpid(), "slot": lease.slot, "device": lease.device,
        "cuda_visible_devices": os.environ["CUDA_VISIBLE_DEVICES"]}
if sys.argv[2] == "cuda":
    import torch
    x = torch.ones(1, device="cuda")  # CUDA starts only now, narrowed to the leased GPU
    info["cuda_devices_seen"] = torch.cuda.device_count()
    info["gpu"] = torch.cuda.get_device_name(0)
print(json.dumps(info), flush=True)
sys.stdin.read()  # hold the lease until the parent closes stdin
"""


def leases(c: Check) -> dict:
    env = dict(c.env)
    if c.device.type == "cuda":
        index = c.device.index or 0
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        env["CUDA_VISIBLE_DEVICES"] = visible.split(",")[index] if visible else str(index)
        where = f"GPU {env['CUDA_VISIBLE_DEVICES']}"
    else:
        env["CUDA_VISIBLE_DEVICES"] = "0"  # a fake device list: only the lease files are real
        where = "a fake device list (CPU: CUDA is not touched)"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(c.tmp / "lease-locks"), c.device.type],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    rows = []
    try:
        for p in procs:
            line = p.stdout.readline()
            if not line:
                raise RuntimeError(f"lease holder exited {p.wait()} without reporting")
            rows.append(json.loads(line))
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=60)
    slots = sorted(r["slot"] for r in rows)
    ok = slots == [0, 1] and all(r.get("cuda_devices_seen", 1) == 1 for r in rows)
    return {
        "status": "pass" if ok else "fail",
        "summary": f"2 processes, gpu_slots_per_gpu 2, on {where}: slots {slots}"
        + ("" if ok else " (expected [0, 1], one device each)"),
        "rows": rows,
    }


# --------------------------------------------------------------------------- speed
def _ours(c: Check, cfg, data) -> float:
    """Images/s of train() in a run's second epoch (the first pays for compilation, graph
    capture and cuDNN's autotuning), less the epoch's evaluation of validation + test split."""
    r = train(replace(cfg, epochs=2, milestones=()), data, c.device, log=quiet)
    epoch_2_s = float(r.epochs.wall_time_s.iloc[1] - r.epochs.wall_time_s.iloc[0])
    splits = [(data.val_x, data.val_y), (data.test_x, data.test_y)]
    return len(data.train_y) / (epoch_2_s - bench.time_eval(cfg, data, c.device, splits))


def speed(c: Check) -> dict:
    steps, cuda = c.sizes.speed_steps, c.device.type == "cuda"
    workers = 8 if cuda else 2
    rows, best = [], {}
    for model in c.config["models"]:
        cfg = replace(c.cell(model, "bn_dropout", "bench-cifar"), batch_size=bench.BATCH)
        data = bench.make_prepared(steps * bench.BATCH, "cifar")
        row = {"model": model, "width": cfg.width}
        root = c.tmp / f"pickles-{model}"
        ref_cls = bench.write_cifar_pickles(data, root)
        bench.time_reference(cfg, ref_cls, root, data, c.device, workers)  # warm-up
        r = bench.time_reference(cfg, ref_cls, root, data, c.device, workers)
        row["textbook"] = r["steps"] * bench.BATCH / r["seconds"]
        row["eager"] = _ours(c, cfg, data)
        # Compiling takes a minute or more per model on a CPU (tests/test_gpu_path.py checks
        # it), starting processes seconds: tiny mode skips the first, starts processes for the
        # MLP only.
        full = not c.sizes.tiny or model == "mlp"
        row["compile"] = None if c.sizes.tiny else _ours(c, replace(cfg, compile=True), data)
        row["cuda graphs"] = _ours(c, replace(cfg, cuda_graphs="on"), data) if cuda else None
        rates = {k: v for k, v in row.items() if k not in ("model", "width", "textbook") and v}
        setting = max(rates, key=rates.get)
        row["best"] = setting
        row["best / textbook"] = rates[setting] / row["textbook"]
        # Processes sharing the device (eager, bench_train's concurrent workers).
        args = argparse.Namespace(device=str(c.device), warmup_steps=1, compile=False)
        for k in c.sizes.processes if full else (1,):
            conc = bench.run_concurrent(args, model, cfg.width, cfg.dropout, "cifar", steps, k)
            row[f"{k} proc."] = conc["images_per_s"]
        ex = bench.make_prepared(2 * cfg.eval_batch_size, "cifar", seed=2)
        row["eval"] = bench._timed_eval(cfg, ex, c.device)["seconds"]
        row["eval"] = 2 * cfg.eval_batch_size / row["eval"]
        # Best training rate: the best setting in one process, scaled by what sharing the device
        # gained for eager (processes run the workflow's jobs side by side).
        share = max(v for k, v in row.items() if k.endswith(" proc.")) / row["1 proc."]
        best[model] = (rates[setting] * share, row["eval"] * share)
        rows.append(row)
        log(f"  {model}: " + ", ".join(f"{k} {v:,.0f}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in row.items() if v is not None))  # fmt: skip
    hours = 0.0
    for w in bench.grid_work(c.config).values():  # MNIST at the CIFAR-shaped rate: a bound
        for train_rate, eval_rate in best.values():
            hours += (w["train_images"] / train_rate + w["eval_images"] / eval_rate) / 3600
    worst = min(r["best / textbook"] for r in rows)
    return {
        "status": "info",
        "summary": f"best / textbook {worst:.2f}x at worst (target {SPEEDUP_TARGET:g}x: "
        f"{'met' if worst >= SPEEDUP_TARGET else 'not met'}); projected grid "
        f"{hours:.2f} h (target {GRID_TARGET_H:g} h: {'met' if hours <= GRID_TARGET_H else 'not met'})",
        "rows": [
            {k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()} for r in rows
        ],  # fmt: skip
        "grid_hours": hours,
        "note": "images/s (eval: evaluation images/s), CIFAR-shaped, batch 128, variant bn_dropout; 'k proc.' = aggregate "
        "of k eager processes; the projection uses each model's best setting scaled by the "
        "best sharing gain, and every variant at the bn_dropout rate (an upper bound)",
    }


# --------------------------------------------------------------------------- fusion
def fused_images_per_s(c: Check, model: str, width: int, dropout: float, steps: int) -> float:
    """The 3 seeds of one cell as one model: parameters and BN buffers stacked on a leading
    seed axis, the forward pass vmapped over it (dropout masks differ per seed), one Adam over
    the stacked parameters (elementwise, so it equals 3 separate Adams)."""
    from torch.func import functional_call, stack_module_state, vmap

    k, batch, device = len(SEEDS), bench.BATCH, c.device
    data = bench.make_prepared(steps * batch, "cifar").to(device)
    models = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        m = build_model(model, data.in_shape, data.num_classes, width, "batch", dropout)
        models.append(m.to(device))
    params, buffers = stack_module_state(models)  # (k, ...) each
    params = {n: p.detach().requires_grad_() for n, p in params.items()}
    skeleton = copy.deepcopy(models[0]).to("meta")
    forward = vmap(lambda p, b, x: functional_call(skeleton, (p, b), (x,)),
                   randomness="different")  # fmt: skip
    optimizer = torch.optim.Adam(params.values(), lr=1e-3)
    scale = (1 / (255 * data.std)).view(1, 1, -1, 1, 1)
    shift = (data.mean / data.std).view(1, 1, -1, 1, 1)
    gens = [torch.Generator(device=device).manual_seed(s) for s in SEEDS]
    use_bf16 = device.type == "cuda"

    def epoch(n_steps):
        perms = torch.stack([torch.randperm(len(data.train_y), device=device, generator=g)
                             for g in gens])  # fmt: skip
        for step in range(n_steps):
            idx = perms[:, step * batch : (step + 1) * batch]  # (k, B): each seed's own order
            x = data.train_x[idx].float() * scale - shift  # (k, B, C, H, W)
            y = data.train_y[idx]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = forward(params, buffers, x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())  # mean over k*B
            optimizer.zero_grad(set_to_none=True)
            (loss * k).backward()  # each seed's gradient is that of its own mean loss
            optimizer.step()

    epoch(1)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    epoch(steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return k * steps * batch / (time.perf_counter() - t0)


def fusion(c: Check) -> dict:
    model = "cnn"
    cfg = c.cell(model, "bn_dropout", "bench-cifar")
    steps = c.sizes.fusion_steps
    fused = fused_images_per_s(c, model, cfg.width, cfg.dropout, steps)
    args = argparse.Namespace(device=str(c.device), warmup_steps=1, compile=False)
    separate = bench.run_concurrent(args, model, cfg.width, cfg.dropout, "cifar", steps, 3)
    ratio = fused / separate["images_per_s"]
    return {
        "status": "info",
        "summary": f"{model} bn_dropout, 3 seeds fused in one process {fused:,.0f} images/s vs "
        f"3 processes {separate['images_per_s']:,.0f}: {ratio:.2f}x",
        "rows": [
            {
                "model": model,
                "width": cfg.width,
                "fused images/s": round(fused),
                "3 processes images/s": round(separate["images_per_s"]),
                "fused / separate": round(ratio, 2),
            }
        ],  # fmt: skip
    }


# --------------------------------------------------------------------------- precision
def precision(c: Check) -> dict:
    import pandas as pd

    epochs = c.sizes.precision_epochs
    spec = SyntheticSpec(n_train=c.sizes.precision_train + 512, n_test=1000, num_classes=10,
                         channels=3, size=32, noise=0.35, seed=5)  # fmt: skip
    raw = c.tmp / "precision-raw"
    download("synthetic", raw, spec)
    from normdrop.data import load_prepared

    frac = 512 / spec.n_train
    data = load_prepared(prepare("synthetic", raw, c.tmp / "precision.pt", val_fraction=frac))
    # group -> settings; on CUDA also bf16 with the training step as a CUDA graph
    groups = {"fp32": dict(precision="fp32"), "bf16": dict(precision="bf16")}
    if c.device.type == "cuda":
        groups["bf16, cuda graphs"] = dict(precision="bf16", cuda_graphs="on")
    rows = []
    for group, settings in groups.items():
        for seed in SEEDS:
            cfg = c.cell("cnn", "bn_dropout", "synthetic", seed=seed, epochs=epochs, **settings)
            r = train(cfg, data, c.device, log=quiet)
            last = r.epochs.iloc[-1]
            rows.append({"group": group, "seed": seed, "test_acc": last.test_acc,
                         "train_loss_sd": last.train_loss_sd, "finite": finite(r)})  # fmt: skip
    df = pd.DataFrame(rows)
    g = df.groupby("group")[["test_acc", "train_loss_sd"]]
    mean, sd = g.mean(), g.std()
    lines, within = [], True
    pairs = [("bf16", "fp32"), ("bf16, cuda graphs", "bf16")][: len(groups) - 1]
    for a, b in pairs:
        parts = []
        for col in ("test_acc", "train_loss_sd"):
            diff = float(mean.loc[a, col] - mean.loc[b, col])
            spread = float((sd.loc[a, col] + sd.loc[b, col]) / 2)  # SD over seeds, both groups
            within &= abs(diff) <= 2 * spread
            parts.append(f"{col} {diff:+.4f} (seed SD {spread:.4f})")
        lines.append(f"{a} - {b}, mean of {len(SEEDS)} seeds: " + ", ".join(parts))
    return {
        "status": "info" if all(df.finite) else "fail",
        "summary": "; ".join(lines) + f" -> {'within' if within else 'OUTSIDE'} 2 seed SDs",
        "rows": [
            {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows
        ],  # fmt: skip
    }


# --------------------------------------------------------------------------- report
SECTIONS = {"smoke": smoke, "resume": resume, "leases": leases, "speed": speed,
            "fusion": fusion, "precision": precision}  # fmt: skip
MUST_PASS = ("smoke", "resume", "leases")


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):  # rates as whole numbers, metrics with 4 significant digits
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.4g}"
    return str(v)


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    head = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(r.get(k)) for k in head) + " |" for r in rows]
    return "\n".join(lines)


def write_report(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    md = [f"# GPU check: {report['verdict']}", ""]
    md += [f"- {k}: {v}" for k, v in report["machine"].items()]
    for name, s in report["sections"].items():
        md += ["", f"## {name}: {s['status']} ({s['seconds']} s)", "", s["summary"], ""]
        if s.get("note"):
            md += [s["note"], ""]
        md.append(markdown_table(s.get("rows", [])))
        if s.get("traceback"):
            md += ["", "```", s["traceback"], "```"]
    (out / "gpu_check.md").write_text("\n".join(md) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "results" / "gpu-check")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: checks the script runs")
    p.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available (use --device cpu)")
    c = Check(args)
    t_start = time.perf_counter()
    report = {"machine": bench.machine(c.device), "tiny": args.tiny, "sections": {}}
    log(f"# GPU check on {report['machine']['device']}{' (tiny)' if args.tiny else ''}")
    for name in args.sections:
        log(f"\n## {name}")
        t0 = time.perf_counter()
        try:
            s = SECTIONS[name](c)
        except Exception as err:  # the report still gets written, naming what broke
            s = {"status": "fail", "summary": f"crashed: {type(err).__name__}: {err}",
                 "traceback": traceback.format_exc()}  # fmt: skip
        s["seconds"] = round(time.perf_counter() - t0, 1)
        report["sections"][name] = s
        log(f"{name}: {s['status']}: {s['summary']} ({s['seconds']} s)")
    failed = [n for n, s in report["sections"].items() if s["status"] == "fail"]
    bad = [n for n in failed if n in MUST_PASS or report["sections"][n].get("traceback")]
    summaries = "; ".join(f"{n}: {s['summary']}" for n, s in report["sections"].items()
                          if n in ("speed", "precision"))  # fmt: skip
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    report["verdict"] = (
        f"{'FAIL (' + ', '.join(bad) + ')' if bad else 'PASS'} on {report['machine']['device']}"
        f"{' (tiny: figures mean nothing)' if args.tiny else ''} in {report['seconds']:.0f} s"
        + (f"; {summaries}" if summaries else "")
    )
    write_report(args.out, report)
    log(f"\nreport: {args.out / 'gpu_check.md'}, {args.out / 'gpu_check.json'}")
    log(f"gpu-check: {report['verdict']}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
