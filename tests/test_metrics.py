import math

import pandas as pd
import pytest

from normdrop.metrics import (
    convergence_epoch,
    early_stopping,
    generalization_gap,
    loss_sd,
    loss_sd_late,
    run_metrics,
)


def test_loss_sd_late_leaves_out_the_first_epoch():
    # An exploding first epoch dominates the paper's loss SD but not the late form.
    assert loss_sd([15.3, 0.2, 0.1]) == pytest.approx(5.2)
    assert loss_sd_late([15.3, 0.2, 0.1]) == pytest.approx(0.15)
    assert math.isnan(loss_sd_late([0.3]))  # one epoch: nothing left to average


def test_loss_sd_is_the_mean_of_per_epoch_sds():
    assert loss_sd([0.1, 0.2, 0.3]) == pytest.approx(0.2)
    assert math.isnan(loss_sd([0.1, float("nan")]))  # a diverged epoch has no meaningful SD
    assert math.isnan(loss_sd([]))


def test_convergence_epoch_is_first_epoch_reaching_95_percent_of_final():
    # final 0.80 -> threshold 0.76: epoch 3 (0.77) is the first at or above it (1-based).
    assert convergence_epoch([0.50, 0.70, 0.77, 0.75, 0.80]) == 3
    assert convergence_epoch([0.50, 0.76, 0.80]) == 2  # exactly 95% counts
    assert convergence_epoch([0.90, 0.10, 0.80]) == 1  # early spike counts: "first epoch"
    assert convergence_epoch([0.1, 0.2, 0.3], fraction=1.0) == 3


def test_convergence_when_accuracy_never_reaches_or_run_diverged():
    # Only the final epoch itself reaches 95% of the final accuracy.
    assert convergence_epoch([0.1, 0.2, 0.3, 1.0]) == 4
    # A diverged run has no finite final accuracy: undefined, not epoch 1.
    assert math.isnan(convergence_epoch([0.3, 0.5, float("nan")]))
    assert math.isnan(convergence_epoch([]))


def test_early_stopping_takes_the_best_validation_epoch():
    assert early_stopping([0.5, 0.9, 0.9, 0.7], [0.4, 0.85, 0.8, 0.6]) == (2, 0.85)
    assert early_stopping([0.5, float("nan")], [0.4, 0.1]) == (1, 0.4)


def test_generalization_gap_in_points():
    assert generalization_gap(0.99, 0.80) == pytest.approx(19.0)
    assert generalization_gap(0.70, 0.75) == pytest.approx(-5.0)


def test_run_metrics_of_a_completed_and_a_diverged_run():
    epochs = pd.DataFrame(
        {
            "train_loss_sd": [0.2, 0.1, 0.3],
            "val_acc": [0.5, 0.8, 0.78],
            "test_acc": [0.45, 0.79, 0.75],
        }
    )
    m = run_metrics(epochs, train_eval_acc=0.95, status="completed")
    assert m["loss_sd"] == pytest.approx(0.2)
    assert m["loss_sd_late"] == pytest.approx(0.2)  # mean of epochs 2 and 3: (0.1 + 0.3) / 2
    assert m["convergence_epoch"] == 2
    assert m["final_test_acc"] == 0.75
    assert m["gen_gap"] == pytest.approx(20.0)
    assert (m["es_epoch"], m["es_test_acc"]) == (2, 0.79)
    nan_loss = epochs.assign(train_loss_sd=[0.2, float("nan"), float("nan")])
    d = run_metrics(nan_loss, train_eval_acc=float("nan"), status="diverged")
    assert d.pop("learned") is False and all(math.isnan(v) for v in d.values())


def test_a_run_that_stays_at_chance_has_no_convergence_epoch():
    # 10 classes: chance 0.10, margin up to 0.15. Without the number of classes, the flat run
    # would "converge" at epoch 1, faster than any run that learned.
    flat = [0.10, 0.11, 0.09, 0.10]
    assert convergence_epoch(flat) == 1
    assert math.isnan(convergence_epoch(flat, num_classes=10))
    assert math.isnan(convergence_epoch([0.1, 0.14, 0.15], num_classes=10))  # at the margin
    assert convergence_epoch([0.1, 0.155, 0.16], num_classes=10) == 2  # just beyond it
    # 100 classes: chance 0.01, so 0.10 has learned something.
    assert convergence_epoch(flat, num_classes=100) == 1
    epochs = pd.DataFrame(
        {"train_loss_sd": [0.1] * 4, "val_acc": flat, "test_acc": [0.1, 0.1, 0.1, 0.1]}
    )
    m = run_metrics(epochs, 0.1, "completed", num_classes=10)
    assert m["learned"] is False and math.isnan(m["convergence_epoch"])
    assert m["final_test_acc"] == 0.1  # the other metrics stay: the run completed
    assert run_metrics(epochs, 0.1, "completed")["learned"] is True  # classes unknown
