"""A finished run's folder: steps.parquet, epochs.parquet and meta.json (normdrop.layout's
RUN_FILES), written together by `write_outputs`; meta.json last, as its presence marks a finished
run. meta.json's "settings" hold RunConfig.to_dict(); runs written before the renames of
config.LEGACY_NAMES hold the old names (read them with config.current_names).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch

from normdrop import provenance
from normdrop.config import RunConfig
from normdrop.storage import atomic_write_group

if TYPE_CHECKING:
    from normdrop.train import TrainingResult


def steps_frame(step_losses: list[torch.Tensor]) -> pd.DataFrame:
    """steps.parquet: one row per optimizer step, numbered from 1 over the whole run."""
    losses_all = torch.cat(step_losses) if step_losses else torch.zeros(0)
    return pd.DataFrame(
        {
            "epoch": [e + 1 for e, t in enumerate(step_losses) for _ in range(len(t))],
            "step": range(1, len(losses_all) + 1),
            "loss": losses_all.double().numpy(),
        }
    )


def epoch_record(epoch, lr, epoch_losses, train_acc, scores) -> dict:
    """The epoch's row of epochs.parquet, wall_time_s to come; `scores` from
    evaluation.val_and_test, empty (NaN) when the epoch's loss was not finite, as nothing is
    evaluated then."""
    return {
        "epoch": epoch + 1,
        "lr": lr,
        "train_loss_mean": float(epoch_losses.mean()),
        "train_loss_sd": float(epoch_losses.std()) if len(epoch_losses) > 1 else 0.0,
        "train_acc": train_acc,
        **{k: scores.get(k, math.nan) for k in ("val_loss", "val_acc", "test_loss", "test_acc")},
    }


def write_outputs(out: Path, cfg: RunConfig, result: TrainingResult, extra: dict) -> None:
    """steps.parquet, epochs.parquet and meta.json, replaced together; meta.json (whose presence
    marks a finished run) last. A failure while writing leaves the previous files untouched."""
    out = Path(out)
    meta = {
        "settings": cfg.to_dict(),
        "settings_hash": cfg.settings_hash(),
        "dataset": cfg.dataset,
        "model": cfg.model,
        "variant": cfg.variant,
        "seed": cfg.seed,
        "lr": cfg.lr,
        "status": result.status,
        "diverged_epoch": result.diverged_epoch,
        "train_eval_acc": result.train_eval_acc,
        "param_count": result.param_count,
        "wall_time_s": result.wall_time_s,
        "resumes": result.resumes,
        "execution": result.execution,
        "git_revision": provenance.git_revision(),
        "versions": provenance.library_versions(),
        "finished_at": provenance.now(),
        **provenance.machine(),
        **extra,
    }
    text = json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write_group(
        {
            out / "steps.parquet": lambda f: result.steps.to_parquet(f, index=False),
            out / "epochs.parquet": lambda f: result.epochs.to_parquet(f, index=False),
            out / "meta.json": lambda f: f.write(text.encode()),
        }
    )
