"""Training-speed benchmark: our `normdrop.train.train` against the textbook DataLoader loop.

    ./dev.sh bench [--device cpu|cuda] [--steps N] [--models mlp cnn resnet20]
        [--shapes cifar mnist] [--concurrent K] [--compile] [--tiny]

For each model (variant bn_dropout, the heaviest; batch 128) it times, in this one process,

  ours      `train()` on a synthetic prepared dataset of exactly steps x 128 training images,
            in a run's second epoch (the first is the warm-up), as a workflow run executes:
            data on the device as uint8, one host sync per epoch, bf16 + channels_last on CUDA;
  textbook  the deliberate baseline of speed.textbook_images_per_s (CIFAR-shaped only): the
            same images as CIFAR-10 pickles, torchvision + DataLoader + `.item()` per step, fp32,

and prints images/s, their ratio, the rate of normdrop.evaluation.loss_and_accuracy, and the
projected time of config.yaml's grid (speed.grid_hours: MNIST at the MNIST-shaped rate, CIFAR at
the CIFAR-shaped one, every variant at the bn_dropout rate, an upper bound). With
`--concurrent K`, K processes of ours train at once and the projection uses their aggregate
rate. Each timing says how many cores other processes of the machine used meanwhile (a shared
machine makes figures pessimistic).
`--tiny` (2 steps of narrow models) is what the test suite runs, so that the script cannot rot;
its figures mean nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import speed
import torch
import yaml
from fused_speed import fused_vs_sequential

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STEPS = {  # keeps the whole CPU run (3 models, both shapes) under ~8 minutes on 2 cores
    "cpu": {"mlp": 100, "cnn": 24, "resnet20": 16},
    "cuda": {"mlp": 200, "cnn": 200, "resnet20": 200},
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, help="optimizer steps per timing (default: per model)")
    p.add_argument("--models", nargs="+", default=["mlp", "cnn", "resnet20"])
    p.add_argument("--shapes", nargs="+", default=["cifar", "mnist"], choices=list(speed.SHAPES))
    p.add_argument("--workers", type=int, help="textbook DataLoader workers (2 CPU / 8 CUDA)")
    p.add_argument("--concurrent", type=int, default=1, help="K processes of ours at once")
    p.add_argument("--compile", action="store_true", help="ours with torch.compile")
    p.add_argument("--fused", type=int, default=3, help="K members fused vs K sequential (0: skip)")
    p.add_argument("--tiny", action="store_true", help="2 steps of narrow models: a check")
    p.add_argument("--config", type=Path, default=ROOT / "config.yaml")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available (use --device cpu)")
    t_start, config = time.perf_counter(), yaml.safe_load(args.config.read_text())
    print("# Training-speed benchmark: ours (normdrop.train.train) vs the textbook loop")
    print(", ".join(f"{k} {v}" for k, v in speed.machine(device).items()))
    workers = args.workers if args.workers is not None else (8 if device.type == "cuda" else 2)
    settings = {"eager": {}, **({"compile": {"compile": True}} if args.compile else {})}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        for model, shape in ((m, s) for m in args.models for s in args.shapes):
            width = speed.TINY_WIDTH[model] if args.tiny else config["models"][model]["width"]
            cfg = speed.bench_config(model, width, config["models"][model]["dropout_rate"])
            steps = args.steps or (2 if args.tiny else DEFAULT_STEPS[device.type][model])
            print(f"{model} (width {width}), {shape}-shaped, {steps} steps ...", flush=True)
            textbook = workers if shape == "cifar" else None  # the pickles are CIFAR-10's
            processes = (args.concurrent,) if args.concurrent > 1 else ()
            measured = speed.measure(
                cfg, shape, steps, device, Path(tmp), settings, textbook, processes
            )
            rows.append(measured)
    print("\n## Results (images/s; eval: of normdrop.evaluation.loss_and_accuracy)\n")
    print(speed.markdown_table(rows))
    rates = speed.grid_rates(rows)
    hours = {m: speed.grid_hours({**config, "select": {"models": [m]}}, rates) for m in args.models}
    print("\n| model | projected grid time |\n|---|---:|")
    print("\n".join(f"| {model} | {h:,.1f} h |" for model, h in hours.items()))
    print(f"| **grid** | **{sum(hours.values()):,.1f} h** |")
    epochs, search = config["train"]["epochs"], config["lr_search"]["epochs"]
    together = f" ({args.concurrent} at a time)" if args.concurrent > 1 else ""
    print(
        f"\nProjected: the {epochs}-epoch runs and the {search}-epoch learning-rate search of "
        f"{args.config.name}, one after another{together}, at the best setting's rate; every "
        "variant at the bn_dropout rate (an upper bound); a shape not measured at the measured "
        f"shape's rate. Textbook: {workers} DataLoader workers, fp32."
    )
    if args.fused:
        print(f"\n## Fused: {args.fused} seeds as one model vs the same runs one after another\n")
        with tempfile.TemporaryDirectory(prefix="bench_fused_") as tmp:
            fused = [fused_row(args, config, model, device, Path(tmp)) for model in args.models]
        print(speed.markdown_table(fused))
    print(f"Benchmark wall time: {time.perf_counter() - t_start:.0f} s.")
    return 0


def fused_row(args, config: dict, model: str, device, tmp: Path) -> dict:
    """fused_speed.fused_vs_sequential for `model` (CIFAR-shaped, bn_dropout, batch 128)."""
    width = speed.TINY_WIDTH[model] if args.tiny else config["models"][model]["width"]
    cfg = speed.bench_config(model, width, config["models"][model]["dropout_rate"])
    steps = args.steps or (2 if args.tiny else DEFAULT_STEPS[device.type][model])
    print(f"{model} fused, {args.fused} members, {steps} steps ...", flush=True)
    data = speed.synthetic(tmp, steps * speed.BATCH, "cifar")
    return fused_vs_sequential(cfg, data, device, args.fused)


if __name__ == "__main__":
    raise SystemExit(main())
