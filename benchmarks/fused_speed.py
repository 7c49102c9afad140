"""Fused runs against the same runs one after another (issue 26), timed in this one process:
`fused_vs_sequential`. `./dev.sh bench` prints it per model (bench_train.py --fused K)."""

from __future__ import annotations

from dataclasses import replace

import torch

from normdrop.config import RunConfig
from normdrop.data import Prepared
from normdrop.train import train, train_members


def _second_epoch_s(epochs) -> float:
    return float(epochs.wall_time_s.iloc[1] - epochs.wall_time_s.iloc[0])


def fused_images_per_s(cfg: RunConfig, data: Prepared, device: torch.device, k: int) -> float:
    """Aggregate training images/s of k seeds of `cfg` fused (normdrop.train.train_members: the real
    path, each member's outputs kept) in their second epoch (the first pays the warm-up), on
    the job's epoch clock; the members' evaluations count as training time."""
    cfgs = [replace(cfg, seed=cfg.seed + i, epochs=2, lr_milestones=()) for i in range(k)]
    fused = train_members(cfgs, data, device, log=lambda line: None)
    return k * len(data.train_y) / _second_epoch_s(fused[-1].epochs)  # the last row closes it


def fused_vs_sequential(cfg: RunConfig, data: Prepared, device: torch.device, k: int) -> dict:
    """`fused_images_per_s` against the same k runs trained one after another
    (normdrop.train.train), each timed in its second epoch as above. The k sequential runs
    share this process: their start-up (about 2-4 s each, imports and data loading) is not
    counted, which favours them."""
    fused = fused_images_per_s(cfg, data, device, k)
    cfgs = [replace(cfg, seed=cfg.seed + i, epochs=2, lr_milestones=()) for i in range(k)]
    quiet = dict(log=lambda line: None)
    sequential_s = sum(_second_epoch_s(train(c, data, device, **quiet).epochs) for c in cfgs)
    sequential = k * len(data.train_y) / sequential_s
    return {
        "model": cfg.model,
        "K": k,
        "fused images/s": fused,
        "sequential images/s": sequential,
        "fused / sequential": fused / sequential,
    }
