"""Fused runs against the same runs one after another (issue 26), timed in this one process:
`fused_vs_sequential`. `./dev.sh bench` prints it per model (bench_train.py --fused K)."""

from __future__ import annotations

from dataclasses import replace

import torch

from normdrop.config import RunConfig
from normdrop.data import Prepared
from normdrop.fused_train import train_fused
from normdrop.train import train


def _second_epoch_s(epochs) -> float:
    return float(epochs.wall_time_s.iloc[1] - epochs.wall_time_s.iloc[0])


def fused_vs_sequential(cfg: RunConfig, data: Prepared, device: torch.device, k: int) -> dict:
    """Aggregate training images/s of k seeds of `cfg` fused (normdrop.fused_train) and of the
    same k runs trained one after another (normdrop.train.train), each in its second epoch
    (the first pays the warm-up), on each run's own epoch clock; the epochs' evaluations count
    as training time in both. The k sequential runs share this process: their start-up (about
    2-4 s each, imports and data loading) is not counted, which favours them."""
    cfgs = [replace(cfg, seed=cfg.seed + i, epochs=2, lr_milestones=()) for i in range(k)]
    images = k * len(data.train_y)
    fused = train_fused(cfgs, data, device, log=lambda line: None)
    fused_s = _second_epoch_s(fused[-1].epochs)  # the last member's row closes the epoch
    sequential_s = sum(
        _second_epoch_s(train(c, data, device, log=lambda line: None).epochs) for c in cfgs
    )
    return {
        "model": cfg.model,
        "K": k,
        "fused images/s": images / fused_s,
        "sequential images/s": images / sequential_s,
        "fused / sequential": sequential_s / fused_s,
    }
