"""Where a CPU training step spends its time: ours vs the textbook loop, plus prototypes.

    PYTHONPATH=src .venv/bin/python benchmarks/profile_cpu_step.py [--model resnet20] [--steps 3]
        [--rounds 3] [--variants ours ref_compute ref_loader channels_last bf16 ...] [--profile]

Each variant runs `--steps` timed optimizer steps per round (after one warm-up round); the
variants are interleaved round-robin so that a machine whose load changes affects them alike;
per variant the minimum and median seconds per step over all rounds are printed.

  ours           the body of normdrop.train.train's loop on CPU (uint8 gather, normalize, fp32)
  ref_compute    the textbook loop body on a batch already loaded (fp32, loss.item())
  ref_loader     next() on the textbook DataLoader (interleaved: its workers prefetch meanwhile,
                 so use --loader for its cost: 0 and 2 workers in a tight loop)
  channels_last  ours with model and input in channels_last (train() uses it on CUDA only)
  bf16           ours under torch.autocast("cpu", bfloat16) (precision: bf16)
  bf16_cl        bf16 + channels_last
  compile        ours with torch.compile(model) (compile: true)
  fused_adam     ours with torch.optim.Adam(..., fused=True)
  compile_fused, compile_cl_fused, bf16_cl_compile_fused: combinations
  fast_dropout   ours with benchmarks/fast_dropout.py's FastDropout for nn.Dropout (+ _cl, _cl_fused,
                 _cl_compile)
  no_dropout     ours with dropout 0 (how much of the step the dropout masks cost)

--profile prints torch.profiler's top operators (self CPU time) for ours and ref_compute.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import Meter, make_prepared, write_cifar_pickles  # noqa: E402

from normdrop.data import normalize, standardization  # noqa: E402
from normdrop.models import build_model  # noqa: E402

WIDTH = {"mlp": 768, "cnn": 64, "resnet20": 32}
DROPOUT = {"mlp": 0.5, "cnn": 0.3, "resnet20": 0.3}


def make_ours_step(model_name, data, *, channels_last=False, bf16=False, compile_=False,
                   dropout=None, fused=False, fast_dropout=False):  # fmt: skip
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    p = DROPOUT[model_name] if dropout is None else dropout
    model = build_model(model_name, data.in_shape, 10, WIDTH[model_name], "batch", p)
    if fast_dropout:
        from fast_dropout import replace_dropout

        replace_dropout(model)
    model = model.to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused or None)
    forward = torch.compile(model) if compile_ else model
    gen = torch.Generator().manual_seed(0)
    n = len(data.train_y)
    state = {"perm": torch.randperm(n, generator=gen), "i": 0}
    losses = torch.zeros(10_000)
    correct = torch.zeros((), dtype=torch.long)
    model.train()
    scale, shift = standardization(data.mean, data.std)

    def step():
        i = state["i"] % (n // 128)
        state["i"] += 1
        idx = state["perm"][i * 128 : (i + 1) * 128]
        x, y = data.train_x[idx], data.train_y[idx]
        x = normalize(x, scale, shift).contiguous(memory_format=fmt)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = forward(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses[state["i"]] = loss.detach()
        correct.add_((logits.argmax(1) == y).sum())

    return step


def make_ref_compute_step(model_name, data):
    from torchvision import transforms

    torch.manual_seed(0)
    model = build_model(model_name, data.in_shape, 10, WIDTH[model_name], "batch",
                        DROPOUT[model_name])  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    crit = torch.nn.CrossEntropyLoss()
    norm = transforms.Normalize(data.mean.tolist(), data.std.tolist())
    x = norm(data.train_x[:128].float() / 255)
    y = data.train_y[:128]
    model.train()

    def step():
        out = model(x)
        loss = crit(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()
        (out.argmax(1) == y).sum().item()

    return step


def make_ref_loader_step(data, tmp):
    from torch.utils.data import DataLoader
    from torchvision import transforms

    cls = write_cifar_pickles(data, Path(tmp))
    tf = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(data.mean.tolist(), data.std.tolist())]
    )
    loader = DataLoader(cls(tmp, train=True, download=False, transform=tf), batch_size=128,
                        shuffle=True, num_workers=2)  # fmt: skip
    state = {"it": iter(loader)}

    def step():
        try:
            next(state["it"])
        except StopIteration:
            state["it"] = iter(loader)
            next(state["it"])

    return step


def loader_cost(data, tmp, batches=30):
    """Seconds per batch of the textbook DataLoader alone (no model): 0 workers (its CPU cost
    per batch, in the main process) and 2 workers (its throughput on this machine)."""
    from torch.utils.data import DataLoader
    from torchvision import transforms

    cls = write_cifar_pickles(data, Path(tmp) / "loader")
    tf = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(data.mean.tolist(), data.std.tolist())]
    )
    ds = cls(str(Path(tmp) / "loader"), train=True, download=False, transform=tf)
    out = {}
    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=128, shuffle=True, num_workers=workers)
        m = Meter()
        for i, _ in enumerate(loader):
            if i + 1 == batches:
                break
        t = m.stop()
        out[workers] = (t["wall"] / batches, t["other_cores"])
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="resnet20")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", nargs="+",
                   default=["ours", "ref_compute", "channels_last", "bf16", "bf16_cl"])  # fmt: skip
    p.add_argument("--profile", action="store_true")
    p.add_argument("--rows", type=int, default=18)
    p.add_argument("--profile-variants", nargs="+", default=["ours", "ref_compute"])
    p.add_argument("--loader", action="store_true", help="time the textbook DataLoader alone")
    p.add_argument("--max-other", type=float, default=0.3, help="contention threshold (cores)")
    args = p.parse_args()
    data = make_prepared(64 * 128, "cifar")
    tmp = tempfile.TemporaryDirectory()
    makers = {
        "ours": lambda: make_ours_step(args.model, data),
        "ref_compute": lambda: make_ref_compute_step(args.model, data),
        "ref_loader": lambda: make_ref_loader_step(data, tmp.name),
        "channels_last": lambda: make_ours_step(args.model, data, channels_last=True),
        "bf16": lambda: make_ours_step(args.model, data, bf16=True),
        "bf16_cl": lambda: make_ours_step(args.model, data, bf16=True, channels_last=True),
        "compile": lambda: make_ours_step(args.model, data, compile_=True),
        "compile_cl": lambda: make_ours_step(args.model, data, compile_=True, channels_last=True),
        "fused_adam": lambda: make_ours_step(args.model, data, fused=True),
        "compile_fused": lambda: make_ours_step(args.model, data, compile_=True, fused=True),
        "compile_cl_fused": lambda: make_ours_step(
            args.model, data, compile_=True, channels_last=True, fused=True
        ),
        "bf16_cl_compile_fused": lambda: make_ours_step(
            args.model, data, bf16=True, channels_last=True, compile_=True, fused=True
        ),
        "fast_dropout": lambda: make_ours_step(args.model, data, fast_dropout=True),
        "fast_dropout_cl": lambda: make_ours_step(
            args.model, data, fast_dropout=True, channels_last=True
        ),
        "fast_dropout_cl_fused": lambda: make_ours_step(
            args.model, data, fast_dropout=True, channels_last=True, fused=True
        ),
        "fast_dropout_cl_compile": lambda: make_ours_step(
            args.model, data, fast_dropout=True, channels_last=True, compile_=True
        ),
        "no_dropout": lambda: make_ours_step(args.model, data, dropout=0.0),
    }
    steps = {v: makers[v]() for v in args.variants}
    print(f"{args.model}: torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    for v, s in steps.items():  # warm-up round
        t0 = time.perf_counter()
        s()
        s()
        print(f"warm-up {v}: {time.perf_counter() - t0:.2f} s", flush=True)
    if args.loader:
        for w, (t, o) in loader_cost(data, tmp.name).items():
            print(f"textbook DataLoader alone, {w} workers: {t * 1000:.1f} ms/batch "
                  f"(other processes {o or 0:.2f} cores)", flush=True)  # fmt: skip
    times = {v: [] for v in steps}  # (seconds, cores other processes used meanwhile)
    for r in range(args.rounds):
        for v, s in steps.items():
            for _ in range(args.steps):
                m = Meter()
                s()
                t = m.stop()
                times[v].append((t["wall"], t["other_cores"] or 0.0))
        print(f"round {r + 1}: " + ", ".join(
            f"{v} {statistics.median(x for x, _ in t[-args.steps:]):.3f}"
            f" (other {max(o for _, o in t[-args.steps:]):.1f})" for v, t in times.items()
        ), flush=True)  # fmt: skip
    print(f"\nsteps during which other processes used <= {args.max_other} cores only")
    print("| variant | clean steps | min s/step | median s/step | images/s (median) | vs ours |")
    print("|---|---:|---:|---:|---:|---:|")
    clean = {v: [x for x, o in t if o <= args.max_other] for v, t in times.items()}
    base = statistics.median(clean["ours"]) if clean.get("ours") else None
    for v, t in clean.items():
        if not t:
            print(f"| {v} | 0 | - | - | - | - |")
            continue
        med = statistics.median(t)
        rel = f"{base / med:.2f}x" if base else "-"
        print(f"| {v} | {len(t)} | {min(t):.3f} | {med:.3f} | {128 / med:.0f} | {rel} |")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for v in args.profile_variants:
            if v not in steps:
                continue
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(args.steps):
                    steps[v]()
            print(f"\n### {v}: top operators by self CPU time ({args.steps} steps)")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    tmp.cleanup()


if __name__ == "__main__":
    main()
