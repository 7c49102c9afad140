"""The paper's tables, regenerated from the aggregated summary (`{results_dir}/summary/`).

- Table 2 per (dataset, model): one row per variant; loss SD, convergence epoch, final test
  accuracy, generalization gap, early-stopping test accuracy and epoch, each as mean ± SD over
  the seeds that completed. A diverged run is left out of the means and counted instead
  ("diverged (1/3 seeds)"); a variant whose every seed diverged shows that in every cell.
- Table 1: the measured parameter count of every model on every dataset; variants share a row
  when their counts agree (BN adds scale/shift parameters and drops the preceding layer's bias,
  so BN variants usually get their own row).
- The comparison with the paper: its Table 2 (CIFAR-10, model unstated) beside ours, per model.

Every table is written as Markdown, CSV (numbers, not formatted strings) and LaTeX (booktabs),
plus HTML for Snakemake's report. The paper's numbers come from `reference/paper_table2.csv` and
`reference/paper_table1.csv`, never from code.

This module also holds what the other report modules share: reading and checking the summary
files, the order and description of variants, and the text-table renderers.

CLI: python -m normdrop.tables --summary-dir D --out-dir T [--datasets ...] [--models ...]
Output paths: `table_paths(T, datasets, models)`.
"""

from __future__ import annotations

import argparse
import html
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from normdrop.storage import atomic_write_text

# --------------------------------------------------------------------------------------------
# The data contract (written by the aggregate step)

RUN_COLUMNS = (
    "dataset",
    "model",
    "variant",
    "norm",
    "dropout",
    "dropout_rate",
    "seed",
    "lr",
    "param_count",
    "status",
    "diverged_epoch",
    "epochs",
    "loss_sd",
    "loss_sd_late",
    "convergence_epoch",
    "final_test_acc",
    "final_val_acc",
    "final_train_acc",
    "gen_gap",
    "es_epoch",
    "es_test_acc",
)
EPOCH_COLUMNS = (
    "dataset",
    "model",
    "variant",
    "seed",
    "epoch",
    "lr",
    "train_loss_mean",
    "train_loss_sd",
    "val_acc",
    "test_acc",
)
LR_SEARCH_COLUMNS = ("dataset", "model", "variant", "lr", "status", "best_val_acc", "selected")

SUMMARY_FILES = {
    "runs": ("runs.parquet", RUN_COLUMNS),
    "epochs": ("epochs.parquet", EPOCH_COLUMNS),
    "lr_search": ("lr_search.parquet", LR_SEARCH_COLUMNS),
}


class SummaryError(Exception):
    """Missing or malformed summary input; the message names the file and what is wrong."""


def read_summary(summary_dir: Path | str, name: str) -> pd.DataFrame:
    """One summary table ('runs', 'epochs' or 'lr_search'), checked against the contract."""
    filename, required = SUMMARY_FILES[name]
    path = Path(summary_dir) / filename
    if not path.is_file():
        raise SummaryError(f"{path}: file not found (run the workflow's aggregate step first)")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise SummaryError(f"{path}: not a readable parquet file ({exc})") from exc
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise SummaryError(f"{path}: missing column(s) {', '.join(missing)}")
    frame = frame.copy()
    for col in ("dataset", "model", "variant"):
        frame[col] = frame[col].astype(str)
    if "dropout" in frame.columns:
        frame["dropout"] = frame["dropout"].astype(bool)
    if "selected" in frame.columns:
        frame["selected"] = frame["selected"].astype(bool)
    return frame


# --------------------------------------------------------------------------------------------
# Names, order and description of datasets, models and variants

DATASET_NAMES = {
    "mnist": "MNIST",
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "synthetic": "Synthetic",
}
MODEL_NAMES = {"mlp": "MLP", "cnn": "CNN", "resnet20": "ResNet-20"}
DATASET_ORDER = ("mnist", "cifar10", "cifar100", "synthetic")
MODEL_ORDER = ("mlp", "cnn", "resnet20")

# The paper's four configurations, identified by (norm, dropout), never by the variant's name.
PAPER_VARIANTS = ("none", "bn", "dropout", "bn_dropout")
PAPER_KEY = {("none", False): "none", ("batch", False): "bn", ("none", True): "dropout"}
PAPER_KEY[("batch", True)] = "bn_dropout"
NORM_NAMES = {"none": "", "batch": "BN", "group": "GroupNorm", "layer": "LayerNorm"}
NORM_ORDER = ("none", "batch", "group", "layer")


def dataset_name(dataset: str) -> str:
    return DATASET_NAMES.get(dataset, dataset)


def model_name(model: str) -> str:
    return MODEL_NAMES.get(model, model)


def ordered(values: Iterable[str], preferred: Sequence[str]) -> list[str]:
    """Unique values, the known ones in `preferred` order first, then the rest sorted."""
    values = set(values)
    known = [v for v in preferred if v in values]
    return known + sorted(values - set(known))


def paper_key(norm: str, dropout: bool) -> str | None:
    """'none', 'bn', 'dropout' or 'bn_dropout' for the paper's configurations, else None."""
    return PAPER_KEY.get((str(norm), bool(dropout)))


def variant_table(runs: pd.DataFrame) -> list[tuple[str, str, bool, str | None]]:
    """(variant, norm, dropout, paper key or None) per variant name, in display order."""
    meta = runs.groupby("variant", sort=False)[["norm", "dropout"]].first()
    entries = [
        (str(v), str(n), bool(d), paper_key(n, d))
        for v, n, d in zip(meta.index, meta["norm"], meta["dropout"], strict=True)
    ]

    def sort_key(entry) -> tuple:
        variant, norm, dropout, key = entry
        if key is not None:
            # The canonical name first when a user defines two variants with the same pair.
            return (0, PAPER_VARIANTS.index(key), variant != key, variant)
        norm_pos = NORM_ORDER.index(norm) if norm in NORM_ORDER else len(NORM_ORDER)
        return (1, norm_pos, dropout, variant)

    return sorted(entries, key=sort_key)


def order_variants(runs: pd.DataFrame, variants: Iterable[str] | None = None) -> list[str]:
    """Variant names in display order: the paper's four, then the others by norm and dropout."""
    names = [entry[0] for entry in variant_table(runs)]
    if variants is None:
        return names
    wanted = set(variants)
    return [v for v in names if v in wanted]


def paper_variants(runs: pd.DataFrame) -> dict[str, str]:
    """Map paper key -> variant name among `runs` (usually one dataset/model).

    When several variants share a (norm, dropout) pair, the one named like the key wins, else
    the first in sort order.
    """
    found: dict[str, str] = {}
    for variant, _, _, key in variant_table(runs):
        if key is not None and key not in found:
            found[key] = variant
    return found


def describe_variant(norm: str, dropout: bool, rates: Iterable[float] = ()) -> str:
    """Human description of a (norm, dropout) pair, e.g. 'BN + dropout (p=0.3)'."""
    rates = sorted({float(r) for r in rates if r is not None and np.isfinite(r) and r > 0})
    rate = f" (p={'/'.join(f'{r:g}' for r in rates)})" if rates else ""
    norm_text = NORM_NAMES.get(str(norm), str(norm))
    if not norm_text and not dropout:
        return "No BN, no dropout"
    if not norm_text:
        return f"Dropout only{rate}"
    if not dropout:
        return f"{norm_text} only"
    return f"{norm_text} + dropout{rate}"


def select_pairs(
    runs: pd.DataFrame,
    datasets: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    source: str = "runs.parquet",
) -> list[tuple[str, str]]:
    """(dataset, model) pairs to report, in display order.

    Without `datasets`/`models`: every pair present in `runs`. With them: exactly their
    product, so that the outputs are known in advance; a pair without runs is an error.
    """
    present = set(zip(runs["dataset"], runs["model"], strict=True))
    if datasets is None and models is None:
        ds = ordered({d for d, _ in present}, DATASET_ORDER)
        ms = ordered({m for _, m in present}, MODEL_ORDER)
        return [(d, m) for d in ds for m in ms if (d, m) in present]
    ds = list(datasets) if datasets is not None else ordered({d for d, _ in present}, DATASET_ORDER)
    ms = list(models) if models is not None else ordered({m for _, m in present}, MODEL_ORDER)
    missing = [f"{d}/{m}" for d in ds for m in ms if (d, m) not in present]
    if missing:
        raise SummaryError(f"{source}: no runs for dataset/model {', '.join(missing)}")
    return [(d, m) for d in ds for m in ms]


# --------------------------------------------------------------------------------------------
# Per-variant statistics


@dataclass(frozen=True)
class Metric:
    column: str  # column of runs.parquet
    label: str  # table header
    scale: float  # factor from the stored unit to the displayed one
    decimals: int
    csv_name: str  # column stem in the CSV outputs (names the displayed unit)


METRICS = (
    Metric("loss_sd", "Loss SD", 1.0, 4, "loss_sd"),
    Metric("loss_sd_late", "Loss SD ep. 2+", 1.0, 4, "loss_sd_late"),
    Metric("convergence_epoch", "Conv. epoch", 1.0, 1, "convergence_epoch"),
    Metric("final_test_acc", "Test acc. (%)", 100.0, 2, "final_test_acc_pct"),
    Metric("gen_gap", "Gen. gap (pts)", 1.0, 2, "gen_gap_pts"),
    Metric("es_test_acc", "ES test acc. (%)", 100.0, 2, "es_test_acc_pct"),
    Metric("es_epoch", "ES epoch", 1.0, 1, "es_epoch"),
)
METRIC_BY_COLUMN = {m.column: m for m in METRICS}


def completed(runs: pd.DataFrame) -> pd.Series:
    """Boolean mask of runs that count in means: completed ones (a diverged run has NaNs)."""
    return runs["status"].astype(str) == "completed"


def metric_values(runs: pd.DataFrame, column: str) -> np.ndarray:
    """Finite values of one metric over the completed runs, in displayed units."""
    metric = METRIC_BY_COLUMN.get(column)
    scale = metric.scale if metric else 1.0
    values = pd.to_numeric(runs.loc[completed(runs), column], errors="coerce").to_numpy(float)
    return values[np.isfinite(values)] * scale


def mean_sd(values: np.ndarray) -> tuple[float, float, int]:
    """(mean, SD with ddof=1, n); SD is NaN for n < 2, both NaN for n == 0."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    sd = float(np.std(values, ddof=1)) if n > 1 else math.nan
    return float(np.mean(values)), sd, n


def variant_stats(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, model, variant) with run counts and mean/SD/n of every metric."""
    rows = []
    for (dataset, model, variant), group in runs.groupby(
        ["dataset", "model", "variant"], sort=False
    ):
        done = completed(group)
        diverged_epochs = pd.to_numeric(group.loc[~done, "diverged_epoch"], errors="coerce")
        row = dict(
            dataset=dataset,
            model=model,
            variant=variant,
            norm=str(group["norm"].iloc[0]),
            dropout=bool(group["dropout"].iloc[0]),
            dropout_rate=float(pd.to_numeric(group["dropout_rate"], errors="coerce").max()),
            configuration=describe_variant(
                group["norm"].iloc[0], group["dropout"].iloc[0], group["dropout_rate"]
            ),
            n_runs=int(len(group)),
            n_completed=int(done.sum()),
            n_diverged=int((~done).sum()),
            diverged_epochs=", ".join(f"{e:g}" for e in sorted(set(diverged_epochs.dropna()))),
        )
        for metric in METRICS:
            mean, sd, n = mean_sd(metric_values(group, metric.column))
            row[f"{metric.csv_name}_mean"] = mean
            row[f"{metric.csv_name}_sd"] = sd
            row[f"{metric.csv_name}_n"] = n
        rows.append(row)
    return pd.DataFrame(rows)


def fmt_num(value: float, decimals: int, signed: bool = False) -> str:
    """A number for display; negative with a true minus sign (U+2212), 'n/a' if not finite."""
    if value is None or not np.isfinite(value):
        return "n/a"
    text = f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"
    return text.replace("-", "−")


def fmt_mean_sd(mean: float, sd: float, n: int, decimals: int) -> str:
    """'84.70 ± 0.31'; 'n/a' without values; '84.70 (n=1)' when the SD is undefined."""
    if n == 0 or not np.isfinite(mean):
        return "n/a"
    if n < 2 or not np.isfinite(sd):
        return f"{fmt_num(mean, decimals)} (n={n})"
    return f"{fmt_num(mean, decimals)} ± {fmt_num(sd, decimals)}"


def fmt_signed(value: float, decimals: int) -> str:
    return fmt_num(value, decimals, signed=True)


def diverged_text(n_diverged: int, n_runs: int) -> str:
    return f"diverged ({n_diverged}/{n_runs} seeds)"


# --------------------------------------------------------------------------------------------
# Text tables: one structure, four renderers


@dataclass
class TextTable:
    title: str
    header: list[str]
    rows: list[list[str]]
    align: str  # one LaTeX column spec letter per column: l, c or r
    notes: list[str] = field(default_factory=list)
    label: str = ""  # LaTeX \label
    # LaTeX-only spanning header: (text, number of columns); '' spans blank columns.
    groups: list[tuple[str, int]] = field(default_factory=list)
    rule_before: set[int] = field(default_factory=set)  # row indices preceded by \midrule
    latex_header: list[str] | None = None  # column names under `groups` (default: header)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(table: TextTable) -> str:
    marks = {"l": ":---", "c": ":---:", "r": "---:"}
    lines = [f"**{table.title}**", ""]
    lines.append("| " + " | ".join(_md_cell(h) for h in table.header) + " |")
    lines.append("| " + " | ".join(marks[a] for a in table.align) + " |")
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    if table.notes:
        lines.append("")
        lines += [f"{note}  " for note in table.notes]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "−": r"$-$",
    "Δ": r"$\Delta$",
    "×": r"$\times$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "<": r"$<$",  # pdflatex's default font encoding prints '<' as '¡' in text mode
    ">": r"$>$",
    "—": "---",
    "–": "--",
}


def latex_escape(text: str) -> str:
    """Text safe inside a LaTeX tabular cell (pdflatex, no extra packages beyond booktabs)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(table: TextTable) -> str:
    """A booktabs table environment; needs \\usepackage{booktabs} in the preamble."""
    ncols = len(table.header)
    lines = [
        "% Generated by normdrop.tables; needs \\usepackage{booktabs}.",
        "\\begin{table}[htbp]",
        "\\centering",
        "\\small",
        f"\\caption{{{latex_escape(table.title)}}}",
    ]
    if table.label:
        lines.append(f"\\label{{{table.label}}}")
    lines += [f"\\begin{{tabular}}{{{table.align}}}", "\\toprule"]
    if table.groups:
        cells, rules, col = [], [], 1
        for text, span in table.groups:
            if text:
                cells.append(f"\\multicolumn{{{span}}}{{c}}{{{latex_escape(text)}}}")
                rules.append(f"\\cmidrule(lr){{{col}-{col + span - 1}}}")
            else:
                cells += [""] * span
            col += span
        lines.append(" & ".join(cells) + " \\\\")
        lines.append(" ".join(rules))
    header = table.latex_header or table.header
    lines.append(" & ".join(latex_escape(h) for h in header) + " \\\\")
    lines.append("\\midrule")
    if not table.rows:
        lines.append(f"\\multicolumn{{{ncols}}}{{c}}{{(no rows)}} \\\\")
    for i, row in enumerate(table.rows):
        if i in table.rule_before and i > 0:
            lines.append("\\midrule")
        lines.append(" & ".join(latex_escape(c) for c in row) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    if table.notes:
        notes = " ".join(latex_escape(n) for n in table.notes)
        lines += ["", f"\\par\\smallskip{{\\footnotesize {notes}}}"]
    lines.append("\\end{table}")
    return "\n".join(lines) + "\n"


_HTML_STYLE = (
    "body{font-family:sans-serif;font-size:14px;margin:1em}"
    "table{border-collapse:collapse}"
    "th,td{padding:3px 8px;border-bottom:1px solid #ccc}"
    "th{border-bottom:2px solid #333}"
    "tr.rule td{border-top:2px solid #999}"
    "td.r,th.r{text-align:right}td.c,th.c{text-align:center}"
    "p.note{font-size:12px;color:#444}"
)


def to_html(table: TextTable) -> str:
    """A standalone HTML page (Snakemake's report embeds HTML results, not Markdown)."""
    cls = {"l": "", "c": ' class="c"', "r": ' class="r"'}
    out = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{html.escape(table.title)}</title><style>{_HTML_STYLE}</style></head><body>",
        f"<h3>{html.escape(table.title)}</h3>",
        "<table><thead><tr>",
    ]
    out += [
        f"<th{cls[a]}>{html.escape(h)}</th>" for h, a in zip(table.header, table.align, strict=True)
    ]
    out.append("</tr></thead><tbody>")
    for i, row in enumerate(table.rows):
        out.append('<tr class="rule">' if i in table.rule_before and i > 0 else "<tr>")
        out += [f"<td{cls[a]}>{html.escape(c)}</td>" for c, a in zip(row, table.align, strict=True)]
        out.append("</tr>")
    out.append("</tbody></table>")
    out += [f'<p class="note">{html.escape(n)}</p>' for n in table.notes]
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_table(table: TextTable, stem: Path, csv: pd.DataFrame | None = None) -> list[Path]:
    """Write `stem`.md/.tex/.html (and .csv when given), each atomically."""
    stem = Path(stem)
    paths = [
        atomic_write_text(stem.with_suffix(".md"), to_markdown(table)),
        atomic_write_text(stem.with_suffix(".tex"), to_latex(table)),
        atomic_write_text(stem.with_suffix(".html"), to_html(table)),
    ]
    if csv is not None:
        paths.append(atomic_write_text(stem.with_suffix(".csv"), csv.to_csv(index=False)))
    return paths


# --------------------------------------------------------------------------------------------
# Table 2 (per dataset and model)

SEED_NOTE = (
    "Mean ± SD over seeds (SD with ddof=1). Diverged runs are left out of the means and counted "
    "in the Seeds column. Conv. epoch: first epoch whose validation accuracy reaches 95% of the "
    "final one. Gen. gap: train accuracy (eval mode) minus test accuracy, in percentage points. "
    "ES: early stopping at the epoch of best validation accuracy."
)


def table2(stats: pd.DataFrame, dataset: str, model: str, variants: Sequence[str]) -> TextTable:
    """The paper's Table 2 layout for one dataset and model (`stats` from variant_stats)."""
    sub = stats[(stats["dataset"] == dataset) & (stats["model"] == model)].set_index("variant")
    rows = []
    for variant in [v for v in variants if v in sub.index]:
        s = sub.loc[variant]
        seeds = f"{s.n_completed}/{s.n_runs}"
        if s.n_diverged:
            seeds += f"; {diverged_text(s.n_diverged, s.n_runs)}"
            if s.diverged_epochs:
                plural = "s" if "," in s.diverged_epochs else ""
                seeds += f" at epoch{plural} {s.diverged_epochs}"
        cells = [variant, s.configuration, seeds]
        for m in METRICS:
            if s.n_completed == 0:
                cells.append(diverged_text(s.n_diverged, s.n_runs))
            else:
                cells.append(
                    fmt_mean_sd(
                        s[f"{m.csv_name}_mean"],
                        s[f"{m.csv_name}_sd"],
                        int(s[f"{m.csv_name}_n"]),
                        m.decimals,
                    )
                )
        rows.append(cells)
    return TextTable(
        title=f"Table 2: {dataset_name(dataset)}, {model_name(model)}",
        header=["Variant", "Configuration", "Seeds"] + [m.label for m in METRICS],
        rows=rows,
        align="lll" + "r" * len(METRICS),
        notes=[SEED_NOTE],
        label=f"tab:table2-{dataset}-{model}",
    )


def table2_csv(stats: pd.DataFrame, dataset: str, model: str, variants: Sequence[str]):
    sub = stats[(stats["dataset"] == dataset) & (stats["model"] == model)]
    order = {v: i for i, v in enumerate(variants)}
    return sub.sort_values("variant", key=lambda s: s.map(order)).reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Table 1 (parameter counts)


def load_paper_table(name: str) -> pd.DataFrame:
    """A reference table shipped with the package (reference/<name>.csv)."""
    ref = resources.files("normdrop") / "reference" / f"{name}.csv"
    with ref.open("r", encoding="utf-8") as f:
        return pd.read_csv(f)


def param_counts(runs: pd.DataFrame) -> pd.DataFrame:
    """Long table: model, dataset, variant, norm, dropout, param_count (one per variant)."""
    grouped = runs.groupby(["model", "dataset", "variant"], sort=False)
    counts = grouped.agg(
        norm=("norm", "first"),
        dropout=("dropout", "first"),
        param_count=("param_count", "max"),
        param_count_min=("param_count", "min"),
    ).reset_index()
    odd = counts[counts["param_count"] != counts["param_count_min"]]
    if len(odd):
        where = ", ".join(f"{r.dataset}/{r.model}/{r.variant}" for r in odd.itertuples())
        print(
            f"warning: runs.parquet: param_count differs between seeds for {where}; "
            "Table 1 shows the largest",
            file=sys.stderr,
        )
    return counts.drop(columns="param_count_min")


def table1(runs: pd.DataFrame, datasets: Sequence[str], models: Sequence[str]):
    """Table 1 as (TextTable, long CSV frame)."""
    counts = param_counts(runs)
    paper = load_paper_table("paper_table1").set_index("model")
    variants = order_variants(runs)
    rows, rule_before = [], set()
    for model in models:
        sub = counts[counts["model"] == model]
        if sub.empty:
            continue
        # Variants whose counts agree on every dataset share a row.
        groups: dict[tuple, list[str]] = {}
        for variant in [v for v in variants if v in set(sub["variant"])]:
            per_ds = sub[sub["variant"] == variant].set_index("dataset")["param_count"]
            key = tuple(int(per_ds[d]) if d in per_ds.index else None for d in datasets)
            groups.setdefault(key, []).append(variant)
        rule_before.add(len(rows))
        for i, (key, names) in enumerate(groups.items()):
            paper_text = ""
            if i == 0 and model in paper.index:
                paper_text = str(paper.loc[model, "param_count_text"])
            rows.append(
                [model_name(model) if i == 0 else "", ", ".join(names)]
                + [f"{c:,}" if c is not None else "" for c in key]
                + [paper_text]
            )
    table = TextTable(
        title="Table 1: measured parameter counts per model and dataset",
        header=["Model", "Variants"] + [dataset_name(d) for d in datasets] + ["Paper"],
        rows=rows,
        align="ll" + "r" * len(datasets) + "r",
        notes=[
            "Trainable parameters as built for each dataset (input size and number of classes "
            "differ). Variants share a row when their counts agree on every dataset; BN adds a "
            "scale and shift per channel and removes the bias of the layer before it. Paper: "
            "its Table 1, which gives one count per model."
        ],
        label="tab:table1-params",
        rule_before=rule_before,
    )
    csv = counts.merge(
        paper[["param_count"]].rename(columns={"param_count": "paper_param_count"}),
        left_on="model",
        right_index=True,
        how="left",
    )
    csv = csv[csv["model"].isin(models) & csv["dataset"].isin(datasets)]
    return table, csv.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Comparison with the paper's Table 2

COMPARED = (  # (our runs.parquet column, column of paper_table2.csv)
    ("loss_sd", "loss_sd"),
    ("convergence_epoch", "convergence_epoch"),
    ("final_test_acc", "final_test_acc_pct"),
)
LOWER_IS_BETTER = {"loss_sd": True, "convergence_epoch": True, "final_test_acc": False}


def _rank_text(values: dict[str, float], lower_is_better: bool) -> str:
    """'bn < bn_dropout < dropout < none' (or '>' when higher is better), by value."""
    finite = {k: v for k, v in values.items() if np.isfinite(v)}
    keys = sorted(finite, key=lambda k: finite[k], reverse=not lower_is_better)
    return (" < " if lower_is_better else " > ").join(keys)


def paper_comparison(stats: pd.DataFrame, runs: pd.DataFrame, models: Sequence[str]):
    """The paper's Table 2 beside ours for each model on the paper's dataset.

    Returns (TextTable, long CSV frame, list of per-model ordering sentences).
    """
    paper = load_paper_table("paper_table2")
    paper["key"] = [paper_key(n, d) for n, d in zip(paper["norm"], paper["dropout"], strict=True)]
    paper = paper.set_index("key")
    dataset = str(paper["dataset"].iloc[0])
    rows, records, orderings, rule_before = [], [], [], set()
    ours_runs = runs[runs["dataset"] == dataset]
    for model in models:
        model_runs = ours_runs[ours_runs["model"] == model]
        if model_runs.empty:
            continue
        mapping = paper_variants(model_runs)
        sub = stats[(stats["dataset"] == dataset) & (stats["model"] == model)]
        sub = sub.set_index("variant")
        rule_before.add(len(rows))
        our_means: dict[str, dict[str, float]] = {c: {} for c, _ in COMPARED}
        for key in PAPER_VARIANTS:
            if key not in paper.index:
                continue
            variant = mapping.get(key)
            cells = [model_name(model), variant or f"{key} (not run)"]
            for ours_col, paper_col in COMPARED:
                metric = METRIC_BY_COLUMN[ours_col]
                ref = float(paper.loc[key, paper_col])
                if variant is None:
                    mean, sd, n, n_div, n_runs = math.nan, math.nan, 0, 0, 0
                else:
                    s = sub.loc[variant]
                    mean, sd = s[f"{metric.csv_name}_mean"], s[f"{metric.csv_name}_sd"]
                    n, n_div, n_runs = int(s[f"{metric.csv_name}_n"]), s.n_diverged, s.n_runs
                our_means[ours_col][key] = mean
                ours = fmt_mean_sd(mean, sd, n, metric.decimals)
                if n == 0 and n_div:
                    ours = diverged_text(n_div, n_runs)
                diff = mean - ref
                # The paper's value as printed there (e.g. 65, 0.045, 78.3).
                cells += [f"{ref:g}", ours, fmt_signed(diff, metric.decimals)]
                records.append(
                    dict(
                        dataset=dataset,
                        model=model,
                        paper_variant=key,
                        variant=variant,
                        metric=metric.csv_name,
                        paper=ref,
                        ours_mean=mean,
                        ours_sd=sd,
                        ours_n=n,
                        difference=diff,
                    )
                )
            rows.append(cells)
        for ours_col, paper_col in COMPARED:
            lower = LOWER_IS_BETTER[ours_col]
            mine = {k: v for k, v in our_means[ours_col].items() if np.isfinite(v)}
            paper_values = paper[paper_col].astype(float).to_dict()
            # Compare orders over the variants we have results for.
            theirs = _rank_text({k: v for k, v in paper_values.items() if k in mine}, lower)
            ours = _rank_text(mine, lower)
            if len(mine) < 2:
                verdict = "too few variants with results to compare"
            else:
                verdict = "same order" if theirs == ours else "different order"
                if len(mine) < len(paper_values):
                    verdict += f" over the {len(mine)} variants with results"
            orderings.append(
                f"{model_name(model)}, {METRIC_BY_COLUMN[ours_col].label}: "
                f"paper {_rank_text(paper_values, lower)}; ours {ours or 'n/a'} ({verdict})."
            )
    header = ["Model", "Variant"]
    for ours_col, _ in COMPARED:
        label = METRIC_BY_COLUMN[ours_col].label
        header += [f"{label} paper", f"{label} ours", f"Δ {label}"]
    notes = [
        f"Paper: Table 2 of the paper ({dataset_name(dataset)}; it does not say which model). "
        "Ours: mean ± SD over seeds on the same dataset, per model; Δ = ours − paper."
    ]
    if not rows:
        notes.append(f"No runs on {dataset_name(dataset)}: nothing to compare.")
    table = TextTable(
        title=f"Paper's Table 2 ({dataset_name(dataset)}) beside ours",
        header=header,
        rows=rows,
        align="ll" + "rrr" * len(COMPARED),
        notes=notes + orderings,
        label="tab:paper-comparison",
        groups=[("", 2)] + [(METRIC_BY_COLUMN[c].label, 3) for c, _ in COMPARED],
        rule_before=rule_before,
        # LaTeX names the metric once in the spanning header, then "Paper / Ours / Δ" under it.
        latex_header=["Model", "Variant"] + ["Paper", "Ours", "Δ"] * len(COMPARED),
    )
    return table, pd.DataFrame(records), orderings


# --------------------------------------------------------------------------------------------
# Output layout and CLI

TABLE_FORMATS = ("md", "csv", "tex", "html")


def table_paths(out_dir: Path | str, datasets: Sequence[str], models: Sequence[str]) -> list[Path]:
    """Every file `write_tables` writes, for Snakemake's output declaration."""
    out = Path(out_dir)
    paths = [out / f"table1_params.{ext}" for ext in TABLE_FORMATS]
    paths += [out / f"paper_comparison.{ext}" for ext in TABLE_FORMATS]
    paths += [out / "table2_all.md", out / "table2_all.csv"]
    for d in datasets:
        for m in models:
            paths += [out / d / m / f"table2.{ext}" for ext in TABLE_FORMATS]
    return paths


def write_tables(
    summary_dir: Path | str,
    out_dir: Path | str,
    datasets: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
) -> list[Path]:
    runs = read_summary(summary_dir, "runs")
    pairs = select_pairs(runs, datasets, models, source=str(Path(summary_dir) / "runs.parquet"))
    ds = ordered({d for d, _ in pairs}, datasets or DATASET_ORDER)
    ms = ordered({m for _, m in pairs}, models or MODEL_ORDER)
    runs = runs[runs["dataset"].isin(ds) & runs["model"].isin(ms)]
    stats = variant_stats(runs)
    variants = order_variants(runs)
    out = Path(out_dir)
    written: list[Path] = []
    all_md, all_csv = [], []
    for d, m in pairs:
        table = table2(stats, d, m, variants)
        csv = table2_csv(stats, d, m, variants)
        written += write_table(table, out / d / m / "table2", csv)
        all_md.append(to_markdown(table))
        all_csv.append(csv)
    written.append(atomic_write_text(out / "table2_all.md", "\n".join(all_md)))
    written.append(
        atomic_write_text(out / "table2_all.csv", pd.concat(all_csv).to_csv(index=False))
    )
    t1, t1_csv = table1(runs, ds, ms)
    written += write_table(t1, out / "table1_params", t1_csv)
    comparison, comp_csv, _ = paper_comparison(stats, runs, ms)
    written += write_table(comparison, out / "paper_comparison", comp_csv)
    return sorted(set(written))


def add_selection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--summary-dir", required=True, type=Path, help="the aggregate's output")
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument(
        "--datasets", nargs="+", help="report exactly these datasets (default: all in runs)"
    )
    parser.add_argument("--models", nargs="+", help="report exactly these models (default: all)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the paper's Tables 1 and 2.")
    add_selection_args(parser)
    args = parser.parse_args(argv)
    try:
        paths = write_tables(args.summary_dir, args.out_dir, args.datasets, args.models)
    except SummaryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} table files under {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
