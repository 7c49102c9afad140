"""Live tracking of a training run: its per-epoch record and, at the end, its settings with its
final metrics, written while it trains so that a viewer shows a running grid.

A tracker is anything with the three methods of `Tracker`; `train` calls them and knows nothing
else about it. `TensorBoardTracker` writes TensorBoard event files (view them with
`tensorboard --logdir <folder>`); another tracker (MLflow, W&B, ...) would be one more class
beside it, chosen in the training CLI.

Steps are epochs (1-based), as in epochs.parquet; values are the record's own (accuracies are
fractions in [0, 1], the learning rate is the one used during the epoch).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

# epochs.parquet column -> TensorBoard tag. Grouped by split, so TensorBoard draws one section
# per split; `lr` stands alone.
SCALARS = {
    "train_loss_mean": "train/loss_mean",
    "train_loss_sd": "train/loss_sd",
    "train_acc": "train/acc",
    "val_loss": "val/loss",
    "val_acc": "val/acc",
    "test_loss": "test/loss",
    "test_acc": "test/acc",
    "lr": "lr",
}
# The final metrics the HParams view compares (names distinct from the per-epoch tags, as
# TensorBoard's HParams plugin asks): record column -> tag.
FINAL = {
    "val_acc": "final/val_acc",
    "test_acc": "final/test_acc",
    "train_loss_mean": "final/train_loss_mean",
    "train_loss_sd": "final/train_loss_sd",
    "train_eval_acc": "final/train_eval_acc",
}


class Tracker(Protocol):
    def start(self, first_epoch: int) -> None:
        """Before the first epoch this session trains (1-based; > 1 when resumed). Anything
        recorded for epochs >= first_epoch by an earlier, killed session is superseded."""

    def log_epoch(self, row: dict) -> None:
        """One epoch's record (a row of epochs.parquet), visible to a viewer at once."""

    def finish(self, settings: dict, final: dict) -> None:
        """The run's settings (RunConfig.to_dict()) and its final record (the last epoch's row
        plus train_eval_acc); then release everything."""


def hparam_value(value):
    """A setting as TensorBoard's HParams view takes it: a str, int or float. A tuple (milestones,
    betas) becomes its text, e.g. '50,75' ('' when empty); a bool 'true' or 'false' (torch's
    hparams() would store it as the number 0 or 1)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return "none" if value is None else value


class TensorBoardTracker:
    """Event files in `logdir` (created if needed): per epoch the SCALARS, flushed after each
    epoch; at the end the settings as hparams with the FINAL metrics."""

    def __init__(self, logdir: Path):
        self.logdir, self.writer = Path(logdir), None
        self.last_epoch, self.logged = 0, False  # last epoch logged; by this session?

    def start(self, first_epoch: int) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when used

        # purge_step: TensorBoard's readers drop the points this folder already holds at steps
        # >= first_epoch (written by a session that was killed after its last checkpoint), so a
        # resumed run shows each epoch once. A run started afresh replaces the folder's files:
        # purging would drop their points but not their hparams (readers keep the first seen).
        if first_epoch == 1:
            for old in self.logdir.glob("events.out.tfevents.*"):
                old.unlink()
        self.writer = SummaryWriter(str(self.logdir), purge_step=first_epoch)
        self.last_epoch, self.logged = first_epoch - 1, False

    def log_epoch(self, row: dict) -> None:
        self._write({tag: row[column] for column, tag in SCALARS.items()}, int(row["epoch"]))
        self.writer.flush()  # one small write per epoch: a live viewer sees the epoch now
        self.last_epoch, self.logged = int(row["epoch"]), True

    def _write(self, values: dict, step: int) -> None:
        """The scalars as one event (SummaryWriter.add_scalar makes one each): one hand-over to
        the writer's thread per epoch, not eight (measured: HANDOFF-ux.md)."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=t, simple_value=v) for t, v in values.items()])
        self.writer.file_writer.add_summary(summary, step)

    def finish(self, settings: dict, final: dict) -> None:
        from torch.utils.tensorboard.summary import hparams

        step = int(final["epoch"])
        if self.last_epoch == step and not self.logged:
            # Resumed after its last epoch (killed after it had trained everything): a killed
            # session may have written these final values already; supersede them too.
            self.writer.close()
            self.start(step)
            self.log_epoch(final)
        metrics = {tag: float(final[column]) for column, tag in FINAL.items()}
        # Written into this run's own folder (SummaryWriter.add_hparams would open a sub-folder
        # per call), at the last epoch's step so that a later fresh start purges it too.
        hparam_dict = {k: hparam_value(v) for k, v in settings.items()}
        for summary in hparams(hparam_dict, metrics):
            self.writer.file_writer.add_summary(summary, step)
        self._write(metrics, step)
        self.writer.close()


# --------------------------------------------------------------------------------------------
# Seed-averaged curves (TensorBoard averages no runs: tensorflow/tensorboard#376)

MEAN_STATS = ("mean", "mean+sd", "mean-sd")  # one TensorBoard run each, per cell


def mean_curves(epochs: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, model, variant, epoch) and SCALARS column: the mean over seeds, its SD
    (ddof=1; NaN with one seed) and the number of seeds; non-finite values (a diverged run's
    last epoch) are left out, as from Table 2's means."""
    cols = [c for c in SCALARS if c in epochs.columns]
    finite = epochs[cols].apply(pd.to_numeric, errors="coerce").replace([np.inf, -np.inf], np.nan)
    grouped = epochs[["dataset", "model", "variant", "epoch"]].join(finite)
    return grouped.groupby(["dataset", "model", "variant", "epoch"], sort=False)[cols].agg(
        ["mean", "std", "count"]
    )


def write_mean_curves(epochs: pd.DataFrame, results) -> list[Path]:
    """Per cell, the seeds' mean curve and mean ± SD as TensorBoard runs of their own under
    `results`/tensorboard/mean/<cell>/ (layout.tensorboard_mean_dir), replacing earlier files;
    `epochs`: the aggregate's epochs.parquet. Steps are epochs; tags as a run's (SCALARS)."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    from normdrop.layout import tensorboard_mean_dir

    stats, written = mean_curves(epochs), []
    for (dataset, model, variant), cell in stats.groupby(level=[0, 1, 2], sort=False):
        cell = cell.droplevel([0, 1, 2])
        mean, sd = cell.xs("mean", axis=1, level=1), cell.xs("std", axis=1, level=1)
        for stat, frame in zip(MEAN_STATS, (mean, mean + sd, mean - sd), strict=True):
            keys = dict(dataset=dataset, model=model, variant=variant)
            logdir = Path(tensorboard_mean_dir(results, stat, **keys))
            logdir.mkdir(parents=True, exist_ok=True)
            for old in logdir.glob("events.out.tfevents.*"):  # an earlier aggregate's
                old.unlink()
            writer = EventFileWriter(str(logdir))
            for epoch, row in frame.iterrows():
                values = [Summary.Value(tag=SCALARS[c], simple_value=float(v))
                          for c, v in row.items() if np.isfinite(v)]  # fmt: skip
                event = Event(wall_time=time.time(), step=int(epoch), summary=Summary(value=values))
                writer.add_event(event)
            writer.close()
            written.append(logdir)
    return written


__all__ = ["FINAL", "SCALARS", "TensorBoardTracker", "Tracker", "hparam_value"]
__all__ += ["MEAN_STATS", "mean_curves", "write_mean_curves"]
