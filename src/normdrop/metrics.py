"""The study's metrics (section 4.2 of the paper, as docs/protocol.md defines them).

Accuracies are fractions in [0, 1]; the generalization gap is in percentage points. A diverged
run (status 'diverged') has no final metrics: they are NaN, and the tables say 'diverged'.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def loss_sd(epoch_loss_sd) -> float:
    """Training stability: the within-epoch SD of mini-batch losses, averaged over epochs."""
    values = np.asarray(epoch_loss_sd, dtype=float)
    if len(values) == 0 or not np.isfinite(values).all():
        return math.nan
    return float(values.mean())


def loss_sd_late(epoch_loss_sd, skip: int = 1) -> float:
    """Loss SD over epochs skip+1..N: the same average without the first epoch(s).

    The paper's loss SD averages every epoch, so one violent first epoch (an initialization that
    starts far from ln(classes)) can decide it; this form tells a difference in the first epoch
    from one throughout training. NaN for a run of `skip` epochs or fewer.
    """
    values = np.asarray(epoch_loss_sd, dtype=float)
    return loss_sd(values[skip:]) if len(values) > skip else math.nan


# A run "did not learn" when its final validation accuracy is at most (1 + CHANCE_MARGIN) times
# chance (1 / classes): 15% for 10 classes, 1.5% for 100 (docs/protocol.md, "Runs that did not
# learn", gives the argument). Its convergence epoch is undefined, not 1.
CHANCE_MARGIN = 0.5


def learned(final_val_acc: float, num_classes: int | None) -> bool:
    """Whether a run's final validation accuracy lies beyond the margin above chance (True when
    the number of classes is unknown: nothing to compare with)."""
    if not num_classes:
        return True
    return bool(final_val_acc > (1 + CHANCE_MARGIN) / num_classes)


def convergence_epoch(val_acc, fraction: float = 0.95, num_classes: int | None = None) -> float:
    """First 1-based epoch whose validation accuracy reaches `fraction` of the final epoch's.

    NaN when there is no finite final accuracy (an empty or diverged curve) or, given the number
    of classes, when the run did not learn (`learned`): 95% of a final accuracy at chance is
    reached at once, which would score a network that never learned as the fastest. The final
    epoch itself always qualifies otherwise.
    """
    acc = np.asarray(val_acc, dtype=float)
    if len(acc) == 0 or not np.isfinite(acc[-1]) or not learned(acc[-1], num_classes):
        return math.nan
    reached = np.flatnonzero(acc >= fraction * acc[-1])  # NaN compares False: never 'reached'
    return float(reached[0] + 1)


def early_stopping(val_acc, test_acc) -> tuple[float, float]:
    """(1-based epoch of the best validation accuracy, test accuracy at that epoch); first wins."""
    val = np.asarray(val_acc, dtype=float)
    if len(val) == 0 or not np.isfinite(val).any():
        return math.nan, math.nan
    best = int(np.nanargmax(val))
    return float(best + 1), float(np.asarray(test_acc, dtype=float)[best])


def generalization_gap(train_acc: float, test_acc: float) -> float:
    """Final train accuracy (eval mode, training split) minus final test accuracy, in points."""
    return 100.0 * (train_acc - test_acc)


def run_metrics(
    epochs: pd.DataFrame,
    train_eval_acc: float,
    status: str,
    convergence_fraction: float = 0.95,
    num_classes: int | None = None,
) -> dict[str, float]:
    """All final metrics of one run from its per-epoch table (sorted by epoch); `learned` is
    False for a completed run that ended within the margin of chance (`num_classes` given)."""
    if status != "completed":
        nan = math.nan
        return dict(
            learned=False,
            loss_sd=nan,
            loss_sd_late=nan,
            convergence_epoch=nan,
            final_test_acc=nan,
            final_val_acc=nan,
            final_train_acc=nan,
            gen_gap=nan,
            es_epoch=nan,
            es_test_acc=nan,
        )
    es_epoch, es_test_acc = early_stopping(epochs["val_acc"], epochs["test_acc"])
    final_test = float(epochs["test_acc"].iloc[-1])
    return dict(
        learned=learned(float(epochs["val_acc"].iloc[-1]), num_classes),
        loss_sd=loss_sd(epochs["train_loss_sd"]),
        loss_sd_late=loss_sd_late(epochs["train_loss_sd"]),
        convergence_epoch=convergence_epoch(epochs["val_acc"], convergence_fraction, num_classes),
        final_test_acc=final_test,
        final_val_acc=float(epochs["val_acc"].iloc[-1]),
        final_train_acc=float(train_eval_acc),
        gen_gap=generalization_gap(train_eval_acc, final_test),
        es_epoch=es_epoch,
        es_test_acc=es_test_acc,
    )
