"""Figures from the aggregated summary, as PNG (150 dpi) and PDF.

Per dataset and model, under `{out}/{dataset}/{model}/`:
- curves:      training loss (log scale) and validation accuracy per epoch;
- loss_sd:     the within-epoch SD of mini-batch losses per epoch (where the instability is);
- metrics:     bars of loss SD, convergence epoch, final test accuracy, generalization gap;
- interaction: the H3 interaction plot (BN off/on x dropout off/on, test accuracy);
- lr_search:   validation accuracy of every learning-rate candidate, the selected one marked.
Plus `{out}/overview_test_acc`: final test accuracy per variant, datasets x models.

Curves show the mean over seeds with a band from the lowest to the highest seed; bars and points
show mean ± SD over seeds with single seeds as dots. Diverged runs: their curves stop where they
diverged (marked x); they are left out of bars and points, which say "diverged" where no seed
finished. LR milestones (the epochs where the rate drops) are dotted vertical lines.

Colours are fixed per variant in every figure: the paper's four configurations (identified by
their (norm, dropout) pair) always get the same four colours; other variants get further colours
in their sort order. Every figure's size is fixed (FIG_SIZES, overview_size), so the PNG's pixel
size is known in advance. Legends sit below the axes, never over data.

CLI: python -m normdrop.plots --summary-dir D --out-dir F [--milestones 50 75]
                              [--datasets ...] [--models ...]
Without --milestones the epochs where the logged learning rate drops are used.
Output paths: `figure_paths(F, datasets, models)`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import LogFormatter, MaxNLocator

from normdrop.storage import atomic_write
from normdrop.tables import (
    PAPER_VARIANTS,
    SummaryError,
    add_selection_args,
    completed,
    dataset_name,
    describe_variant,
    metric_values,
    model_name,
    order_variants,
    paper_variants,
    read_summary,
    select_pairs,
    variant_table,
)

DPI = 150
FORMATS = ("png", "pdf")
FIG_SIZES = {  # inches (width, height); a PNG is round(width * DPI) x round(height * DPI) px
    "curves": (11.0, 5.0),
    "loss_sd": (7.5, 5.0),
    "metrics": (13.0, 5.0),
    "interaction": (6.5, 5.0),
    "lr_search": (7.5, 5.0),
}
FIGURE_KINDS = tuple(FIG_SIZES)
OVERVIEW = "overview_test_acc"

# Okabe-Ito colours (readable with colour-vision deficiency) for the paper's four variants.
PAPER_COLORS = {"none": "#4D4D4D", "bn": "#0072B2", "dropout": "#E69F00", "bn_dropout": "#009E73"}
PAPER_MARKERS = {"none": "o", "bn": "s", "dropout": "^", "bn_dropout": "D"}
# GroupNorm and LayerNorm without dropout (the batch-size study) get fixed colours too.
NORM_COLORS = {"group": "#CC79A7", "layer": "#D55E00"}
NORM_MARKERS = {"group": "v", "layer": "P"}
EXTRA_COLORS = ("#56B4E9", "#8C564B", "#9467BD", "#BCBD22", "#17BECF", "#F0E442", "#7F7F7F")
EXTRA_MARKERS = ("X", "*", "h", "<", ">", "p", "d")

RC = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
SAVE_METADATA = {  # no timestamps or versions: re-running gives byte-identical files
    "png": {"Software": None},
    "pdf": {"CreationDate": None, "Producer": None, "Creator": None},
}
BAND_ALPHA = 0.22
MILESTONE_STYLE = dict(color="0.35", linestyle=":", linewidth=1.2)


def overview_size(n_datasets: int, n_models: int) -> tuple[float, float]:
    """Inches of the overview grid: 3.4 x 2.9 per panel plus room for labels and title."""
    return (1.2 + 3.4 * max(n_models, 1), 1.6 + 2.9 * max(n_datasets, 1))


def png_size_px(kind: str, n_datasets: int = 1, n_models: int = 1) -> tuple[int, int]:
    """(width, height) in pixels of a figure's PNG."""
    w, h = overview_size(n_datasets, n_models) if kind == OVERVIEW else FIG_SIZES[kind]
    return round(w * DPI), round(h * DPI)


def figure_paths(out_dir: Path | str, datasets: Sequence[str], models: Sequence[str]):
    """Every file `write_figures` writes, for Snakemake's output declaration."""
    out = Path(out_dir)
    paths = [out / f"{OVERVIEW}.{fmt}" for fmt in FORMATS]
    for d in datasets:
        for m in models:
            paths += [out / d / m / f"{kind}.{fmt}" for kind in FIGURE_KINDS for fmt in FORMATS]
    return paths


# --------------------------------------------------------------------------------------------
# Variant styles


@dataclass(frozen=True)
class Style:
    color: str
    marker: str
    linestyle: str
    label: str


def variant_styles(runs: pd.DataFrame) -> dict[str, Style]:
    """One fixed style per variant name, from every variant in `runs` (all datasets)."""
    styles: dict[str, Style] = {}
    used: set[str] = set()
    extra = 0
    for variant, norm, dropout, key in variant_table(runs):
        label = f"{variant} ({describe_variant(norm, dropout)})"
        if key is not None and key not in used:
            used.add(key)
            styles[variant] = Style(PAPER_COLORS[key], PAPER_MARKERS[key], "-", label)
        elif norm in NORM_COLORS and not dropout and norm not in used:
            used.add(norm)
            styles[variant] = Style(NORM_COLORS[norm], NORM_MARKERS[norm], "-.", label)
        else:
            color = EXTRA_COLORS[extra % len(EXTRA_COLORS)]
            marker = EXTRA_MARKERS[extra % len(EXTRA_MARKERS)]
            styles[variant] = Style(color, marker, "--", label)
            extra += 1
    return styles


# --------------------------------------------------------------------------------------------
# Helpers


def _new_figure(size: tuple[float, float]) -> Figure:
    # A bare Figure (no pyplot): no global figure registry, no GUI backend needed.
    return Figure(figsize=size, dpi=DPI, layout="constrained")


def save_figure(fig: Figure, stem: Path) -> list[Path]:
    """Write stem.png and stem.pdf atomically."""
    paths = []
    for fmt in FORMATS:
        path = stem.with_name(f"{stem.name}.{fmt}")
        atomic_write(
            path,
            lambda f, fmt=fmt: fig.savefig(f, format=fmt, dpi=DPI, metadata=SAVE_METADATA[fmt]),
        )
        paths.append(path)
        # The first save laid the figure out; keep that layout for the next format (saves ~30%).
        fig.set_layout_engine("none")
    return paths


def seed_band(frame: pd.DataFrame, column: str, scale: float = 1.0) -> pd.DataFrame:
    """Per epoch: mean, min and max over seeds of `column` (inf/NaN left out)."""
    values = pd.to_numeric(frame[column], errors="coerce").replace([np.inf, -np.inf], np.nan)
    data = pd.DataFrame({"epoch": frame["epoch"].to_numpy(), "v": values.to_numpy() * scale})
    return data.groupby("epoch")["v"].agg(["mean", "min", "max", "count"]).dropna()


def _legend_below(fig: Figure, handles: list, ncols: int | None = None) -> None:
    if handles:
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncols=ncols or min(len(handles), 4),
            frameon=False,
        )


def _no_data(ax, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _no_bar(ax, x: float, text: str, y: float) -> None:
    """Mark a variant without a finite value ("diverged", "not run") where its bar would stand;
    `y` is in axes fraction so the label sits at the bottom whatever the data range."""
    ax.text(x, y, text, rotation=90, ha="center", va="bottom",
            transform=ax.get_xaxis_transform(), color="0.3")  # fmt: skip


def _epoch_axis(ax, milestones: Sequence[float]) -> None:
    """Whole-epoch ticks and the LR milestones as dotted vertical lines."""
    for m in milestones:
        ax.axvline(m, **MILESTONE_STYLE, zorder=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")


def _variant_handles(variants: Sequence[str], styles: dict[str, Style], marker=False) -> list:
    return [
        Line2D(
            [],
            [],
            color=styles[v].color,
            linestyle=styles[v].linestyle,
            marker=styles[v].marker if marker else None,
            linewidth=1.8,
            label=styles[v].label,
        )
        for v in variants
    ]


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


def _title(dataset: str, model: str, what: str) -> str:
    return f"{dataset_name(dataset)}, {model_name(model)}: {what}"


# --------------------------------------------------------------------------------------------
# Figures per dataset and model


def plot_curves(epochs, runs, dataset, model, styles, milestones) -> Figure:
    """Training loss (log) and validation accuracy per epoch, one line per variant."""
    fig = _new_figure(FIG_SIZES["curves"])
    ax_loss, ax_acc = fig.subplots(1, 2)
    variants = order_variants(runs)
    div = _curve_panel(ax_loss, epochs, runs, variants, styles, "train_loss_mean")
    div |= _curve_panel(ax_acc, epochs, runs, variants, styles, "val_acc", 100.0)
    for ax in (ax_loss, ax_acc):
        _epoch_axis(ax, milestones)
        if not ax.lines:
            _no_data(ax)
    if ax_loss.lines:
        _plain_log_axis(ax_loss)
    ax_loss.set_ylabel("training loss, epoch mean (log scale)")
    ax_loss.set_title("Training loss")
    ax_acc.set_ylabel("validation accuracy (%)")
    ax_acc.set_title("Validation accuracy")
    fig.suptitle(_title(dataset, model, "learning curves (mean over seeds)"))
    _legend_below(fig, _variant_handles(variants, styles) + _extra_handles(milestones, div))
    return fig


def plot_loss_sd(epochs, runs, dataset, model, styles, milestones) -> Figure:
    """Within-epoch SD of the mini-batch losses, per epoch and variant."""
    fig = _new_figure(FIG_SIZES["loss_sd"])
    ax = fig.subplots()
    variants = order_variants(runs)
    div = _curve_panel(ax, epochs, runs, variants, styles, "train_loss_sd")
    _epoch_axis(ax, milestones)
    if ax.lines:
        _plain_log_axis(ax)
    else:
        _no_data(ax)
    ax.set_ylabel("SD of mini-batch losses in the epoch (log scale)")
    fig.suptitle(_title(dataset, model, "training-loss SD per epoch"))
    _legend_below(fig, _variant_handles(variants, styles) + _extra_handles(milestones, div), 3)
    return fig


METRIC_PANELS = (  # (runs column, panel title, y label, origin is meaningful)
    ("loss_sd", "Training stability", "loss SD (mean within-epoch SD)", True),
    ("convergence_epoch", "Convergence speed", "epoch reaching 95% of final val. acc.", True),
    ("final_test_acc", "Final test accuracy", "test accuracy (%), axis zoomed", False),
    ("gen_gap", "Generalization gap", "train − test accuracy (points)", True),
)


def _bars(ax, runs, variants, styles, column, zoom: bool) -> None:
    xs = np.arange(len(variants))
    lows, highs = [], []
    for x, v in zip(xs, variants, strict=True):
        sub = runs[runs["variant"] == v]
        vals = metric_values(sub, column)
        st = styles[v]
        if len(vals) == 0:
            _no_bar(ax, x, "diverged" if len(sub) else "not run", 0.02)
            continue
        mean = vals.mean()
        sd = vals.std(ddof=1) if len(vals) > 1 else 0.0
        ax.bar(x, mean, width=0.7, color=st.color, alpha=0.85, edgecolor=st.color)
        ax.errorbar(x, mean, yerr=sd, color="black", capsize=4, linewidth=1.2)
        jitter = np.linspace(-0.15, 0.15, len(vals)) if len(vals) > 1 else np.zeros(1)
        ax.scatter(
            x + jitter, vals, s=12, color="white", edgecolor="black", linewidth=0.7, zorder=3
        )
        lows += [mean - sd, vals.min()]
        highs += [mean + sd, vals.max()]
    ax.set_xticks(xs, variants, rotation=30, ha="right")
    if zoom and lows:
        lo, hi = min(lows), max(highs)
        pad = max(0.15 * (hi - lo), 0.5)  # at least half a percentage point of headroom
        ax.set_ylim(max(0.0, lo - pad), min(100.0, hi + pad))
    if min(lows, default=0) < 0:
        ax.axhline(0, color="black", linewidth=0.8)


def plot_metrics(runs, dataset, model, styles) -> Figure:
    """The four metrics per variant: mean ± SD over seeds, seeds as dots."""
    fig = _new_figure(FIG_SIZES["metrics"])
    axes = fig.subplots(1, len(METRIC_PANELS))
    variants = order_variants(runs)
    for ax, (column, title, ylabel, origin) in zip(axes, METRIC_PANELS, strict=True):
        _bars(ax, runs, variants, styles, column, zoom=not origin)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(axis="x", visible=False)
    fig.suptitle(
        _title(dataset, model, "metrics per variant (bars: mean ± SD over seeds; dots: seeds)")
    )
    _legend_below(fig, _variant_handles(variants, styles), min(len(variants), 5))
    return fig


def plot_interaction(runs, dataset, model, styles) -> Figure:
    """H3: test accuracy at BN off/on, one line for dropout off and one for dropout on."""
    fig = _new_figure(FIG_SIZES["interaction"])
    ax = fig.subplots()
    names = paper_variants(runs)
    handles = []
    for dropout, keys, ls, dx in (
        (False, ("none", "bn"), "-", -0.03),
        (True, ("dropout", "bn_dropout"), "--", 0.03),
    ):
        xs, means, sds = [], [], []
        for x, key in enumerate(keys):
            variant = names.get(key)
            vals = (
                metric_values(runs[runs["variant"] == variant], "final_test_acc")
                if variant
                else np.array([])
            )
            if len(vals) == 0:
                reason = "all seeds diverged" if variant else "not run"
                ax.annotate(
                    f"{key}: {reason}",
                    (x + dx, 0.04 + 0.06 * dropout),
                    xycoords=("data", "axes fraction"),
                    ha="center",
                    color="0.3",
                )
                continue
            mean, sd = vals.mean(), (vals.std(ddof=1) if len(vals) > 1 else 0.0)
            xs.append(x + dx)
            means.append(mean)
            sds.append(sd)
            st = styles[variant]
            ax.errorbar(x + dx, mean, yerr=sd, color="black", capsize=5, linewidth=1.2, zorder=2)
            ax.plot(
                x + dx,
                mean,
                marker=st.marker,
                markersize=10,
                color=st.color,
                markeredgecolor="black",
                linestyle="",
                zorder=3,
            )
            # Values outside the lines' span: left of "BN off", right of "BN on".
            ax.annotate(
                f"{mean:.2f}",
                (x + dx, mean),
                xytext=(12 if x else -12, 0),
                textcoords="offset points",
                ha="left" if x else "right",
                va="center",
                fontsize=9,
            )
        ax.plot(xs, means, color="black", linestyle=ls, linewidth=1.5, zorder=1)
        handles.append(
            Line2D(
                [], [], color="black", linestyle=ls, label=f"dropout {'on' if dropout else 'off'}"
            )
        )
    present = [names[k] for k in PAPER_VARIANTS if k in names]
    handles += [
        Line2D(
            [],
            [],
            color=styles[v].color,
            marker=styles[v].marker,
            linestyle="",
            markeredgecolor="black",
            markersize=8,
            label=styles[v].label,
        )
        for v in present
    ]
    ax.set_xticks([0, 1], ["BN off", "BN on"])
    ax.set_xlim(-0.5, 1.5)
    ax.set_ylabel("final test accuracy (%), mean ± SD over seeds")
    ax.grid(axis="x", visible=False)
    if not present:
        _no_data(ax, "none of the paper's four variants was run")
    fig.suptitle(_title(dataset, model, "BN × dropout interaction (H3)"))
    _legend_below(fig, handles, 3)
    return fig


def plot_lr_search(lr_search, dataset, model, styles, variants) -> Figure:
    """Best validation accuracy of each learning-rate candidate; the selected one ringed."""
    fig = _new_figure(FIG_SIZES["lr_search"])
    ax = fig.subplots()
    any_div = False
    accs = lr_search.loc[lr_search["status"] == "completed", "best_val_acc"] * 100
    accs = accs[np.isfinite(accs)]
    for i, v in enumerate(variants):
        sub = lr_search[lr_search["variant"] == v].sort_values("lr")
        # Nudge each variant a little along the log axis so that equal results stay visible.
        dodge = 1.05 ** (i - (len(variants) - 1) / 2)
        if sub.empty or v not in styles:
            continue
        st = styles[v]
        ok = sub[(sub["status"] == "completed") & np.isfinite(sub["best_val_acc"])]
        ax.plot(
            ok["lr"] * dodge,
            ok["best_val_acc"] * 100,
            color=st.color,
            linestyle=st.linestyle,
            marker=st.marker,
            markersize=6,
            linewidth=1.6,
        )
        sel = ok[ok["selected"]]
        ax.scatter(
            sel["lr"] * dodge,
            sel["best_val_acc"] * 100,
            s=260,
            facecolor="none",
            edgecolor=st.color,
            linewidth=2.2,
            zorder=4,
        )
        div = sub[sub["status"] != "completed"]
        if len(div):
            any_div = True
            # In a strip below the data.
            ax.plot(
                div["lr"] * dodge,
                np.full(len(div), 0.04),
                marker="x",
                markersize=9,
                markeredgewidth=2,
                linestyle="",
                color=st.color,
                transform=ax.get_xaxis_transform(),
            )
    if len(accs):
        lo, hi = accs.min(), accs.max()
        span = max(hi - lo, 1.0)
        ax.set_ylim(lo - 0.15 * span, hi + 0.08 * span)  # the bottom strip holds diverged x's
    lrs = np.sort(lr_search["lr"].unique())
    if len(lrs):
        ax.set_xscale("log")
        ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs])
        ax.minorticks_off()
        ax.set_xlim(lrs[0] / 1.6, lrs[-1] * 1.6)
    else:
        _no_data(ax)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("best validation accuracy in the search (%)")
    fig.suptitle(_title(dataset, model, "learning-rate search"))
    shown = [v for v in variants if v in set(lr_search["variant"])]
    handles = _variant_handles(shown, styles, marker=True)
    handles.append(
        Line2D(
            [],
            [],
            marker="o",
            markersize=12,
            markerfacecolor="none",
            markeredgecolor="black",
            markeredgewidth=2,
            linestyle="",
            label="selected rate",
        )
    )
    if any_div:
        handles.append(
            Line2D(
                [],
                [],
                marker="x",
                markersize=8,
                markeredgewidth=2,
                color="black",
                linestyle="",
                label="diverged candidate",
            )
        )
    _legend_below(fig, handles, 3)
    return fig


def plot_overview(runs, pairs, styles) -> Figure:
    """Final test accuracy per variant: rows = datasets, columns = models."""
    datasets = list(dict.fromkeys(d for d, _ in pairs))  # in the requested order
    models = list(dict.fromkeys(m for _, m in pairs))
    fig = _new_figure(overview_size(len(datasets), len(models)))
    axes = fig.subplots(len(datasets), len(models), squeeze=False, sharex=True)
    variants = order_variants(runs)
    xs = np.arange(len(variants))
    for r, d in enumerate(datasets):
        for c, m in enumerate(models):
            ax = axes[r][c]
            sub = runs[(runs["dataset"] == d) & (runs["model"] == m)]
            if sub.empty:
                _no_data(ax, "no runs")
            for x, v in zip(xs, variants, strict=True):
                vr = sub[sub["variant"] == v]
                vals = metric_values(vr, "final_test_acc")
                st = styles[v]
                if len(vals) == 0:
                    if len(vr):
                        _no_bar(ax, x, "diverged", 0.05)
                    continue
                sd = vals.std(ddof=1) if len(vals) > 1 else 0.0
                ax.errorbar(
                    x,
                    vals.mean(),
                    yerr=sd,
                    marker=st.marker,
                    markersize=7,
                    color=st.color,
                    markeredgecolor="black",
                    capsize=4,
                    linewidth=1.5,
                )
                ax.scatter(np.full(len(vals), x + 0.22), vals, s=9, color=st.color, alpha=0.8)
            if r == 0:
                ax.set_title(model_name(m))
            if c == 0:
                ax.set_ylabel(f"{dataset_name(d)}\ntest accuracy (%)")
            ax.set_xlim(-0.6, len(variants) - 0.4)
            ax.grid(axis="x", visible=False)
    for ax in axes[-1]:
        ax.set_xticks(xs, variants, rotation=35, ha="right")
    fig.suptitle("Final test accuracy: mean ± SD over seeds (small dots: single seeds)")
    return fig


# --------------------------------------------------------------------------------------------
# Driver


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


def write_figures(
    summary_dir: Path | str,
    out_dir: Path | str,
    milestones: Sequence[float] | None = None,
    datasets: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
) -> list[Path]:
    runs = read_summary(summary_dir, "runs")
    epochs = read_summary(summary_dir, "epochs")
    lr_search = read_summary(summary_dir, "lr_search")
    pairs = select_pairs(runs, datasets, models, source=str(Path(summary_dir) / "runs.parquet"))
    styles = variant_styles(runs)
    out = Path(out_dir)
    written: list[Path] = []
    with matplotlib.rc_context(RC):
        for d, m in pairs:
            r = runs[(runs["dataset"] == d) & (runs["model"] == m)]
            e = epochs[(epochs["dataset"] == d) & (epochs["model"] == m)]
            lr = lr_search[(lr_search["dataset"] == d) & (lr_search["model"] == m)]
            ms = lr_milestones(e) if milestones is None else list(milestones)
            base = out / d / m
            figures = {
                "curves": plot_curves(e, r, d, m, styles, ms),
                "loss_sd": plot_loss_sd(e, r, d, m, styles, ms),
                "metrics": plot_metrics(r, d, m, styles),
                "interaction": plot_interaction(r, d, m, styles),
                "lr_search": plot_lr_search(lr, d, m, styles, order_variants(runs)),
            }
            for kind, fig in figures.items():
                written += save_figure(fig, base / kind)
        selected = runs[
            runs.set_index(["dataset", "model"]).index.isin(pd.MultiIndex.from_tuples(pairs))
        ]
        written += save_figure(plot_overview(selected, pairs, styles), out / OVERVIEW)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Draw the study's figures (PNG and PDF).")
    add_selection_args(parser)
    parser.add_argument(
        "--milestones",
        nargs="*",
        type=float,
        default=None,
        help="epochs after which the learning rate drops (default: read from epochs.parquet)",
    )
    args = parser.parse_args(argv)
    try:
        paths = write_figures(
            args.summary_dir, args.out_dir, args.milestones, args.datasets, args.models
        )
    except SummaryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} figure files under {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
