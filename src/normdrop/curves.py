"""Figures over epochs, per dataset and model: learning curves and the loss SD per epoch.

- curves:  training loss (log scale) and validation accuracy per epoch;
- loss_sd: the within-epoch SD of mini-batch losses per epoch (where the instability is).

Each shows, per variant, the mean over the seeds that completed with a band from the lowest to
the highest seed; every diverged run is its own thin line that stops where it diverged (marked
x). LR milestones (the epochs after which the rate drops, `lr_milestones`) are dotted vertical
lines. Drawn by normdrop.plots' driver, in the styles of normdrop.figure_style.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import LogFormatter, MaxNLocator

from normdrop.figure_style import (
    BAND_ALPHA,
    FIG_SIZES,
    accuracy_axis,
    legend_below,
    new_figure,
    no_data,
    pair_title,
    variant_handles,
)
from normdrop.summary_data import completed, order_variants

MILESTONE_STYLE = dict(color="0.35", linestyle=":", linewidth=1.2)


def seed_band(frame: pd.DataFrame, column: str, scale: float = 1.0) -> pd.DataFrame:
    """Per epoch: mean, min and max over seeds of `column` (inf/NaN left out)."""
    values = pd.to_numeric(frame[column], errors="coerce").replace([np.inf, -np.inf], np.nan)
    data = pd.DataFrame({"epoch": frame["epoch"].to_numpy(), "v": values.to_numpy() * scale})
    return data.groupby("epoch")["v"].agg(["mean", "min", "max", "count"]).dropna()


def _epoch_axis(ax, milestones: Sequence[float]) -> None:
    """Whole-epoch ticks and the LR milestones as dotted vertical lines."""
    for m in milestones:
        ax.axvline(m, **MILESTONE_STYLE, zorder=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")


def _curve_panel(ax, epochs, runs, variants, styles, column, scale=1.0) -> bool:
    """Per variant: mean line and min-max band over the completed seeds; every diverged run
    as its own thin line ending in an x (where it diverged). True if any run diverged."""
    drew_div = False
    for v in variants:
        sub = epochs[epochs["variant"] == v]
        st = styles[v]
        done_seeds = runs.loc[(runs["variant"] == v) & completed(runs), "seed"]
        band = seed_band(sub[sub["seed"].isin(done_seeds)], column, scale)
        if not band.empty:
            ax.plot(band.index, band["mean"], color=st.color, linestyle=st.linestyle, lw=1.6)
            ax.fill_between(
                band.index, band["min"], band["max"], color=st.color, alpha=BAND_ALPHA, lw=0
            )
        for seed in runs.loc[(runs["variant"] == v) & ~completed(runs), "seed"]:
            run = sub[sub["seed"] == seed].sort_values("epoch")
            vals = pd.to_numeric(run[column], errors="coerce").to_numpy(float) * scale
            ok = np.isfinite(vals)
            if not ok.any():
                continue
            x, y = run["epoch"].to_numpy()[ok], vals[ok]
            ax.plot(x, y, color=st.color, linestyle=st.linestyle, lw=0.9, alpha=0.8)
            ax.plot(x[-1], y[-1], marker="x", markersize=9, markeredgewidth=2, color=st.color)
            drew_div = True
    return drew_div


class _PlainLogFormatter(LogFormatter):
    """Labels the ticks LogFormatter would label, but as 0.02 rather than 2e-02."""

    def __call__(self, x, pos=None):
        return f"{x:g}" if super().__call__(x, pos) else ""


def _plain_log_axis(ax) -> None:
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(_PlainLogFormatter(labelOnlyBase=False))
    ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))


def _extra_handles(milestones, diverged: bool, band: bool = True) -> list:
    handles = []
    if band:
        handles.append(Patch(color="0.5", alpha=BAND_ALPHA + 0.1, label="min–max over seeds"))
    if len(milestones):
        handles.append(Line2D([], [], **MILESTONE_STYLE, label="LR milestone (rate drops)"))
    if diverged:
        handles.append(
            Line2D(
                [],
                [],
                color="0.2",
                marker="x",
                lw=0.9,
                markersize=8,
                label="diverged run (ends at x)",
            )
        )
    return handles


def plot_curves(epochs, runs, dataset, model, styles, milestones) -> Figure:
    """Training loss (log) and validation accuracy per epoch, one line per variant."""
    fig = new_figure(FIG_SIZES["curves"])
    ax_loss, ax_acc = fig.subplots(1, 2)
    variants = order_variants(runs)
    div = _curve_panel(ax_loss, epochs, runs, variants, styles, "train_loss_mean")
    div |= _curve_panel(ax_acc, epochs, runs, variants, styles, "val_acc", 100.0)
    for ax in (ax_loss, ax_acc):
        _epoch_axis(ax, milestones)
        if not ax.lines:
            no_data(ax)
    if ax_loss.lines:
        _plain_log_axis(ax_loss)
    ax_loss.set_ylabel("training loss, epoch mean (log scale)")
    ax_loss.set_title("Training loss")
    ax_acc.set_ylabel("validation accuracy (%)")
    ax_acc.set_title("Validation accuracy")
    accuracy_axis(ax_acc)
    fig.suptitle(pair_title(dataset, model, "learning curves (mean over seeds)"))
    legend_below(fig, variant_handles(variants, styles) + _extra_handles(milestones, div))
    return fig


def plot_loss_sd(epochs, runs, dataset, model, styles, milestones) -> Figure:
    """Within-epoch SD of the mini-batch losses, per epoch and variant."""
    fig = new_figure(FIG_SIZES["loss_sd"])
    ax = fig.subplots()
    variants = order_variants(runs)
    div = _curve_panel(ax, epochs, runs, variants, styles, "train_loss_sd")
    _epoch_axis(ax, milestones)
    if ax.lines:
        _plain_log_axis(ax)
    else:
        no_data(ax)
    ax.set_ylabel("SD of mini-batch losses in the epoch (log scale)")
    fig.suptitle(pair_title(dataset, model, "training-loss SD per epoch"))
    legend_below(fig, variant_handles(variants, styles) + _extra_handles(milestones, div), 3)
    return fig


def lr_milestones(epochs: pd.DataFrame) -> list[int]:
    """Epochs at which the logged learning rate drops (the scheduler's milestones)."""
    found: set[int] = set()
    for _, run in epochs.groupby(["dataset", "model", "variant", "seed"], sort=False):
        run = run.sort_values("epoch")
        lr = run["lr"].to_numpy(float)
        drops = np.flatnonzero(lr[1:] < lr[:-1] * (1 - 1e-9))
        # The rate drops *after* epoch e (1-based) when epoch e+1 uses the smaller one.
        found.update(int(e) for e in run["epoch"].to_numpy()[drops])
    return sorted(found)
