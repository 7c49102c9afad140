"""The training log's epoch line: one formatter (`epoch_line`, written by normdrop.train) and its
parser (`parse_epoch_line`, read by normdrop.status), side by side so that they change together.

    epoch 3/100 lr 1.00e-03 loss 0.4123 (sd 0.0311) train 0.8712 val 0.8650 test 0.8590 [12.3s]

Torch-free: the status command reads logs where torch may be absent.
"""

from __future__ import annotations

import re
from typing import NamedTuple

EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+)\b")


class EpochProgress(NamedTuple):
    done: int  # epochs finished (1-based number of the epoch just ended)
    epochs: int  # of the run's total


def epoch_line(row: dict, epochs: int) -> str:
    """The log line of one epoch's record (a row of epochs.parquet) out of `epochs`."""
    return (
        f"epoch {row['epoch']}/{epochs} lr {row['lr']:.2e} loss {row['train_loss_mean']:.4f} "
        f"(sd {row['train_loss_sd']:.4f}) train {row['train_acc']:.4f} val {row['val_acc']:.4f} "
        f"test {row['test_acc']:.4f} [{row['wall_time_s']:.1f}s]"
    )


def parse_epoch_line(line: str) -> EpochProgress | None:
    """(done, epochs) of a line `epoch_line` wrote; None for any other line."""
    found = EPOCH_LINE.match(line.strip())
    return EpochProgress(int(found[1]), int(found[2])) if found else None
