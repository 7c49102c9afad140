"""A model's evaluation in a run: loss and accuracy over a whole split, in eval mode, from the
uint8 images on the device (`Inputs` says how they become the model's input)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from normdrop.data import Prepared, normalize


@dataclass(frozen=True)
class Inputs:
    """How uint8 images become the model's input on the device, and the autocast they run under."""

    scale: torch.Tensor  # (1, C, 1, 1): standardization, on the device
    shift: torch.Tensor  # (1, C, 1, 1)
    memory_format: torch.memory_format
    bf16: bool


@torch.no_grad()
def loss_and_accuracy(model, x_u8, y, *, inputs: Inputs, batch_size: int) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` over a whole split, in eval mode, in batches of
    `batch_size`; x_u8 (N, C, H, W) uint8 and y (N,) int64 on the model's device."""
    model.eval()
    loss_sum = torch.zeros((), device=y.device)
    correct = torch.zeros((), device=y.device, dtype=torch.long)
    for i in range(0, len(y), batch_size):
        x = normalize(x_u8[i : i + batch_size], inputs.scale, inputs.shift)
        x = x.contiguous(memory_format=inputs.memory_format)
        with torch.autocast(y.device.type, dtype=torch.bfloat16, enabled=inputs.bf16):
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y[i : i + batch_size], reduction="sum")
        correct += (logits.argmax(1) == y[i : i + batch_size]).sum()
    return loss_sum.item() / len(y), correct.item() / len(y)


def val_and_test(model, data: Prepared, inputs: Inputs, batch_size: int) -> dict:
    """Validation and test loss and accuracy, in eval mode."""
    on = dict(inputs=inputs, batch_size=batch_size)
    val_loss, val_acc = loss_and_accuracy(model, data.val_x, data.val_y, **on)
    test_loss, test_acc = loss_and_accuracy(model, data.test_x, data.test_y, **on)
    return dict(val_loss=val_loss, val_acc=val_acc, test_loss=test_loss, test_acc=test_acc)


def train_split_accuracy(model, data: Prepared, inputs: Inputs, batch_size: int) -> float:
    """Accuracy on the training split in eval mode, after the last epoch."""
    _, acc = loss_and_accuracy(
        model, data.train_x, data.train_y, inputs=inputs, batch_size=batch_size
    )
    return acc
