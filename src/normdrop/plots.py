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

CLI: python -m normdrop.plots --summary-dir D --out-dir F [--lr-milestones 50 75]
                              [--datasets ...] [--models ...]
Without --lr-milestones the epochs where the logged learning rate drops are used.
Output paths: `catalog.figure_paths(F, datasets, models)`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from normdrop.catalog import (
    METRICS,
    OVERVIEW,
    PAIR_FIGURES,
    PLOTTED_METRICS,
    SUMMARY_FILES,
    dataset_name,
    model_name,
    percent,
)
from normdrop.curves import lr_milestones, plot_curves, plot_loss_sd
from normdrop.figure_style import (
    DPI,
    FIG_SIZES,
    RC,
    Style,
    accuracy_axis,
    accuracy_yerr,
    legend_below,
    new_figure,
    no_data,
    pair_title,
    save_figure,
    variant_handles,
    variant_styles,
)
from normdrop.summary_data import (
    PAPER_VARIANTS,
    add_selection_args,
    convergence_fraction,
    did_not_learn,
    metric_values,
    order_variants,
    paper_variants,
    read_summary,
    run_report_cli,
    select_pairs,
)

FIGURE_KINDS = PAIR_FIGURES  # figure_style.FIG_SIZES has one size per kind


def overview_size(n_datasets: int, n_models: int) -> tuple[float, float]:
    """Inches of the overview grid: 3.4 x 2.9 per panel plus room for labels and title."""
    return (1.2 + 3.4 * max(n_models, 1), 1.6 + 2.9 * max(n_datasets, 1))


def png_size_px(kind: str, n_datasets: int = 1, n_models: int = 1) -> tuple[int, int]:
    """(width, height) in pixels of a figure's PNG."""
    w, h = overview_size(n_datasets, n_models) if kind == OVERVIEW else FIG_SIZES[kind]
    return round(w * DPI), round(h * DPI)


# --------------------------------------------------------------------------------------------
# Helpers


def _no_bar(ax, x: float, text: str, y: float) -> None:
    """Mark a variant without a finite value ("diverged", "not run") where its bar would stand;
    `y` is in axes fraction so the label sits at the bottom whatever the data range."""
    ax.text(
        x,
        y,
        text,
        rotation=90,
        ha="center",
        va="bottom",
        transform=ax.get_xaxis_transform(),
        color="0.3",
    )


def _mean_and_whisker(values: np.ndarray, accuracy: bool) -> tuple[float, np.ndarray]:
    """(mean, yerr) of one group of seeds: ± SD (0 for one seed), cut to [0, 100] for an
    accuracy; yerr has errorbar's shape (2, 1): below, above."""
    mean = float(values.mean())
    sd = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    if accuracy:
        return mean, accuracy_yerr(mean, sd)
    return mean, np.array([[sd], [sd]])


def _marker_handle(color: str, marker: str, label: str, **kwargs) -> Line2D:
    """A legend entry that is only a marker (no line)."""
    return Line2D([], [], color=color, marker=marker, linestyle="", label=label, **kwargs)


# --------------------------------------------------------------------------------------------
# Figures per dataset and model (the curves over epochs are in normdrop.curves)

ACCURACY_COLUMNS = ("final_test_acc", "es_test_acc")  # in [0, 100] % once displayed
ZOOMED = ("final_test_acc",)  # panels whose origin means nothing: their axis is zoomed


def _bars(ax, runs, variants, styles, column, zoom: bool) -> None:
    xs = np.arange(len(variants))
    accuracy = column in ACCURACY_COLUMNS
    lows, highs = [], []
    for x, v in zip(xs, variants, strict=True):
        sub = runs[runs["variant"] == v]
        vals = metric_values(sub, column)
        st = styles[v]
        if len(vals) == 0:
            flat = column == "convergence_epoch" and did_not_learn(sub).any()  # metrics.learned
            why = "did not learn" if flat else None
            _no_bar(ax, x, why or ("diverged" if len(sub) else "not run"), 0.02)
            continue
        mean, yerr = _mean_and_whisker(vals, accuracy)
        ax.bar(x, mean, width=0.7, color=st.color, alpha=0.85, edgecolor=st.color)
        ax.errorbar(x, mean, yerr=yerr, color="black", capsize=4, linewidth=1.2)
        jitter = np.linspace(-0.15, 0.15, len(vals)) if len(vals) > 1 else np.zeros(1)
        ax.scatter(
            x + jitter, vals, s=12, color="white", edgecolor="black", linewidth=0.7, zorder=3
        )
        lows += [mean - yerr[0, 0], vals.min()]
        highs += [mean + yerr[1, 0], vals.max()]
    ax.set_xticks(xs, variants, rotation=30, ha="right")
    if zoom and lows:
        lo, hi = min(lows), max(highs)
        pad = max(0.15 * (hi - lo), 0.5)  # at least half a percentage point of headroom
        ax.set_ylim(lo - pad, hi + pad)
    if accuracy:
        accuracy_axis(ax)
    if min(lows, default=0) < 0:
        ax.axhline(0, color="black", linewidth=0.8)


def plot_metrics(runs, dataset, model, styles) -> Figure:
    """The four metrics per variant: mean ± SD over seeds, seeds as dots."""
    fig = new_figure(FIG_SIZES["metrics"])
    axes = fig.subplots(1, len(PLOTTED_METRICS))
    variants = order_variants(runs)
    fraction = percent(convergence_fraction(runs))
    for ax, column in zip(axes, PLOTTED_METRICS, strict=True):
        _bars(ax, runs, variants, styles, column, zoom=column in ZOOMED)
        ax.set_title(METRICS[column].title)
        ax.set_ylabel(METRICS[column].axis.format(fraction=fraction))
        ax.grid(axis="x", visible=False)
    fig.suptitle(
        pair_title(dataset, model, "metrics per variant (bars: mean ± SD over seeds; dots: seeds)")
    )
    legend_below(fig, variant_handles(variants, styles), min(len(variants), 5))
    return fig


def _interaction_point(ax, x: float, vals: np.ndarray, style: Style, right: bool) -> float:
    """One configuration's mean ± SD (cut to [0, 100]) and its value written beside it; the
    value sits outside the lines' span: left of "BN off", right of "BN on"."""
    mean, yerr = _mean_and_whisker(vals, accuracy=True)
    ax.errorbar(x, mean, yerr=yerr, color="black", capsize=5, linewidth=1.2, zorder=2)
    ax.plot(
        x,
        mean,
        marker=style.marker,
        markersize=10,
        color=style.color,
        markeredgecolor="black",
        linestyle="",
        zorder=3,
    )
    ax.annotate(
        f"{mean:.2f}",
        (x, mean),
        xytext=(12 if right else -12, 0),
        textcoords="offset points",
        ha="left" if right else "right",
        va="center",
        fontsize=9,
    )
    return mean


def plot_interaction(runs, dataset, model, styles) -> Figure:
    """H3: test accuracy at BN off/on, one line for dropout off and one for dropout on."""
    fig = new_figure(FIG_SIZES["interaction"])
    ax = fig.subplots()
    names = paper_variants(runs)
    handles = []
    for dropout, keys, ls, dx in (
        (False, ("none", "bn"), "-", -0.03),
        (True, ("dropout", "bn_dropout"), "--", 0.03),
    ):
        xs, means = [], []
        for x, key in enumerate(keys):
            variant = names.get(key)
            selected = runs[runs["variant"] == variant]
            vals = metric_values(selected, "final_test_acc") if variant else np.array([])
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
            xs.append(x + dx)
            means.append(_interaction_point(ax, x + dx, vals, styles[variant], x == 1))
        ax.plot(xs, means, color="black", linestyle=ls, linewidth=1.5, zorder=1)
        label = f"dropout {'on' if dropout else 'off'}"
        handles.append(Line2D([], [], color="black", linestyle=ls, label=label))
    present = [names[k] for k in PAPER_VARIANTS if k in names]
    handles += [
        _marker_handle(s.color, s.marker, s.label, markeredgecolor="black", markersize=8)
        for s in (styles[v] for v in present)
    ]
    ax.set_xticks([0, 1], ["BN off", "BN on"])
    ax.set_xlim(-0.5, 1.5)
    ax.set_ylabel("final test accuracy (%), mean ± SD over seeds")
    ax.grid(axis="x", visible=False)
    accuracy_axis(ax)
    if not present:
        no_data(ax, "none of the paper's four variants was run")
    fig.suptitle(pair_title(dataset, model, "BN × dropout interaction (H3)"))
    legend_below(fig, handles, 3)
    return fig


def _lr_candidates(ax, sub: pd.DataFrame, style: Style, dodge: float) -> bool:
    """One variant's candidates: best validation accuracy per rate, the selected one ringed,
    diverged ones as x in a strip below the data. True if any candidate diverged."""
    ok = sub[(sub["status"] == "completed") & np.isfinite(sub["best_val_acc"])]
    ax.plot(
        ok["lr"] * dodge,
        ok["best_val_acc"] * 100,
        color=style.color,
        linestyle=style.linestyle,
        marker=style.marker,
        markersize=6,
        linewidth=1.6,
    )
    sel = ok[ok["selected"]]
    ax.scatter(
        sel["lr"] * dodge,
        sel["best_val_acc"] * 100,
        s=260,
        facecolor="none",
        edgecolor=style.color,
        linewidth=2.2,
        zorder=4,
    )
    div = sub[sub["status"] != "completed"]
    if len(div):
        ax.plot(
            div["lr"] * dodge,
            np.full(len(div), 0.04),
            marker="x",
            markersize=9,
            markeredgewidth=2,
            linestyle="",
            color=style.color,
            transform=ax.get_xaxis_transform(),
        )
    return bool(len(div))


def plot_lr_search(lr_search, dataset, model, styles, variants) -> Figure:
    """Best validation accuracy of each learning-rate candidate; the selected one ringed."""
    fig = new_figure(FIG_SIZES["lr_search"])
    ax = fig.subplots()
    any_div = False
    accs = lr_search.loc[lr_search["status"] == "completed", "best_val_acc"] * 100
    accs = accs[np.isfinite(accs)]
    for i, v in enumerate(variants):
        sub = lr_search[lr_search["variant"] == v].sort_values("lr")
        # Nudge each variant a little along the log axis so that equal results stay visible.
        dodge = 1.05 ** (i - (len(variants) - 1) / 2)
        if not sub.empty and v in styles:
            any_div |= _lr_candidates(ax, sub, styles[v], dodge)
    if len(accs):
        lo, hi = accs.min(), accs.max()
        span = max(hi - lo, 1.0)
        ax.set_ylim(lo - 0.15 * span, hi + 0.08 * span)  # the bottom strip holds diverged x's
        accuracy_axis(ax)
    lrs = np.sort(lr_search["lr"].unique())
    if len(lrs):
        ax.set_xscale("log")
        ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs])
        ax.minorticks_off()
        ax.set_xlim(lrs[0] / 1.6, lrs[-1] * 1.6)
    else:
        no_data(ax)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("best validation accuracy in the search (%)")
    fig.suptitle(pair_title(dataset, model, "learning-rate search"))
    shown = [v for v in variants if v in set(lr_search["variant"])]
    handles = variant_handles(shown, styles, marker=True)
    ring = dict(markersize=12, markerfacecolor="none", markeredgecolor="black", markeredgewidth=2)
    handles.append(_marker_handle("black", "o", "selected rate", **ring))
    if any_div:
        cross = dict(markersize=8, markeredgewidth=2)
        handles.append(_marker_handle("black", "x", "diverged candidate", **cross))
    legend_below(fig, handles, 3)
    return fig


def _overview_panel(ax, sub: pd.DataFrame, variants: Sequence[str], styles) -> None:
    """Per variant: mean ± SD of the final test accuracy (cut to [0, 100]), seeds as dots."""
    if sub.empty:
        no_data(ax, "no runs")
    for x, v in enumerate(variants):
        vr = sub[sub["variant"] == v]
        vals = metric_values(vr, "final_test_acc")
        st = styles[v]
        if len(vals) == 0:
            if len(vr):
                _no_bar(ax, x, "diverged", 0.05)
            continue
        mean, yerr = _mean_and_whisker(vals, accuracy=True)
        ax.errorbar(
            x,
            mean,
            yerr=yerr,
            marker=st.marker,
            markersize=7,
            color=st.color,
            markeredgecolor="black",
            capsize=4,
            linewidth=1.5,
        )
        ax.scatter(np.full(len(vals), x + 0.22), vals, s=9, color=st.color, alpha=0.8)
    ax.set_xlim(-0.6, len(variants) - 0.4)
    ax.grid(axis="x", visible=False)


def plot_overview(runs, pairs, styles) -> Figure:
    """Final test accuracy per variant: rows = datasets, columns = models."""
    datasets = list(dict.fromkeys(d for d, _ in pairs))  # in the requested order
    models = list(dict.fromkeys(m for _, m in pairs))
    fig = new_figure(overview_size(len(datasets), len(models)))
    # One y axis for every panel: a 0.2-point spread must not look like a 50-point one.
    axes = fig.subplots(len(datasets), len(models), squeeze=False, sharex=True, sharey=True)
    variants = order_variants(runs)
    for r, d in enumerate(datasets):
        for c, m in enumerate(models):
            ax = axes[r][c]
            _overview_panel(
                ax, runs[(runs["dataset"] == d) & (runs["model"] == m)], variants, styles
            )
            if r == 0:
                ax.set_title(model_name(m))
            if c == 0:
                ax.set_ylabel(f"{dataset_name(d)}\ntest accuracy (%)")
    for ax in axes[-1]:
        ax.set_xticks(np.arange(len(variants)), variants, rotation=35, ha="right")
    axes[0][0].autoscale_view()  # over every panel's points (shared), then capped at [0, 100]
    accuracy_axis(axes[0][0])
    fig.suptitle(
        "Final test accuracy: mean ± SD over seeds (small dots: single seeds); one y axis for all"
    )
    return fig


# --------------------------------------------------------------------------------------------
# Driver


def write_figures(
    summary_dir: Path | str,
    out_dir: Path | str,
    milestones: Sequence[float] | None = None,
    datasets: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
) -> list[Path]:
    runs = read_summary(summary_dir, "runs")
    source = str(Path(summary_dir) / SUMMARY_FILES["runs"])
    epochs = read_summary(summary_dir, "epochs")
    lr_search = read_summary(summary_dir, "lr_search")
    pairs = select_pairs(runs, datasets, models, source=source)
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
        "--lr-milestones",
        nargs="*",
        type=float,
        default=None,
        help="epochs after which the learning rate drops (default: read from epochs.parquet)",
    )
    return run_report_cli(
        parser,
        argv,
        lambda a: write_figures(a.summary_dir, a.out_dir, a.lr_milestones, a.datasets, a.models),
        "figure",
    )


if __name__ == "__main__":
    sys.exit(main())
