"""GPU check: whether the GPU path trains right, then how fast, in one command.

    ./dev.sh gpu-check [--out DIR] [--device cuda|cpu] [--tiny] [--sections graphs smoke ...]
    PYTHONPATH=src python3 benchmarks/gpu_check.py [--out DIR] ...   # without our venv

Needs torch, torchvision, numpy, pandas, pyarrow and pyyaml only (no snakemake, no jsonschema),
so that it runs with the CUDA build of PyTorch a GPU machine comes with. Sections, correctness
first and speed last (`--sections` picks any subset; they run in this order):

  graphs     deterministic mode, MLP, CNN and ResNet-20: GRAPH_STEPS graph replays equal as many
             eager steps from the same state (losses, weights, BN statistics and counters, Adam
             state, RNG state); a capture leaves model, optimizer and RNG as they were; the lr
             reaches the graph; no host sync per step; resumes across settings (eager ->
             graphs, CPU -> CUDA) through the training CLI; a lease without nvidia-smi; short
             runs of compile + graphs and of augment crop_flip. On CPU the eager step stands in
             for the graph, so that the comparison has run; what needs CUDA says so.
  smoke      each model x each variant of config.yaml, a short epoch on CIFAR- and MNIST-shaped
             data with the workflow's default settings: finite losses, outputs written.
  resume     the training CLI SIGKILLed in epoch 2 and rerun ends with the metrics of the
             uninterrupted run: bitwise with --deterministic (also with CUDA graphs), within
             RESUME_TOLERANCE without.
  leases     two processes with gpu_slots_per_gpu 2 on one GPU hold different slots.
  precision  the CNN, 3 seeds each in bf16 and fp32 (and bf16 with graphs): the difference of
             final test accuracy and loss SD against the spread over seeds.
  speed      images/s per model: eager, compiled, CUDA graphs against the textbook loop
             (speed.py); 2 and 4 processes sharing the device; the projected grid time.
  fusion     the prototype of fusion_prototype.py against 3 separate processes (speed only).

Writes <out>/gpu_check.md, whose first line is the verdict, and <out>/gpu_check.json, and prints
the verdict last. A failing row of graphs, smoke, resume or leases, a non-finite loss anywhere or
a crash fails the check; the verdict names the setting to keep off for each failure. `--tiny`
shrinks every size so that the test suite runs the whole script on CPU; its figures mean nothing.
"""

from __future__ import annotations

import argparse
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

import fusion_prototype
import speed
import torch
import yaml
from check_rows import row, section
from graph_steps import graph_vs_eager, lr_reaches_graph, no_host_sync

from normdrop.config import run_config, to_cli_args
from normdrop.execution import use_deterministic_algorithms
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


@dataclass(frozen=True)
class Sizes:
    batch: int
    smoke_steps: int
    resume_steps: int  # per epoch, 3 epochs
    speed_steps: int  # per timed epoch
    processes: tuple[int, ...]  # concurrency levels
    precision_epochs: int
    precision_steps: int  # per epoch


FULL = Sizes(128, 50, 20, 200, (2, 4), 5, 80)
TINY = Sizes(32, 3, 6, 2, (1,), 2, 4)


# --------------------------------------------------------------------------- setup
class Check:
    """What every section reads: device, sizes, the config's grid, where to write."""

    def __init__(self, args):
        self.device = torch.device(args.device)
        self.cuda, self.tiny = self.device.type == "cuda", args.tiny
        self.sizes = TINY if args.tiny else FULL
        self.config = yaml.safe_load((ROOT / "config.yaml").read_text())
        self.out, self.tmp = args.out, Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        self.env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])
        )

    def cell(self, model: str, variant: str = "bn_dropout", seed=SEEDS[0], **overrides):
        """The workflow's settings for one cell of config.yaml, one epoch unless overridden."""
        width = speed.TINY_WIDTH[model] if self.tiny else self.config["models"][model]["width"]
        settings = dict(width=width, batch_size=self.sizes.batch, epochs=1, milestones=())
        return run_config(self.config, "synthetic", model, variant, seed, **settings | overrides)

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
        out = c.tmp / f"cross-{name.split()[0]}"
        killed = _run_killed(c, out, ["--deterministic", *first])
        text = _run(c, out, ["--deterministic", *then])
        meta = json.loads((out / "meta.json").read_text()) if (out / "meta.json").exists() else {}
        ran = meta.get("execution", {})
        ok = killed and meta.get("status") == "completed" and bool(meta.get("resumes"))
        ok &= ran.get("cuda_graphs") is True or "graphs" not in name
        ok &= str(meta.get("device", "")).startswith("cuda")
        detail = f"resumes {meta.get('resumes')}, {ran}" if meta else f"no meta.json: {text[-300:]}"
        rows.append(row(f"resume {name}", ok, detail, keep_off))
    return rows


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


def graphs(c: Check) -> dict:
    deterministic = torch.are_deterministic_algorithms_enabled()
    use_deterministic_algorithms()
    try:
        rows = []
        for model in ("mlp", "cnn", "resnet20"):
            rows += graph_vs_eager(c, model)
            rows += [lr_reaches_graph(c, model), no_host_sync(c, model)]
    finally:  # the sections after this one run as the workflow does by default
        torch.use_deterministic_algorithms(deterministic)
        torch.backends.cudnn.deterministic = deterministic
    graphs_on = "on" if c.cuda else "off"
    rows += [*cross_resumes(c), lease_without_nvidia_smi(c)]
    both = dict(compile=True, cuda_graphs="on")
    rows.append(short_run(c, "compile + graphs", "mlp", "compile with cuda_graphs", True, **both))
    crop = dict(augment="crop_flip", cuda_graphs=graphs_on)
    rows.append(short_run(c, "augment crop_flip", "cnn", "augment: crop_flip", False, **crop))
    return section(rows)


# --------------------------------------------------------------------------- smoke
def smoke(c: Check) -> dict:
    rows = []
    for shape in ("cifar", "mnist"):
        data = c.data(c.sizes.smoke_steps, shape)
        for model in c.config["models"]:
            for variant in c.config["variants"]:
                cfg = c.cell(model, variant)
                result = train(cfg, data, c.device, log=speed.quiet)
                folder = c.out / "smoke" / shape / model / variant
                write_outputs(folder, cfg, result, {"device": str(c.device)})
                names = ("steps.parquet", "epochs.parquet", "meta.json")
                written = all((folder / f).exists() for f in names)
                ok = result.status == "completed" and finite(result) and written
                detail = f"final loss {result.steps.loss.iloc[-1]:.4f}, outputs written {written}"
                rows.append(row(f"{shape} {model} {variant}", ok, detail, "the GPU (device cuda)"))
    ex, passed = result.execution, sum(r["status"] == "pass" for r in rows)
    summary = f"{passed}/{len(rows)} runs finished with finite losses and their outputs "
    return section(rows, summary + f"({ex['precision']}, {ex['memory_format']}, Adam {ex['adam']})")


# --------------------------------------------------------------------------- resume
def _run_cmd(c: Check, out: Path, flags: list[str]) -> list[str]:
    """The training CLI on 3 epochs of resume_steps - 1 full batches and a smaller last one
    (eager under CUDA graphs), the CNN with BN and dropout, checkpointing after every step."""
    n_train = round((c.sizes.resume_steps - 0.5) * c.sizes.batch)
    data = speed.synthetic_file(c.tmp, n_train, "cifar", seed=3)
    cfg = c.cell("cnn", epochs=3, milestones=(2,), checkpoint_every_s=0.0)
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


def resume(c: Check) -> dict:
    modes = {  # mode: (CLI flags, what the resumed run must match, setting to keep off)
        "deterministic": (["--deterministic"], "bitwise", "resuming (deterministic)"),
        "default": (["--no-deterministic"], "within", "resuming"),
    }
    if c.cuda:
        graphs_on = ["--deterministic", "--cuda-graphs", "on"]
        modes["cuda graphs"] = (graphs_on, "bitwise", "cuda_graphs")
    rows = []
    for mode, (flags, must, keep_off) in modes.items():
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
        rows.append(row(f"{mode}: killed + resumed == uninterrupted", ok, detail, keep_off, **d))
    tolerance = f"{RESUME_TOLERANCE['loss_rel']} relative loss, {RESUME_TOLERANCE['acc']} accuracy"
    passed = sum(r["status"] == "pass" for r in rows)
    summary = f"{passed}/{len(rows)} killed and resumed runs equal the uninterrupted ones"
    return section(rows, summary + f" (without bitwise: within {tolerance})")


# --------------------------------------------------------------------------- leases
def leases(c: Check) -> dict:
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
    return section(rows, f"2 processes, gpu_slots_per_gpu 2, on {where}: slots {slots}{expected}")


# --------------------------------------------------------------------------- precision
def precision(c: Check) -> dict:
    import pandas as pd

    data = c.data(c.sizes.precision_steps, seed=5)
    groups = {"fp32": {"precision": "fp32"}, "bf16": {"precision": "bf16"}}
    if c.cuda:
        groups["bf16, cuda graphs"] = {"precision": "bf16", "cuda_graphs": "on"}
    rows = []
    for group, settings in groups.items():
        for seed in SEEDS:
            cfg = c.cell("cnn", seed=seed, epochs=c.sizes.precision_epochs, **settings)
            r = train(cfg, data, c.device, log=speed.quiet)
            last = r.epochs.iloc[-1]
            more = {"group": group, "test_acc": last.test_acc, "loss_sd": last.train_loss_sd}
            keep_off = "precision: bf16" + (", cuda_graphs" if "graphs" in group else "")
            rows.append(row(f"{group} seed {seed}", finite(r), "", keep_off, **more))
    by_group = pd.DataFrame(rows).groupby("group")[["test_acc", "loss_sd"]]
    mean, sd = by_group.mean(), by_group.std()
    lines, within = [], True
    for a, b in [("bf16", "fp32"), ("bf16, cuda graphs", "bf16")][: len(groups) - 1]:
        diffs = []
        for col in ("test_acc", "loss_sd"):
            diff = float(mean.loc[a, col] - mean.loc[b, col])
            spread = float((sd.loc[a, col] + sd.loc[b, col]) / 2)  # SD over seeds, both groups
            within &= abs(diff) <= 2 * spread
            diffs.append(f"{col} {diff:+.4f} (seed SD {spread:.4f})")
        lines.append(f"{a} - {b}, mean of {len(SEEDS)} seeds: " + ", ".join(diffs))
    verdict = f" -> {'within' if within else 'OUTSIDE'} 2 seed SDs"
    s = section(rows, "; ".join(lines) + verdict)
    return s | {"status": "info" if s["status"] == "pass" else "fail"}


# --------------------------------------------------------------------------- speed
def speed_section(c: Check) -> dict:
    """speed.measure per model: eager, compiled (not in tiny mode: a minute or more per model on
    a CPU), CUDA graphs (CUDA only), textbook loop, processes sharing the device (tiny mode:
    the MLP only); the grid projected at each model's best rate, MNIST at the CIFAR-shaped."""
    compile_ = None if c.tiny else {"compile": True}
    graphs_on = {"cuda_graphs": "on"} if c.cuda else None
    settings = {"eager": {}, "compile": compile_, "cuda graphs": graphs_on}
    rows = []
    for model in c.config["models"]:
        cfg = replace(c.cell(model), batch_size=speed.BATCH)
        processes = c.sizes.processes if not c.tiny or model == "mlp" else ()
        workers = 8 if c.cuda else 2
        rows.append(
            speed.measure(
                cfg, "cifar", c.sizes.speed_steps, c.device, c.tmp, settings, workers, processes
            )
        )
    hours = speed.grid_hours(c.config, speed.grid_rates(rows))
    worst = min(r["best / textbook"] for r in rows)
    met = {True: "met", False: "not met"}
    summary = f"best / textbook {worst:.2f}x at worst (target {SPEEDUP_TARGET:g}x: "
    summary += f"{met[worst >= SPEEDUP_TARGET]}); projected grid {hours:.2f} h (target "
    summary += f"{GRID_TARGET_H:g} h: {met[hours <= GRID_TARGET_H]})"
    note = "images/s (eval: of train's loss_and_accuracy), CIFAR-shaped, batch 128, bn_dropout; "
    note += "'k proc.': aggregate of k eager processes; the projection: each model's best "
    note += "setting scaled by the sharing gain, every variant at the bn_dropout rate"
    return {"status": "info", "rows": rows, "grid_hours": hours, "summary": summary, "note": note}


# --------------------------------------------------------------------------- fusion
def fusion(c: Check) -> dict:
    cfg, steps, k = replace(c.cell("cnn"), batch_size=speed.BATCH), c.sizes.speed_steps, len(SEEDS)
    data = speed.synthetic(c.tmp, steps * speed.BATCH, "cifar")
    fused = fusion_prototype.fused_images_per_s(cfg, data, c.device, SEEDS)
    separate = speed.concurrent_images_per_s(cfg, "cifar", steps, c.device, k)
    rates = {"fused images/s": fused, "separate images/s": separate, "ratio": fused / separate}
    summary = f"cnn bn_dropout, {k} seeds fused in one process {fused:,.0f} images/s vs {k} "
    summary += f"processes {separate:,.0f}: {fused / separate:.2f}x"
    return {"status": "info", "summary": summary, "rows": [{"model": "cnn", **rates}]}


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
MUST_PASS = ("graphs", "smoke", "resume", "leases")


def verdict(report: dict, tiny: bool) -> str:
    """PASS, or FAIL and the settings to keep off with the reason for each; device, time."""
    keep_off = {}
    for name, s in report["sections"].items():
        if "traceback" in s:
            keep_off.setdefault(f"what section {name} checks", s["summary"])
        for r in s.get("rows", []) if name in MUST_PASS or s["status"] == "fail" else []:
            if r.get("status") == "fail":
                keep_off.setdefault(r["keep off"], f"{name}: {r['check']}: {r['detail']}")
    tiny_note = " (tiny: figures mean nothing)" if tiny else ""
    head = f"on {report['machine']['device']}{tiny_note} in {report['seconds']:.0f} s"
    if not keep_off:
        return f"PASS {head}"
    return f"FAIL {head}: keep off: " + "; ".join(f"{k} ({v[:200]})" for k, v in keep_off.items())


def write_report(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    md = [f"# GPU check: {report['verdict']}", ""]
    md += [f"- {k}: {v}" for k, v in report["machine"].items()]
    for name, s in report["sections"].items():
        md += ["", f"## {name}: {s['status']} ({s['seconds']} s)", "", s["summary"], ""]
        md += [s["note"], ""] if s.get("note") else []
        md += [speed.markdown_table(s["rows"])] if s.get("rows") else []
        md += ["", "```", s["traceback"], "```"] if s.get("traceback") else []
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
    c, t_start = Check(args), time.perf_counter()
    report = {"machine": speed.machine(c.device), "tiny": args.tiny, "sections": {}}
    print(f"# GPU check on {report['machine']['device']}{' (tiny)' if args.tiny else ''}")
    for name in (n for n in SECTIONS if n in args.sections):
        t0 = time.perf_counter()
        try:
            s = SECTIONS[name](c)
        except Exception as err:  # the report still gets written, naming what broke
            summary = f"crashed: {type(err).__name__}: {err}"
            s = {"status": "fail", "summary": summary, "traceback": traceback.format_exc()}
        s["seconds"] = round(time.perf_counter() - t0, 1)
        report["sections"][name] = s
        print(f"{name}: {s['status']}: {s['summary']} ({s['seconds']} s)", flush=True)
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    report["verdict"] = verdict(report, args.tiny)
    write_report(args.out, report)
    print(f"report: {args.out / 'gpu_check.md'}, {args.out / 'gpu_check.json'}")
    print(f"gpu-check: {report['verdict']}")
    return 1 if report["verdict"].startswith("FAIL") else 0


if __name__ == "__main__":
    raise SystemExit(main())
