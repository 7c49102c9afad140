"""What one dropout layer costs on CPU (forward + backward), and cheaper ways to draw its mask.

    PYTHONPATH=src .venv/bin/python benchmarks/dropout_cpu.py [--shape 128 32 32 32] [--p 0.3]

Variants (all: keep with probability 1-p, scale kept values by 1/(1-p)):
  nn.Dropout        F.dropout: float bernoulli_ (MKL VSL) + div_ + mul; backward: mul by the mask
  ops               the components of F.dropout's CPU path, timed one by one
  bool_mask         mask = torch.empty(bool).bernoulli_(1-p); x * mask * scale
  rand_mask         mask = torch.rand_like(x) >= p; x * mask * scale
  compiled          torch.compile of F.dropout
  fast_dropout      benchmarks/fast_dropout.py: 16-bit uniforms, 4 per 64-bit draw, fused apply
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from fast_dropout import fast_dropout


def bench(fn, x, reps):
    ts = []
    for i in range(reps + 2):
        xi = x.detach().requires_grad_()
        t0 = time.perf_counter()
        y = fn(xi)
        y.backward(torch.ones_like(y))
        if i >= 2:
            ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, nargs="+", default=[128, 32, 32, 32])
    ap.add_argument("--p", type=float, default=0.3)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    p, scale = args.p, 1 / (1 - args.p)
    x = torch.randn(*args.shape)
    print(f"shape {tuple(x.shape)} ({x.numel() / 1e6:.1f}M elements), p={p}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")  # fmt: skip

    def bool_mask(t):
        m = torch.empty(t.shape, dtype=torch.bool).bernoulli_(1 - p)
        return t * m * scale

    def rand_mask(t):
        return t * (torch.rand_like(t) >= p) * scale

    compiled = torch.compile(lambda t: F.dropout(t, p, training=True))
    variants = {
        "nn.Dropout (F.dropout)": lambda t: F.dropout(t, p, training=True),
        "bool_mask": bool_mask,
        "rand_mask": rand_mask,
        "compiled F.dropout": compiled,
        "fast_dropout (prototype)": lambda t: fast_dropout(t, p),
        "identity (x * 1.0)": lambda t: t * 1.0,
    }
    for name, fn in variants.items():
        s = bench(fn, x, args.reps)
        print(f"{name:28s} fwd+bwd {s * 1000:7.1f} ms  ({s / x.numel() * 1e9:.1f} ns/element)")

    # the pieces of F.dropout's CPU path (aten::_dropout_impl): noise.bernoulli_, div_, mul
    def t(f):
        f()
        ts = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts) * 1000

    noise = torch.empty_like(x)
    print(f"  float bernoulli_(1-p)  {t(lambda: noise.bernoulli_(1 - p)):7.1f} ms")
    print(f"  noise.div_(1-p)        {t(lambda: noise.div_(1 - p)):7.1f} ms")
    print(f"  x * noise              {t(lambda: x * noise):7.1f} ms")
    print(f"  bool bernoulli_(1-p)   "
          f"{t(lambda: torch.empty(x.shape, dtype=torch.bool).bernoulli_(1 - p)):7.1f} ms")  # fmt: skip
    print(f"  torch.rand_like        {t(lambda: torch.rand_like(x)):7.1f} ms")


if __name__ == "__main__":
    main()
