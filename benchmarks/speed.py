"""Speed measurements shared by bench_train.py and gpu_check.py (a library, not a script).

- `synthetic`: a CIFAR- or MNIST-shaped prepared dataset, made by `normdrop.data` itself;
- `ours_images_per_s`: `normdrop.train.train`, timed in a run's second epoch;
- `textbook_images_per_s`: THE DELIBERATE TEXTBOOK BASELINE, the loop every tutorial writes
  (torchvision dataset read from pickles, DataLoader with workers, `.item()` per step, fp32).
  It is meant to be naive: "ours / textbook" says what the on-device data path buys;
- `concurrent_images_per_s`: k processes of ours' eager step sharing the device, timed over one
  shared wall-clock window (`python speed.py JOB` is the worker each of them runs);
- `measure`: all of these for one model and shape; `grid_hours`: the grid's time at those rates.
"""

from __future__ import annotations

import json
import os
import pickle
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from normdrop import provenance
from normdrop.config import RunConfig
from normdrop.data import (
    Prepared,
    SyntheticSpec,
    download,
    load_prepared,
    normalize,
    prepare,
    standardization,
)
from normdrop.evaluation import Inputs, loss_and_accuracy
from normdrop.execution import make_train_step, resolve_execution
from normdrop.layout import iter_runs
from normdrop.models import build_model, count_parameters
from normdrop.train import make_optimizer, train

BATCH = 128
SHAPES = {"cifar": (3, 32), "mnist": (1, 28)}  # channels, height = width
TINY_WIDTH = {
    "mlp": 16,
    "cnn": 4,
    "resnet20": 4,
    "vit": 8,
    "lstm": 8,
}  # --tiny: the code path, not the speed
EVAL_IMAGES = 64  # validation and test images each: their evaluation is a sliver of an epoch
# torchvision's training and test set sizes: the projection must not need the data downloaded.
DATASET_SIZES = {"mnist": (60_000, 10_000), "cifar10": (50_000, 10_000)}
DATASET_SIZES["cifar100"] = DATASET_SIZES["cifar10"]
DATASET_SHAPE = {"mnist": "mnist", "cifar10": "cifar", "cifar100": "cifar"}


def quiet(_line: str) -> None:
    pass


def machine(device: torch.device) -> dict:
    """Where the figures came from: device, CPU, cores, code revision, library versions."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    models = [s.split(":", 1)[1].strip() for s in cpuinfo.splitlines() if s.startswith("model n")]
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    cpu, cores = (models or [platform.processor()])[0], len(os.sched_getaffinity(0))
    info = {"device": f"{device}{gpu}", "cpu": cpu, "cores": cores}
    info |= {"torch threads": torch.get_num_threads(), "git revision": provenance.git_revision()}
    return info | provenance.library_versions()


def synthetic_file(
    folder: Path, n_train: int, shape: str, seed: int = 0, n_eval: int = EVAL_IMAGES
) -> Path:
    """A prepared file (dataset "synthetic") of exactly n_train training images of the shape and
    n_eval validation and test images, made by `normdrop.data`'s own download and prepare
    (so that its standardization is the workflow's); made once per folder."""
    channels, size = SHAPES[shape]
    n, raw = n_train + n_eval, folder / f"synthetic-{shape}-{n_train}-{seed}-{n_eval}"
    if not (raw / "prepared.pt").exists():
        # noise 0.35: the data these checks were calibrated on (SyntheticSpec's default before
        # the workflow's 1.0 became the one default, normdrop.catalog.SYNTHETIC)
        spec = SyntheticSpec(n, n_eval, channels=channels, size=size, noise=0.35, seed=seed)
        download("synthetic", raw, spec)
        # round(n * n_eval / n) = n_eval: the validation split is exact
        prepare("synthetic", raw, raw / "prepared.pt", val_fraction=n_eval / n)
    return raw / "prepared.pt"


def synthetic(
    folder: Path, n_train: int, shape: str, seed: int = 0, n_eval=EVAL_IMAGES
) -> Prepared:
    return load_prepared(synthetic_file(folder, n_train, shape, seed, n_eval))


def bench_config(model: str, width: int, dropout: float, **overrides) -> RunConfig:
    """The benchmarked run: BatchNorm + dropout (the heaviest variant), one epoch, batch 128."""
    settings = dict(
        variant="bn_dropout", norm="batch", dropout_rate=dropout, epochs=1, lr_milestones=()
    )
    return RunConfig(dataset="synthetic", model=model, width=width, **settings | overrides)


class Meter:
    """Wall time, cores this process used (with finished children such as DataLoader workers)
    and cores every other process used meanwhile: on a shared machine a timing says how
    contended it was."""

    def __init__(self):
        self.t, self.own, self.busy = time.perf_counter(), _own_cpu_s(), _machine_busy_s()

    def stop(self) -> dict:
        wall, own = time.perf_counter() - self.t, _own_cpu_s() - self.own
        other = None if self.busy is None else max(0.0, _machine_busy_s() - self.busy - own) / wall
        return {"seconds": wall, "own_cores": own / wall, "other_cores": other}


def _own_cpu_s() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _machine_busy_s() -> float | None:
    """CPU-seconds all processes have used since boot: /proc/stat less idle and iowait."""
    if not Path("/proc/stat").exists():
        return None
    jiffies = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(jiffies) - jiffies[3] - jiffies[4]) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- ours
def ours_images_per_s(cfg: RunConfig, data: Prepared, device: torch.device) -> dict:
    """Training images/s of `train()` in a run's second epoch (the first pays for compilation,
    graph capture and autotuning), from train()'s own epoch clock; the epoch's evaluation of the
    EVAL_IMAGES-image validation and test splits counts as training time (conservative)."""
    meter = Meter()
    r = train(replace(cfg, epochs=2, lr_milestones=()), data, device, log=quiet)
    epoch_2_s = float(r.epochs.wall_time_s.iloc[1] - r.epochs.wall_time_s.iloc[0])
    return {**meter.stop(), "images_per_s": len(data.train_y) / epoch_2_s}


def eval_images_per_s(cfg: RunConfig, data: Prepared, device: torch.device) -> float:
    """Images/s of train()'s evaluation (`loss_and_accuracy`) over data's training split, with
    the run's precision and memory format on this device (best of 2)."""
    ex, data = resolve_execution(cfg, device), data.to(device)
    model = build_model(cfg.model, data.in_shape, 10, cfg.width, cfg.norm, cfg.dropout_rate)
    model = model.to(device, memory_format=ex.memory_format)
    inputs = Inputs(*standardization(data.mean, data.std), ex.memory_format, ex.bf16)
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        loss_and_accuracy(
            model, data.train_x, data.train_y, inputs=inputs, batch_size=cfg.eval_batch_size
        )
        best = min(best, time.perf_counter() - t0)
    return len(data.train_y) / best


# --------------------------------------------------------------------------- textbook baseline
def write_cifar_pickles(data: Prepared, root: Path) -> type:
    """data's training split in torchvision's CIFAR-10 python format under root; a CIFAR10
    subclass whose file list and md5s are those files' (torchvision verifies them on load)."""
    import hashlib

    from torchvision.datasets import CIFAR10

    folder = root / CIFAR10.base_folder
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name: str, entry: dict) -> list[str]:
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
        return [name, hashlib.md5((folder / name).read_bytes()).hexdigest()]

    train_list = []
    for i, rows in enumerate(np.array_split(np.arange(len(data.train_y)), 5)):
        # CIFAR rows: 3072 bytes, the red plane, then green, then blue, each row-major.
        images = data.train_x[rows].flatten(1).numpy().astype(np.uint8)
        entry = {"labels": data.train_y[rows].tolist(), "data": images}
        train_list.append(dump(f"data_batch_{i + 1}", entry))
    name, md5 = dump("batches.meta", {"label_names": list("0123456789")})
    meta = {"filename": name, "md5": md5, "key": "label_names"}
    return type(
        "BenchCIFAR10", (CIFAR10,), {"train_list": train_list, "test_list": [], "meta": meta}
    )


def textbook_images_per_s(cfg: RunConfig, data: Prepared, device, root: Path, workers: int) -> dict:
    """The textbook loop, one epoch over data's training split read back from CIFAR pickles:
    `CIFAR10(transform=Compose([ToTensor(), Normalize(mean, std)]))`, `DataLoader(shuffle,
    num_workers, pin_memory on CUDA)`, `.to(device)` per batch, fp32, the same model, seed and
    Adam settings, `loss.item()` and the correct count `.item()` per step (the usual logging).
    Timed from the DataLoader iterator's creation (which starts its workers, as every epoch
    does) to the last step; the better of two epochs."""
    from torch.utils.data import DataLoader
    from torchvision import transforms

    normalize = transforms.Normalize(data.mean.tolist(), data.std.tolist())
    transform = transforms.Compose([transforms.ToTensor(), normalize])
    dataset = write_cifar_pickles(data, root)(str(root), train=True, transform=transform)
    pin = device.type == "cuda"
    loader = DataLoader(dataset, cfg.batch_size, shuffle=True, num_workers=workers, pin_memory=pin)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.in_shape, 10, cfg.width, cfg.norm, cfg.dropout_rate)
    model = model.to(device).train()
    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps
    )
    criterion = torch.nn.CrossEntropyLoss()
    timings = []
    for _ in range(2):
        meter, running_loss, correct = Meter(), 0.0, 0
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            outputs = model(images)
            loss = criterion(outputs, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            correct += (outputs.argmax(1) == labels).sum().item()
        timings.append(meter.stop())
    del loader  # joins the workers, so that their CPU time counts (RUSAGE_CHILDREN)
    best = min(timings, key=lambda t: t["seconds"])
    return {**best, "images_per_s": len(dataset) / best["seconds"]}


# --------------------------------------------------------------------------- concurrent processes
WINDOW_S = 5.0  # the shared timing window of concurrent processes (tiny: 0.5 s)


def prepare_window(cfg: RunConfig, data: Prepared, device: torch.device):
    """train()'s eager step (model, Adam, uint8 batches drawn and normalized on the device) made
    and warmed up (autotuning, allocator); returns `run(start, seconds) -> dict`, which steps
    from wall-clock time `start` until `start + seconds` and counts the images."""
    ex, data = resolve_execution(replace(cfg, cuda_graphs="off"), device), data.to(device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.in_shape, 10, cfg.width, cfg.norm, cfg.dropout_rate)
    model = model.to(device, memory_format=ex.memory_format).train()
    step = make_train_step(model, make_optimizer(model, cfg, ex), device, ex.bf16)
    scale, shift = standardization(data.mean, data.std)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    n, batch = len(data.train_y), cfg.batch_size

    def one_step() -> None:
        idx = torch.randint(n, (batch,), device=device, generator=gen)
        x = normalize(data.train_x[idx], scale, shift).contiguous(memory_format=ex.memory_format)
        step(x, data.train_y[idx])

    for _ in range(3):
        one_step()
    _sync(device)

    def run(start: float, seconds: float) -> dict:
        time.sleep(max(0.0, start - time.time()))
        steps = 0
        while time.time() < start + seconds:  # CUDA: launches run ahead, the sync waits for them
            one_step()
            steps += 1
        _sync(device)
        return {"images": steps * batch, "start": start, "end": time.time()}

    return run


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def concurrent_images_per_s(
    cfg: RunConfig, shape: str, steps: int, device, k: int, seconds: float = WINDOW_S
) -> float:
    """Aggregate training images/s of k processes of ours sharing the device, all timed over
    one shared wall-clock window: each prepares and warms up, then all step from the same start
    time for `seconds`; their images over the window, from its start to the last one's end."""
    job = json.dumps({"cfg": cfg.to_dict(), "shape": shape, "steps": steps, "device": str(device)})
    env = dict(os.environ)
    if device.type == "cpu":  # share the cores: each process gets its part of them
        env["OMP_NUM_THREADS"] = str(max(1, torch.get_num_threads() // k))
    popen = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    procs = [subprocess.Popen([sys.executable, __file__, job], **popen) for _ in range(k)]
    try:
        for p in procs:  # every worker has its data and model ready and warm
            if p.stdout.readline().strip() != "READY":
                raise RuntimeError(f"concurrent worker exited {p.wait()} before READY")
        start = time.time() + 0.2  # the window every worker times
        for p in procs:
            p.stdin.write(f"{start} {seconds}\n")
            p.stdin.flush()
        results = []
        for p in procs:
            out, _ = p.communicate(timeout=seconds + 300)
            if p.returncode:
                raise RuntimeError(f"concurrent worker exited {p.returncode}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return sum(r["images"] for r in results) / (max(r["end"] for r in results) - start)


def _worker(job: str) -> None:
    job = json.loads(job)
    with tempfile.TemporaryDirectory(prefix="bench_worker_") as tmp:
        data = synthetic(Path(tmp), job["steps"] * BATCH, job["shape"])
        run = prepare_window(RunConfig.from_dict(job["cfg"]), data, torch.device(job["device"]))
        print("READY", flush=True)
        start, seconds = map(float, sys.stdin.readline().split())
        print(json.dumps(run(start, seconds)), flush=True)


# --------------------------------------------------------------------------- one model
def measure(
    cfg, shape: str, steps: int, device, tmp: Path, settings, workers, processes=(),
    window_s: float = WINDOW_S,
) -> dict:  # fmt: skip
    """Images/s of cfg's model on `shape`-shaped data, steps x BATCH images: ours under each of
    `settings` (name -> RunConfig overrides; None: not measured), the textbook loop with
    `workers` (None: not measured), evaluation, and with `processes` the eager step over a
    shared window in this process ("1 proc.") and in k processes at once per k. A setting that
    raises gets None and its error under "failed"; the others are still measured."""
    data = synthetic(tmp, steps * BATCH, shape)
    params = count_parameters(
        build_model(cfg.model, data.in_shape, 10, cfg.width, cfg.norm, cfg.dropout_rate)
    )
    r = {"model": cfg.model, "shape": shape, "width": cfg.width, "params": params, "steps": steps}
    others, failed = [], {}
    if workers is not None:
        textbook = textbook_images_per_s(cfg, data, device, tmp / f"pickles-{cfg.model}", workers)
        r["textbook"] = textbook["images_per_s"]
        others.append(textbook["other_cores"])
    for name, overrides in settings.items():
        r[name] = None
        if overrides is None:
            continue
        try:
            ours = ours_images_per_s(replace(cfg, **overrides), data, device)
        except Exception as err:  # this setting's FAIL; the model's other figures still come
            failed[name] = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"
            continue
        r[name] = ours["images_per_s"]
        others.append(ours["other_cores"])
    measured = [k for k in settings if r[k]]
    r["best"] = max(measured, key=r.get) if measured else None
    if "textbook" in r and r["best"]:
        r["best / textbook"] = r[r["best"]] / r["textbook"]
    if processes:
        one = prepare_window(cfg, data, device)(time.time() + 0.05, window_s)
        r["1 proc."] = one["images"] / (one["end"] - one["start"])
    for k in (k for k in processes if k > 1):
        r[f"{k} proc."] = concurrent_images_per_s(cfg, shape, steps, device, k, window_s)
    r["eval"] = eval_images_per_s(cfg, data, device)
    r["other processes' cores"] = max((o for o in others if o is not None), default=None)
    return r | ({"failed": failed} if failed else {})


# --------------------------------------------------------------------------- projection
def grid_epochs(config: dict) -> list[dict]:
    """Per (dataset, model) cell of the grid: runs and epochs of the study and of the
    learning-rate search, from the grid's own runs (layout.iter_runs, each with its epochs)."""
    cells: dict[tuple[str, str], dict] = {}
    for run in iter_runs(config):
        cell = cells.setdefault(
            (run.dataset, run.model),
            {"dataset": run.dataset, "model": run.model, "runs": 0, "epochs": 0},
        )
        cell["runs"] += 1
        cell["epochs"] += run.settings.epochs
    return list(cells.values())


def grid_rates(rows: list[dict]) -> dict:
    """(training, evaluation) images/s per (model, shape) from `measure`'s rows: the best
    setting in one process, scaled by what sharing the device gained for eager; a shape not
    measured at the other shape's rates."""
    rates = {}
    for r in (r for r in rows if r.get("best")):
        # the sharing gain: k processes over one process, both timed over a shared window
        shared = max((v for k, v in r.items() if k.endswith(" proc.") and v), default=None)
        gain = shared / r["1 proc."] if shared else 1.0
        rates[r["model"], r["shape"]] = (r[r["best"]] * gain, r["eval"] * gain)
    for (model, _), rate in list(rates.items()):
        for shape in SHAPES:
            rates.setdefault((model, shape), rate)
    return rates


def grid_hours(config: dict, rates: dict) -> float:
    """Hours of the grid, one run after another, at rates[(model, shape)] = (training images/s,
    evaluation images/s): every epoch trains the training split and evaluates the validation and
    test splits; every run evaluates the training split once at its end."""
    hours = 0.0
    for cell in grid_epochs(config):
        n_raw, n_test = DATASET_SIZES[cell["dataset"]]
        n_val = round(n_raw * config["data"]["val_fraction"])
        train_rate, eval_rate = rates[cell["model"], DATASET_SHAPE[cell["dataset"]]]
        evaluated = cell["epochs"] * (n_val + n_test) + cell["runs"] * (n_raw - n_val)
        hours += (cell["epochs"] * (n_raw - n_val) / train_rate + evaluated / eval_rate) / 3600
    return hours


def markdown_table(rows: list[dict]) -> str:
    """By hand: DataFrame.to_markdown needs tabulate, which a GPU machine's torch may lack."""
    head = list(dict.fromkeys(k for r in rows for k in r))

    def cell(v) -> str:
        if isinstance(v, float):  # rates as whole numbers, metrics with 4 significant digits
            return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(cell(r.get(k)) for k in head) + " |" for r in rows])


if __name__ == "__main__":  # one of concurrent_images_per_s's workers
    _worker(sys.argv[1])
