"""Training-step benchmark: our `normdrop.train.train` vs a textbook DataLoader loop.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_train.py [--device cpu|cuda] [--steps N]
        [--models mlp cnn resnet20] [--shapes cifar mnist] [--concurrent K] [--tiny]

`--tiny` (2 steps, narrow models, no repeats; its figures mean nothing) is what the test suite
runs, so that the script cannot rot. For each model (variant bn_dropout: BatchNorm + dropout, the heaviest
one) it trains the same number of optimizer steps, batch 128, in this one process, with

  ours       `train(cfg, data, device)` on a `Prepared` dataset whose training split holds exactly
             steps x 128 images, `epochs=1`, `milestones=()`: the whole split on the device as
             uint8, shuffled/normalized there, one host sync per epoch, bf16 autocast and
             channels_last on CUDA (fp32 on CPU), exactly as a run of the workflow;
  reference  the textbook loop: the same images written as CIFAR-10 python pickles in a temp dir,
             read back by `torchvision.datasets.CIFAR10(..., transform=Compose([ToTensor(),
             Normalize(mean, std)]))` (md5-checked, as torchvision does), `DataLoader(batch 128,
             shuffle, num_workers 2 on CPU / 8 on CUDA, pin_memory on CUDA)`, `.to(device)` per
             batch, fp32, the same model constructor, seed and Adam settings, `loss.item()` and the
             running correct count `.item()` per step (the usual logging).

Timing. Both first run a short warm-up in the same process (allocator, oneDNN/cuDNN kernels,
DataLoader, torch.compile where asked). Ours is timed by `train()`'s own epoch clock (the epoch's
`wall_time_s`: from the start of the loop to the end of epoch 1, i.e. the steps plus the epoch's
single host sync plus the validation/test evaluation); the evaluation of the (tiny, 256-image)
validation and test splits is timed separately on the same model and subtracted. Model building,
the move of the data to the device and `train()`'s final train-split evaluation fall outside that
clock. The reference is timed from the creation of the DataLoader iterator (which starts its
workers, as every epoch of the textbook loop does) to the end of its last step; its time to the
first batch is printed too. Each side is timed `--repeats` times (interleaved) and the best
(fastest) is reported; each timing also prints how many cores this process (with its DataLoader
workers) and all other processes of the machine used meanwhile, since on a shared machine other
jobs can take the cores (`--wait-quiet S` waits for a quiet moment before each timing).

The projection of the full grid (config.yaml: datasets x models x variants x seeds runs of
`train.epochs` epochs, plus the learning-rate search: candidates x variants runs of
`lr_search.epochs` epochs, per dataset and model) uses our measured training rate per model
(CIFAR-shaped for CIFAR-10/100, MNIST-shaped for MNIST where measured) and our measured evaluation
rate (validation + test after every epoch, the training split once per run). It uses the
bn_dropout rate for all variants (the others are a little cheaper: an upper bound). With
`--concurrent K`, K processes of ours train at once (one per measurement), and the projection
uses their aggregate images/s (runs sharing the device).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from normdrop.config import RunConfig
from normdrop.data import Prepared, SyntheticSpec, make_synthetic, standardization
from normdrop.models import build_model, count_parameters
from normdrop.train import Inputs, loss_and_accuracy, resolve_execution, train

ROOT = Path(__file__).resolve().parents[1]
BATCH = 128
SHAPES = {"cifar": (3, 32), "mnist": (1, 28)}  # channels, size
# Dataset sizes (torchvision): training set, test set; the validation split comes from config.
DATASET_SIZES = {
    "mnist": (60_000, 10_000),
    "cifar10": (50_000, 10_000),
    "cifar100": (50_000, 10_000),
}
DATASET_SHAPE = {"mnist": "mnist", "cifar10": "cifar", "cifar100": "cifar"}
DEFAULT_STEPS = {  # keeps the whole CPU run (3 models, both shapes) under ~8 minutes on 2 cores
    "cpu": {"mlp": 100, "cnn": 24, "resnet20": 16},
    "cuda": {"mlp": 200, "cnn": 200, "resnet20": 200},
}
TINY_WIDTH = {"mlp": 16, "cnn": 4, "resnet20": 4}  # --tiny: the code path, not the speed
VAL_TEST = 256  # images in the benchmark's validation and test splits (their eval is subtracted)


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- machine
def machine(device: torch.device) -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    import torchvision

    info = {
        "cpu": cpu,
        "cores": f"{usable} usable ({os.cpu_count()} online)",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torch threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["device"] += f" ({torch.cuda.get_device_name(device)})"
    return info


# --------------------------------------------------------------------------- contention meter
def _busy_cpu_s() -> float | None:
    """CPU-seconds all processes of the machine have used since boot (from /proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    jiffies = [int(v) for v in fields]
    idle = jiffies[3] + (jiffies[4] if len(jiffies) > 4 else 0)  # idle + iowait
    return (sum(jiffies[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Meter:
    """Wall time, this process's CPU time (all threads, plus finished child processes such as
    DataLoader workers) and the CPU time every other process of the machine used meanwhile: a
    benchmark on a shared machine says how contended its measurement was."""

    def __init__(self):
        self.t, self.busy = time.perf_counter(), _busy_cpu_s()
        self.cpu = self._own()

    @staticmethod
    def _own() -> float:
        import resource

        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + c.ru_utime + c.ru_stime

    def stop(self) -> dict:
        wall = time.perf_counter() - self.t
        own = self._own() - self.cpu
        busy = _busy_cpu_s()
        other = None if busy is None or self.busy is None else max(0.0, busy - self.busy - own)
        return {"wall": wall, "own_cores": own / wall, "other_cores": None if other is None
                else other / wall}  # fmt: skip


def wait_quiet(max_wait_s: float, threshold: float = 0.3) -> float | None:
    """Wait (up to max_wait_s) until other processes use under `threshold` cores over 1 s; the
    load seen last (cores)."""
    deadline = time.monotonic() + max_wait_s
    while True:
        m = Meter()
        time.sleep(1.0)
        other = m.stop()["other_cores"]
        if other is None or other < threshold or time.monotonic() > deadline:
            return other


def measured(fn, args) -> dict:
    """fn() (a timing), repeated up to args.attempts times while other processes of the machine
    took more than args.max_other_cores cores during it; the clean one, else the least contended
    (marked clean=False)."""
    best = None
    for attempt in range(args.attempts):
        if args.wait_quiet:
            wait_quiet(args.wait_quiet, args.max_other_cores)
        r = fn()
        other = r.get("other_cores")
        r["clean"] = other is None or other <= args.max_other_cores
        if r["clean"]:
            return r
        log(f"  (contended: other processes used {other:.2f} cores; "
            f"{'retrying' if attempt + 1 < args.attempts else 'giving up'})")  # fmt: skip
        if best is None or other < best["other_cores"]:
            best = r
    return best


def clean_only(results: list[dict]) -> list[dict]:
    return [r for r in results if r["clean"]] or results


def contention(m: dict) -> str:
    if m.get("other_cores") is None:
        return ""
    return f"; CPU: ours {m['own_cores']:.2f} cores, other processes {m['other_cores']:.2f} cores"


# --------------------------------------------------------------------------- data
def make_prepared(n_train: int, shape: str, seed: int = 0) -> Prepared:
    """A CIFAR- or MNIST-shaped Prepared dataset: n_train training images, tiny val/test."""
    channels, size = SHAPES[shape]
    raw = make_synthetic(
        SyntheticSpec(
            n_train=n_train + VAL_TEST, n_test=VAL_TEST, num_classes=10, channels=channels,
            size=size, noise=0.35, seed=seed,
        )
    )  # fmt: skip
    x, y = raw["train_x"], raw["train_y"]
    pixels = x.transpose(0, 1).flatten(1).double() / 255
    return Prepared(
        name=f"bench-{shape}",
        num_classes=10,
        train_x=x[:n_train].contiguous(),
        train_y=y[:n_train].contiguous(),
        val_x=x[n_train:].contiguous(),
        val_y=y[n_train:].contiguous(),
        test_x=raw["test_x"],
        test_y=raw["test_y"],
        mean=pixels.mean(1).float(),
        std=pixels.std(1).float(),
        val_indices=torch.arange(n_train, n_train + VAL_TEST),
    )


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_cifar_pickles(data: Prepared, root: Path) -> type:
    """Write data's training split (and test split) in torchvision's CIFAR-10 python format under
    root; return a CIFAR10 subclass whose file list and md5s are those files' (torchvision still
    verifies every file's md5 when the dataset is constructed)."""
    from torchvision.datasets import CIFAR10

    folder = root / CIFAR10.base_folder
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name, x, y):
        # CIFAR rows: 3072 bytes, the red 1024 then green then blue, each row-major: (C, H, W).
        entry = {
            "batch_label": name,
            "labels": [int(v) for v in y],
            "data": x.reshape(len(x), -1).numpy().astype(np.uint8),
            "filenames": [f"{name}_{i}.png" for i in range(len(x))],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
        return [name, _md5(folder / name)]

    chunks = np.array_split(np.arange(len(data.train_y)), 5)
    train_list = [
        dump(f"data_batch_{i + 1}", data.train_x[c], data.train_y[c]) for i, c in enumerate(chunks)
    ]
    test_list = [dump("test_batch", data.test_x, data.test_y)]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f, protocol=2)
    meta = {"filename": "batches.meta", "key": "label_names", "md5": _md5(folder / "batches.meta")}
    return type(
        "BenchCIFAR10", (CIFAR10,), {"train_list": train_list, "test_list": test_list, "meta": meta}
    )


# --------------------------------------------------------------------------- the two loops
def run_config(model: str, width: int, dropout: float, lr: float = 1e-3, compile_=False):
    return RunConfig(
        dataset="bench", model=model, width=width, variant="bn_dropout", norm="batch",
        dropout=dropout, seed=42, lr=lr, epochs=1, milestones=(), compile=compile_,
    )  # fmt: skip


def time_ours(cfg: RunConfig, data: Prepared, device: torch.device) -> dict:
    """Seconds of our training steps over data's training split (one epoch), eval subtracted."""
    meter, seen = Meter(), {}

    def at_epoch_end(line):  # train() logs each epoch's line right after its evaluation
        if not line.startswith("epoch "):
            return
        seen.setdefault("meter", meter.stop())
        seen.setdefault("epoch_end_wall", time.time())

    result = train(cfg, data, device, checkpoint=None, log=at_epoch_end)
    epoch_s = float(result.epochs["wall_time_s"].iloc[0])
    eval_s = time_eval(cfg, data, device, [(data.val_x, data.val_y), (data.test_x, data.test_y)])
    # Contention anywhere in the timing (the subtracted evaluation too) makes it a contended one.
    other = [
        m["other_cores"] for m in (seen["meter"], meter.stop()) if m["other_cores"] is not None
    ]
    return {
        "seconds": epoch_s - eval_s, "epoch_s": epoch_s, "eval_s": eval_s,
        "loop_start_wall": seen["epoch_end_wall"] - epoch_s,  # time.time() when the loop began
        "epoch_end_wall": seen["epoch_end_wall"], **seen["meter"],
        "other_cores": max(other) if other else None,
    }  # fmt: skip


def time_eval(cfg, data: Prepared, device, splits, repeats=3) -> float:
    """Seconds of `normdrop.train.loss_and_accuracy` over the given splits (min of `repeats`), with the
    same precision and memory format as `train()` uses on this device."""
    ex = resolve_execution(cfg, device)
    use_bf16, memory_format = ex.bf16, ex.memory_format
    model = build_model(
        cfg.model, data.in_shape, data.num_classes, cfg.width, cfg.norm, cfg.dropout
    )
    model = model.to(device, memory_format=memory_format)
    scale, shift = standardization(data.mean.to(device), data.std.to(device))
    splits = [(x.to(device), y.to(device)) for x, y in splits]
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for x, y in splits:
            inputs = Inputs(scale, shift, memory_format, use_bf16)
            loss_and_accuracy(model, x, y, inputs=inputs, batch_size=cfg.eval_batch_size)
        best = min(best, time.perf_counter() - t0)
    return best


def _timed_eval(cfg, data, device) -> dict:
    meter = Meter()
    seconds = time_eval(cfg, data, device, [(data.train_x, data.train_y)], repeats=2)
    return {"seconds": seconds, **meter.stop()}


def time_reference(cfg: RunConfig, dataset_cls, root: Path, data: Prepared, device, workers: int):
    """Seconds of the textbook loop over one epoch of the on-disk CIFAR-10 copy of data."""
    from torch.utils.data import DataLoader
    from torchvision import transforms

    transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(data.mean.tolist(), data.std.tolist())]
    )
    dataset = dataset_cls(str(root), train=True, download=False, transform=transform)
    loader = DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=True, num_workers=workers,
        pin_memory=device.type == "cuda",
    )  # fmt: skip
    torch.manual_seed(cfg.seed)
    model = build_model(
        cfg.model, data.in_shape, data.num_classes, cfg.width, cfg.norm, cfg.dropout
    )
    model = model.to(device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
    )
    criterion = torch.nn.CrossEntropyLoss()
    model.train()
    running_loss, correct, steps = 0.0, 0, 0
    t0 = time.perf_counter()
    first_batch_s = None
    meter = Meter()
    for images, labels in loader:
        if first_batch_s is None:
            first_batch_s = time.perf_counter() - t0
        images, labels = images.to(device), labels.to(device)
        outputs = model(images)
        loss = criterion(outputs, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
        correct += (outputs.argmax(1) == labels).sum().item()
        steps += 1
    seconds = time.perf_counter() - t0
    del loader  # joins the workers, so that their CPU time counts (RUSAGE_CHILDREN)
    m = meter.stop()
    assert steps == len(dataset) // cfg.batch_size
    return {"seconds": seconds, "first_batch_s": first_batch_s, "steps": steps, **m}


# --------------------------------------------------------------------------- concurrent workers
def worker_main(args) -> int:
    """One of K concurrent processes: warm up, say READY, wait for GO, time ours, print JSON."""
    device = torch.device(args.device)
    cfg = run_config(
        args.worker_model, args.worker_width, args.worker_dropout, compile_=args.compile
    )
    warm = make_prepared(args.warmup_steps * BATCH, args.worker_shape, seed=1)
    data = make_prepared(args.worker_steps * BATCH, args.worker_shape)
    train(cfg, warm, device, log=lambda s: None)
    print("READY", flush=True)
    sys.stdin.readline()
    r = time_ours(cfg, data, device)
    print(json.dumps(r), flush=True)
    return 0


def run_concurrent(args, model, width, dropout, shape, steps, k) -> dict:
    cmd = [
        sys.executable, __file__, "--device", args.device, "--warmup-steps", str(args.warmup_steps),
        "--_worker", "--worker-model", model, "--worker-width", str(width),
        "--worker-dropout", str(dropout), "--worker-shape", shape, "--worker-steps", str(steps),
    ] + (["--compile"] if args.compile else [])  # fmt: skip
    env = dict(os.environ)
    if args.device == "cpu":  # share the cores: each process gets its part of them
        env["OMP_NUM_THREADS"] = str(max(1, torch.get_num_threads() // k))
    procs = [
        subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(k)
    ]
    for p in procs:
        line = p.stdout.readline()
        if line.strip() != "READY":
            raise RuntimeError(f"concurrent worker failed before READY: {line!r}")
    for p in procs:
        p.stdin.write("GO\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode:
            raise RuntimeError(f"concurrent worker exited {p.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    # Each worker reports when its training loop began and when its epoch ended (train()'s own
    # clock; the epoch includes the tiny val/test evaluation, timed apart as eval_s). The aggregate
    # rate counts all K workers' images over the span from the first loop start to the last epoch
    # end, less the (mean) evaluation time: conservative where the workers do not start together.
    span = max(r["epoch_end_wall"] for r in results) - min(r["loop_start_wall"] for r in results)
    span -= statistics.mean(r["eval_s"] for r in results)
    return {"images_per_s": k * steps * BATCH / span, "span_s": span, "k": k}


# --------------------------------------------------------------------------- projection
def grid_work(config: dict) -> dict:
    """Per dataset: (training images, evaluated images) over the whole grid, per model."""
    n_variants, n_seeds = len(config["variants"]), len(config["seeds"])
    epochs, search_epochs = config["train"]["epochs"], config["lr_search"]["epochs"]
    n_candidates = len(config["lr_search"]["candidates"])
    val_fraction = config["data"]["val_fraction"]
    out = {}
    for ds in config["datasets"]:
        n_train_raw, n_test = DATASET_SIZES[ds]
        n_val = round(n_train_raw * val_fraction)
        n_train = n_train_raw - n_val
        runs = n_variants * n_seeds
        search_runs = n_variants * n_candidates
        all_epochs = runs * epochs + search_runs * search_epochs
        out[ds] = {
            "train_images": all_epochs * n_train,
            # val + test after every epoch; the training split once at the end of each run
            "eval_images": all_epochs * (n_val + n_test) + (runs + search_runs) * n_train,
            "runs": runs,
            "search_runs": search_runs,
            "epochs": all_epochs,
            "steps_per_epoch": -(-n_train // config["train"]["batch_size"]),
            "n_train": n_train,
        }
    return out


# --------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, help="optimizer steps per measurement (default: per model)")
    p.add_argument("--models", nargs="+", default=["mlp", "cnn", "resnet20"])
    p.add_argument(
        "--shapes", nargs="+", default=["cifar", "mnist"], choices=list(SHAPES),
        help="cifar: ours vs reference; mnist: ours only (for the MNIST part of the projection)",
    )  # fmt: skip
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument(
        "--repeats", type=int, default=2,
        help="timed repetitions per side, interleaved; the best (fastest) is reported",
    )  # fmt: skip
    p.add_argument(
        "--wait-quiet", type=float, metavar="S",
        help="before each timed measurement wait up to S seconds for other processes to use "
        "under --max-other-cores cores (a shared machine; default 30 on CPU, 0 on CUDA)",
    )  # fmt: skip
    p.add_argument(
        "--max-other-cores", type=float, default=0.3,
        help="a timing during which other processes used more cores is repeated",
    )  # fmt: skip
    p.add_argument("--attempts", type=int, default=3, help="tries per timing when contended")
    p.add_argument("--workers", type=int, help="reference DataLoader workers (2 CPU / 8 CUDA)")
    p.add_argument("--concurrent", type=int, default=1, help="K of our processes at once")
    p.add_argument("--compile", action="store_true", help="ours with torch.compile (cfg.compile)")
    p.add_argument(
        "--tiny", action="store_true",
        help="2 steps of narrow models, one repetition: checks that the script runs (the tests)",
    )  # fmt: skip
    p.add_argument("--config", type=Path, default=ROOT / "config.yaml")
    p.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    for name, kind in (("model", str), ("width", int), ("dropout", float), ("shape", str),
                       ("steps", int)):  # fmt: skip
        p.add_argument(f"--worker-{name}", type=kind, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._worker:
        return worker_main(args)
    if args.tiny:
        args.steps, args.warmup_steps, args.repeats, args.attempts = args.steps or 2, 1, 1, 1
        args.wait_quiet = 0.0
    t_start = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available")
    config = yaml.safe_load(args.config.read_text())
    workers = args.workers if args.workers is not None else (2 if device.type == "cpu" else 8)
    if args.wait_quiet is None:
        args.wait_quiet = 30.0 if device.type == "cpu" else 0.0
    info = machine(device)
    log("# Training-step benchmark: ours (normdrop.train.train) vs textbook DataLoader loop")
    for k, v in info.items():
        log(f"{k}: {v}")
    log(f"reference DataLoader workers: {workers}; ours: bf16+channels_last "
        f"{'on' if device.type == 'cuda' else 'off (fp32, CPU)'}; compile: {args.compile}")  # fmt: skip

    rows = []
    tmp = tempfile.TemporaryDirectory(prefix="bench_train_")
    for model in args.models:
        width = TINY_WIDTH[model] if args.tiny else config["models"][model]["width"]
        dropout = config["models"][model]["dropout_rate"]
        steps = args.steps or DEFAULT_STEPS[device.type][model]
        cfg = run_config(model, width, dropout, compile_=args.compile)
        row = {"model": model, "width": width, "dropout": dropout, "steps": steps}
        for shape in args.shapes:
            log(f"\n## {model} (width {width}, BatchNorm, dropout {dropout}), {shape}-shaped, "
                f"{steps} steps x {BATCH}")  # fmt: skip
            data = make_prepared(steps * BATCH, shape)
            warm = make_prepared(args.warmup_steps * BATCH, shape, seed=1)
            m = build_model(model, data.in_shape, 10, width, "batch", dropout)
            row[f"params_{shape}"] = count_parameters(m)
            log(f"warm-up ours ({args.warmup_steps} steps) ...")
            train(cfg, warm, device, log=lambda s: None)
            ref_cls = None
            if shape == "cifar":
                root = Path(tmp.name) / model
                ref_cls = write_cifar_pickles(data, root)
                warm_root = Path(tmp.name) / f"{model}-warm"
                warm_cls = write_cifar_pickles(warm, warm_root)
                log(f"warm-up reference ({args.warmup_steps} steps) ...")
                time_reference(cfg, warm_cls, warm_root, warm, device, workers)
            ours, ref = [], []
            for rep in range(args.repeats):
                r = measured(lambda: time_ours(cfg, data, device), args)
                ours.append(r)
                log(f"ours      rep {rep + 1}: {r['seconds']:.2f} s for {steps} steps "
                    f"({steps / r['seconds']:.2f} steps/s; epoch clock {r['epoch_s']:.2f} s "
                    f"- eval of val+test {r['eval_s']:.3f} s{contention(r)})")  # fmt: skip
                if ref_cls is not None:
                    r = measured(
                        lambda: time_reference(cfg, ref_cls, root, data, device, workers), args
                    )
                    ref.append(r)
                    log(f"reference rep {rep + 1}: {r['seconds']:.2f} s for {r['steps']} steps "
                        f"({steps / r['seconds']:.2f} steps/s; first batch after "
                        f"{r['first_batch_s']:.3f} s{contention(r)})")  # fmt: skip
            # Best of the repeats (the least disturbed), among the uncontended ones if any.
            ours, ref = clean_only(ours), clean_only(ref)
            best = [min(x, key=lambda r: r["seconds"]) for x in (ours, ref) if x]
            others = [r["other_cores"] for r in best if r.get("other_cores") is not None]
            if others:
                row["other_cores"] = max(row.get("other_cores", 0.0), max(others))
            if not all(r["clean"] for r in best):
                row["contended"] = True
            ours_s = best[0]["seconds"]
            row[f"ours_{shape}"] = steps / ours_s
            if ref:
                ref_s = best[1]["seconds"]
                row["ref_cifar"] = steps / ref_s
                log(f"=> ours / reference = {ref_s / ours_s:.2f}x (best of {args.repeats} each)")
            # Evaluation rate (for the projection): normdrop.train.loss_and_accuracy on 2 eval batches.
            n_eval = 2 * cfg.eval_batch_size
            ex = make_prepared(n_eval, shape, seed=2)
            r = measured(lambda: _timed_eval(cfg, ex, device), args)
            eval_s = r["seconds"]
            row[f"eval_{shape}"] = n_eval / eval_s
            row["contended"] = row.get("contended", False) or not r["clean"]
            log(f"evaluation (ours, eval mode, batch {cfg.eval_batch_size}): "
                f"{n_eval / eval_s:.0f} images/s")  # fmt: skip
            if args.concurrent > 1:
                log(f"concurrent: {args.concurrent} processes of ours ...")
                c = run_concurrent(args, model, width, dropout, shape, steps, args.concurrent)
                row[f"conc_{shape}"] = c["images_per_s"]
                log(f"concurrent x{args.concurrent}: {c['images_per_s']:.0f} images/s aggregate "
                    f"(single process {steps * BATCH / ours_s:.0f})")  # fmt: skip
        rows.append(row)
    tmp.cleanup()

    # ----------------------------------------------------------------- projection
    work = grid_work(config)
    measured_shapes = set(args.shapes)
    notes = []
    for row in rows:
        hours = 0.0
        for ds, w in work.items():
            shape = DATASET_SHAPE[ds]
            if shape not in measured_shapes:
                shape = next(iter(s for s in args.shapes))
                notes.append(f"{row['model']} on {ds}: projected from the {shape}-shaped rate")
            train_rate = row[f"ours_{shape}"] * BATCH
            eval_rate = row[f"eval_{shape}"]
            if args.concurrent > 1:  # runs share the device: aggregate rate, eval scaled alike
                factor = row[f"conc_{shape}"] / train_rate
                train_rate, eval_rate = train_rate * factor, eval_rate * factor
            hours += (w["train_images"] / train_rate + w["eval_images"] / eval_rate) / 3600
        row["grid_h"] = hours

    n_runs = sum(w["runs"] for w in work.values()) * len(config["models"])
    n_search = sum(w["search_runs"] for w in work.values()) * len(config["models"])
    total = sum(r["grid_h"] for r in rows)
    elapsed = time.perf_counter() - t_start

    log("\n## Results\n")
    log(f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, "
        f"torchvision {info['torchvision']}, device {info['device']}, "
        f"{info['torch threads']} torch threads.")  # fmt: skip
    log("")
    conc = args.concurrent > 1
    head = ["model", "params", "steps timed", "ours steps/s", "ours images/s",
            "reference steps/s", "reference images/s", "ours / reference"]  # fmt: skip
    if "mnist" in measured_shapes:
        head.append("ours images/s, MNIST-shaped")
    if conc:
        head.append(f"ours images/s, {args.concurrent} processes")
    head.append("projected grid time")
    log("| " + " | ".join(head) + " |")
    log("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
    for r in rows:
        has_c = "ours_cifar" in r
        cells = [
            r["model"],
            f"{r.get('params_cifar', r.get('params_mnist')):,}",
            str(r["steps"]),
            f"{r['ours_cifar']:.2f}" if has_c else "-",
            f"{r['ours_cifar'] * BATCH:,.0f}" if has_c else "-",
            f"{r['ref_cifar']:.2f}" if "ref_cifar" in r else "-",
            f"{r['ref_cifar'] * BATCH:,.0f}" if "ref_cifar" in r else "-",
            f"**{r['ours_cifar'] / r['ref_cifar']:.2f}x**" if "ref_cifar" in r else "-",
        ]
        if "mnist" in measured_shapes:
            cells.append(f"{r['ours_mnist'] * BATCH:,.0f}")
        if conc:
            cells.append(" / ".join(f"{r[f'conc_{s}']:,.0f}" for s in args.shapes))
        cells.append(f"{r['grid_h']:,.1f} h")
        if r.get("contended"):
            cells[0] += " (contended)"
        log("| " + " | ".join(cells) + " |")
    log("| **grid** | | | | | | | |"
        + (" |" if "mnist" in measured_shapes else "")
        + (" |" if conc else "") + f" **{total:,.1f} h** |")  # fmt: skip
    log("")
    ds_notes = ", ".join(
        f"{ds} {w['n_train']:,} training images = {w['steps_per_epoch']} steps/epoch"
        for ds, w in work.items()
    )
    drops = ", ".join(f"{r['model']} {r['dropout']}" for r in rows)
    precision = "bf16 autocast + channels_last" if device.type == "cuda" else "fp32"
    log(f"Device {info['device']}; batch {BATCH}; variant bn_dropout (BatchNorm + dropout: "
        f"{drops}); params on CIFAR-10 shape. Ours: {precision}"
        f"{' + torch.compile' if args.compile else ''}; reference: fp32, "
        f"{workers} DataLoader workers. Steps/s and ratio on CIFAR-shaped data (3x32x32).")  # fmt: skip
    log(f"Projected grid: {n_runs} runs x {config['train']['epochs']} epochs + learning-rate search "
        f"{n_search} runs x {config['lr_search']['epochs']} epochs ({ds_notes}), run "
        f"{f'{args.concurrent} at a time (their measured aggregate rate)' if conc else 'one after another'}"
        f" on this device, "
        f"from our measured training rate per model and shape "
        f"({'CIFAR-shaped for CIFAR, MNIST-shaped for MNIST' if len(measured_shapes) == 2 else 'see notes'})"
        f" plus evaluation (val + test every epoch, training split once per run) at our measured "
        f"evaluation rate; every variant at the bn_dropout rate (an upper bound).")  # fmt: skip
    worst = max((r.get("other_cores", 0.0) for r in rows), default=0.0)
    log(f"Timing: best of {args.repeats} interleaved repetitions per side; a timing during which "
        f"other processes used more than {args.max_other_cores} cores was repeated (up to "
        f"{args.attempts} tries). Other processes used up to {worst:.2f} cores during a reported "
        f"timing{'; rows marked (contended) could not get a quiet machine: their figures are pessimistic and noisy' if any(r.get('contended') for r in rows) else ''}.")  # fmt: skip
    for n in dict.fromkeys(notes):
        log(f"Note: {n}.")
    log(f"Benchmark wall time: {elapsed:.0f} s.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
