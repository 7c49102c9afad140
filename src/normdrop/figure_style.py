"""How every figure of normdrop looks and is saved: sizes, colours per variant, legends, files.

Shared by the figures of a grid (normdrop.plots, normdrop.curves) and of a study
(normdrop.study):

- `new_figure`: a bare matplotlib Figure (no pyplot, no global state) of a fixed size
  (FIG_SIZES), so that a PNG's pixel size is known in advance;
  `save_figure`: PNG (150 dpi) and PDF, atomically, without timestamps (re-running gives
  byte-identical files); `RC`: the shared rc settings.
- `variant_styles`: one fixed colour, marker and line style per variant. The paper's four
  configurations (identified by their (norm, dropout) pair) always get the same four
  Okabe-Ito colours; GroupNorm and LayerNorm without dropout get theirs; other variants get
  further colours in their sort order.
- `legend_below` (legends sit below the axes, never over data), `variant_handles` (its
  entries), `pair_title`, `no_data` (a panel's note).
- `clip_to_accuracy`, `accuracy_axis`: no accuracy whisker, band or axis leaves [0, 100] %.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from normdrop.catalog import FIGURE_FORMATS, dataset_name, model_name
from normdrop.storage import atomic_write
from normdrop.summary_data import describe_variant, variant_table

DPI = 150
FIG_SIZES = {  # inches (width, height); a PNG is round(width * DPI) x round(height * DPI) px
    "curves": (11.0, 5.0),
    "loss_sd": (7.5, 5.0),
    "metrics": (13.0, 5.0),
    "interaction": (6.5, 5.0),
    "lr_search": (7.5, 5.0),
}
FORMATS = FIGURE_FORMATS
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
ACCURACY_RANGE = (0.0, 100.0)  # percent

# Okabe-Ito colours (readable with colour-vision deficiency) for the paper's four variants.
PAPER_COLORS = {"none": "#4D4D4D", "bn": "#0072B2", "dropout": "#E69F00", "bn_dropout": "#009E73"}
PAPER_MARKERS = {"none": "o", "bn": "s", "dropout": "^", "bn_dropout": "D"}
# GroupNorm and LayerNorm without dropout (the batch-size study) get fixed colours too.
NORM_COLORS = {"group": "#CC79A7", "layer": "#D55E00"}
NORM_MARKERS = {"group": "v", "layer": "P"}
EXTRA_COLORS = ("#56B4E9", "#8C564B", "#9467BD", "#BCBD22", "#17BECF", "#F0E442", "#7F7F7F")
EXTRA_MARKERS = ("X", "*", "h", "<", ">", "p", "d")


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


def new_figure(size: tuple[float, float]) -> Figure:
    """A figure of `size` inches at DPI, laid out by matplotlib's constrained layout."""
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


def legend_below(fig: Figure, handles: list, ncols: int | None = None) -> None:
    """The figure's legend under its axes, in `ncols` columns (default: up to 4)."""
    if handles:
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncols=ncols or min(len(handles), 4),
            frameon=False,
        )


def variant_handles(variants: Sequence[str], styles: dict[str, Style], marker=False) -> list:
    """Legend entries, one line (with its marker when `marker`) per variant."""
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


def pair_title(dataset: str, model: str, what: str) -> str:
    """A figure's title for one dataset and model, e.g. 'CIFAR-10, MLP: learning curves'."""
    return f"{dataset_name(dataset)}, {model_name(model)}: {what}"


def no_data(ax, text: str = "no data") -> None:
    """A grey note in the middle of an empty panel."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def clip_to_accuracy(mean, sd) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of mean ± SD cut to [0, 100] %: a whisker or band never passes a bound
    that no accuracy can pass (three seeds at 99.9-100% have a mean + SD above 100)."""
    mean, sd = np.asarray(mean, float), np.asarray(sd, float)
    return np.clip(mean - sd, *ACCURACY_RANGE), np.clip(mean + sd, *ACCURACY_RANGE)


def accuracy_yerr(mean: float, sd: float) -> np.ndarray:
    """`yerr` for `errorbar` at one point: the SD whisker cut to [0, 100] %, shape (2, 1)."""
    low, high = clip_to_accuracy(mean, sd)
    return np.array([[mean - low], [high - mean]])


def accuracy_axis(ax) -> None:
    """Cap an accuracy axis at [0, 100] % (matplotlib's margins would pass 100)."""
    low, high = ax.get_ylim()
    ax.set_ylim(max(low, ACCURACY_RANGE[0]), min(high, ACCURACY_RANGE[1]))
