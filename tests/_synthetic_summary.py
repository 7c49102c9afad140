"""Synthetic aggregate outputs (runs/epochs/lr_search parquet) for the report-module tests.

The numbers follow the paper's story loosely (BN: lower loss SD, faster convergence; dropout:
smaller generalization gap) so that the figures look like real ones, but nothing asserts on
them except through `runs_from_values`, where a test sets every per-seed value itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

VARIANTS = {  # name: (norm, dropout)
    "none": ("none", False),
    "bn": ("batch", False),
    "dropout": ("none", True),
    "bn_dropout": ("batch", True),
}
DROPOUT_RATE = {"mlp": 0.5, "cnn": 0.3, "resnet20": 0.3}
BASE_ACC = {"mnist": 0.975, "cifar10": 0.80, "cifar100": 0.50, "synthetic": 0.9}
# Per variant: (accuracy shift, loss-SD factor, convergence factor, gap factor)
EFFECTS = {
    "none": (0.0, 1.0, 1.0, 1.0),
    "bn": (0.04, 0.3, 0.55, 0.9),
    "dropout": (0.02, 0.85, 0.9, 0.5),
    "bn_dropout": (0.035, 0.35, 0.6, 0.55),
    "gn_dropout": (0.025, 0.5, 0.7, 0.6),
}
PARAMS = {"mlp": 1_195_010, "cnn": 2_480_000, "resnet20": 1_091_000}


def _row_meta(dataset, model, variant, norm, dropout):
    return dict(
        dataset=dataset,
        model=model,
        variant=variant,
        norm=norm,
        dropout=dropout,
        dropout_rate=DROPOUT_RATE.get(model, 0.3) if dropout else 0.0,
    )


def make_summary(
    summary_dir: Path,
    datasets=("mnist", "cifar10"),
    models=("mlp", "resnet20"),
    seeds=(42, 43, 44),
    epochs: int = 5,
    extra_variants: dict[str, tuple[str, bool]] | None = None,
    diverged: tuple[tuple[str, str, str, int], ...] = (),
    milestones: tuple[int, ...] = (3, 4),
) -> dict[str, pd.DataFrame]:
    """Write runs.parquet, epochs.parquet, lr_search.parquet under `summary_dir`.

    `diverged`: (dataset, model, variant, seed) runs that diverge halfway through.
    """
    rng = np.random.default_rng(0)
    variants = dict(VARIANTS, **(extra_variants or {}))
    runs, epoch_rows, lr_rows = [], [], []
    candidates = (1e-4, 3e-4, 1e-3, 3e-3)
    for dataset in datasets:
        for model in models:
            for variant, (norm, dropout) in variants.items():
                acc_shift, sd_factor, conv_factor, gap_factor = EFFECTS.get(
                    variant, (0.01, 0.6, 0.8, 0.7)
                )
                best_lr = 1e-3 if norm == "batch" else 3e-4
                for lr in candidates:
                    diverges = lr == 3e-3 and norm == "none"
                    distance = abs(np.log10(lr) - np.log10(best_lr))
                    lr_rows.append(
                        dict(
                            dataset=dataset,
                            model=model,
                            variant=variant,
                            lr=lr,
                            status="diverged" if diverges else "completed",
                            best_val_acc=np.nan
                            if diverges
                            else min(0.995, BASE_ACC[dataset] + acc_shift) - 0.02 * distance,
                            selected=lr == best_lr,
                        )
                    )
                for seed in seeds:
                    is_div = (dataset, model, variant, seed) in diverged
                    final = min(0.995, BASE_ACC[dataset] + acc_shift) + rng.normal(0, 0.002)
                    conv_target = max(1.0, conv_factor * 0.65 * epochs * rng.uniform(0.85, 1.15))
                    loss_sd_level = 0.045 * sd_factor
                    gap = 8.0 * gap_factor + rng.normal(0, 0.3)
                    curve_acc, curve_loss, curve_sd = [], [], []
                    div_epoch = max(2, epochs // 2)
                    for e in range(1, epochs + 1):
                        lr_now = best_lr * 0.1 ** sum(e > m for m in milestones)
                        frac = 1 - np.exp(-3.0 * e / conv_target)
                        acc = final * (0.6 + 0.4 * frac / (1 - np.exp(-3.0 * epochs / conv_target)))
                        loss = 2.3 * np.exp(-2.5 * e / conv_target) + (1 - final) * 0.8
                        sd = loss_sd_level * (1.3 - 0.5 * e / epochs) * rng.uniform(0.9, 1.1)
                        if is_div and e > div_epoch:
                            break
                        if is_div and e == div_epoch:
                            loss, sd, acc = np.inf, np.nan, 0.1
                        curve_acc.append(acc)
                        curve_loss.append(loss)
                        curve_sd.append(sd)
                        epoch_rows.append(
                            dict(
                                dataset=dataset,
                                model=model,
                                variant=variant,
                                seed=seed,
                                epoch=e,
                                lr=lr_now,
                                train_loss_mean=loss,
                                train_loss_sd=sd,
                                train_acc=min(1.0, acc + 0.02),
                                val_loss=loss * 1.1,
                                val_acc=acc,
                                test_loss=loss * 1.12,
                                test_acc=acc - 0.003,
                                wall_time_s=10.0,
                            )
                        )
                    nan = np.nan
                    runs.append(
                        dict(
                            **_row_meta(dataset, model, variant, norm, dropout),
                            seed=seed,
                            lr=best_lr,
                            param_count=PARAMS.get(model, 100_000)
                            + (2_000 if norm == "batch" else 0)
                            + (1_000 if norm == "group" else 0),
                            status="diverged" if is_div else "completed",
                            diverged_epoch=float(div_epoch) if is_div else nan,
                            epochs=epochs,
                            loss_sd=nan if is_div else float(np.mean(curve_sd)),
                            loss_sd_late=nan if is_div else float(np.mean(curve_sd[1:])),
                            convergence_epoch=nan
                            if is_div
                            else float(min(epochs, round(conv_target + rng.integers(0, 2)))),
                            final_test_acc=nan if is_div else final - 0.003,
                            final_val_acc=nan if is_div else final,
                            final_train_acc=nan if is_div else final - 0.003 + gap / 100,
                            gen_gap=nan if is_div else gap,
                            es_epoch=nan if is_div else float(epochs),
                            es_test_acc=nan if is_div else final - 0.003,
                            wall_time_s=100.0,
                            git_revision="abc1234",
                            device="cpu",
                        )
                    )
    frames = {
        "runs": pd.DataFrame(runs),
        "epochs": pd.DataFrame(epoch_rows),
        "lr_search": pd.DataFrame(lr_rows),
    }
    summary_dir = Path(summary_dir)
    summary_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        frame.to_parquet(summary_dir / f"{name}.parquet", index=False)
    return frames


def runs_from_values(values: dict[str, dict[str, list[float]]], dataset="cifar10", model="cnn"):
    """A runs table whose per-seed metrics are given: {variant: {column: [v_seed0, ...]}}.

    Metrics not given get 0.5 (accuracies) or 1.0; one seed per list entry; a NaN in
    final_test_acc marks that seed as diverged.
    """
    rows = []
    for variant, cols in values.items():
        norm, dropout = VARIANTS[variant]
        n = len(next(iter(cols.values())))
        for i in range(n):
            row = dict(
                **_row_meta(dataset, model, variant, norm, dropout),
                seed=42 + i,
                lr=1e-3,
                param_count=1000,
                status="completed",
                diverged_epoch=np.nan,
                epochs=10,
                loss_sd=0.03,
                loss_sd_late=0.03,
                convergence_epoch=5.0,
                final_test_acc=0.8,
                final_val_acc=0.8,
                final_train_acc=0.9,
                gen_gap=10.0,
                es_epoch=9.0,
                es_test_acc=0.8,
                wall_time_s=1.0,
                git_revision="abc",
                device="cpu",
            )
            for col, vals in cols.items():
                row[col] = vals[i]
            if not np.isfinite(row["final_test_acc"]):
                row.update(status="diverged", diverged_epoch=3.0)
                for col in (
                    "loss_sd",
                    "loss_sd_late",
                    "convergence_epoch",
                    "gen_gap",
                    "es_epoch",
                    "es_test_acc",
                ):
                    row[col] = np.nan
            rows.append(row)
    return pd.DataFrame(rows)
