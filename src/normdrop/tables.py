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
plus HTML for Snakemake's report (rendered by normdrop.render). The paper's numbers come from
`reference/paper_table2.csv` and `reference/paper_table1.csv`, never from code. What the summary
files hold and how variants are named and ordered: normdrop.summary_data; the statistics over
seeds: normdrop.seed_stats.

CLI: python -m normdrop.tables --summary-dir D --out-dir T [--datasets ...] [--models ...]
Output paths: `table_paths(T, datasets, models)`.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from normdrop.render import (
    TABLE_FORMATS,
    TextTable,
    fmt_mean_sd,
    fmt_signed,
    to_markdown,
    write_table,
)
from normdrop.seed_stats import variant_stats
from normdrop.storage import atomic_write_text
from normdrop.summary_data import (
    METRIC_BY_COLUMN,
    METRICS,
    PAPER_VARIANTS,
    add_selection_args,
    dataset_name,
    did_not_learn_text,
    model_name,
    order_variants,
    paper_key,
    paper_variants,
    read_selection,
    run_report_cli,
)


def diverged_text(n_diverged: int, n_runs: int) -> str:
    return f"diverged ({n_diverged}/{n_runs} seeds)"


# --------------------------------------------------------------------------------------------
# Table 2 (per dataset and model)

SEED_NOTE = (
    "Mean ± SD over seeds (SD with ddof=1). Diverged runs are left out of the means and counted "
    "in the Seeds column. Conv. epoch: first epoch whose validation accuracy reaches 95% of the "
    "final one; none for a run that did not learn (final validation accuracy at most 1.5 x "
    "chance), counted in the Seeds column. Gen. gap: train accuracy (eval mode) minus test "
    "accuracy, in percentage points. "
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
        if s.n_not_learned:
            seeds += f"; {did_not_learn_text(s.n_not_learned, s.n_runs)}"
        cells = [variant, s.configuration, seeds]
        for m in METRICS:
            if s.n_completed == 0:
                cells.append(diverged_text(s.n_diverged, s.n_runs))
            elif s[f"{m.csv_name}_n"] == 0 and s.n_not_learned:
                cells.append(did_not_learn_text(s.n_not_learned, s.n_runs))
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


def _ours(stats_row: pd.Series | None, metric) -> tuple[float, float, int, str]:
    """(mean, SD, n, cell text) of one metric for one variant (None: not run)."""
    if stats_row is None:
        return math.nan, math.nan, 0, fmt_mean_sd(math.nan, math.nan, 0, metric.decimals)
    s, name = stats_row, metric.csv_name
    mean, sd, n = s[f"{name}_mean"], s[f"{name}_sd"], int(s[f"{name}_n"])
    text = fmt_mean_sd(mean, sd, n, metric.decimals)
    if n == 0 and s.n_diverged:
        text = diverged_text(s.n_diverged, s.n_runs)
    elif n == 0 and s.get("n_not_learned", 0):
        text = did_not_learn_text(s.n_not_learned, s.n_runs)
    return mean, sd, n, text


def _ordering_sentence(model: str, column: str, ours: dict[str, float], paper_values) -> str:
    """Whether our order of the variants by one metric is the paper's, as one sentence."""
    lower = LOWER_IS_BETTER[column]
    mine = {k: v for k, v in ours.items() if np.isfinite(v)}
    # Compare orders over the variants we have results for.
    theirs = _rank_text({k: v for k, v in paper_values.items() if k in mine}, lower)
    ranked = _rank_text(mine, lower)
    if len(mine) < 2:
        verdict = "too few variants with results to compare"
    else:
        verdict = "same order" if theirs == ranked else "different order"
        if len(mine) < len(paper_values):
            verdict += f" over the {len(mine)} variants with results"
    return (
        f"{model_name(model)}, {METRIC_BY_COLUMN[column].label}: "
        f"paper {_rank_text(paper_values, lower)}; ours {ranked or 'n/a'} ({verdict})."
    )


def _compare_model(stats, model_runs, paper: pd.DataFrame, dataset: str, model: str):
    """The paper's rows beside ours for one model: (rows, CSV records, ordering sentences)."""
    mapping = paper_variants(model_runs)
    sub = stats[(stats["dataset"] == dataset) & (stats["model"] == model)].set_index("variant")
    rows, records = [], []
    our_means: dict[str, dict[str, float]] = {c: {} for c, _ in COMPARED}
    for key in [k for k in PAPER_VARIANTS if k in paper.index]:
        variant = mapping.get(key)
        cells = [model_name(model), variant or f"{key} (not run)"]
        for ours_col, paper_col in COMPARED:
            metric = METRIC_BY_COLUMN[ours_col]
            ref = float(paper.loc[key, paper_col])
            mean, sd, n, text = _ours(sub.loc[variant] if variant else None, metric)
            our_means[ours_col][key] = mean
            # The paper's value as printed there (e.g. 65, 0.045, 78.3).
            cells += [f"{ref:g}", text, fmt_signed(mean - ref, metric.decimals)]
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
                    difference=mean - ref,
                )
            )
        rows.append(cells)
    orderings = [
        _ordering_sentence(model, c, our_means[c], paper[p].astype(float).to_dict())
        for c, p in COMPARED
    ]
    return rows, records, orderings


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
        rule_before.add(len(rows))
        model_rows, model_records, model_orderings = _compare_model(
            stats, model_runs, paper, dataset, model
        )
        rows += model_rows
        records += model_records
        orderings += model_orderings
    header = ["Model", "Variant"]
    for ours_col, _ in COMPARED:
        label = METRIC_BY_COLUMN[ours_col].label
        header += [f"{label} paper", f"{label} ours", f"Δ {label}"]
    notes = [
        f"Paper: Table 2 of the paper ({dataset_name(dataset)}; it does not say which model). "
        "Ours: mean ± SD over seeds on the same dataset, per model; Δ = ours − paper."
    ]
    title = f"Paper's Table 2 ({dataset_name(dataset)}) beside ours"
    if not rows:  # one sentence, not an empty table
        why = (
            f"Nothing to compare: this grid has no runs on {dataset_name(dataset)}, the dataset of "
            "the paper's Table 2."
        )
        table = TextTable(title=title, header=["Comparison"], rows=[[why]], align="l")
        return table, pd.DataFrame({"note": [why]}), []
    table = TextTable(
        title=title,
        header=header,
        rows=rows,
        align="ll" + "rrr" * len(COMPARED),
        notes=notes + orderings,
        label="tab:paper-comparison",
        rule_before=rule_before,
        # LaTeX names the metric once in the spanning header, then "Paper / Ours / Δ" under it.
        latex_header=[("", "Model"), ("", "Variant")]
        + [(METRIC_BY_COLUMN[c].label, sub) for c, _ in COMPARED for sub in ("Paper", "Ours", "Δ")],
    )
    return table, pd.DataFrame(records), orderings


# --------------------------------------------------------------------------------------------
# Output layout and CLI


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
    runs, pairs, ds, ms = read_selection(summary_dir, datasets, models)
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the paper's Tables 1 and 2.")
    add_selection_args(parser)
    return run_report_cli(
        parser,
        argv,
        lambda a: write_tables(a.summary_dir, a.out_dir, a.datasets, a.models),
        "table",
    )


if __name__ == "__main__":
    sys.exit(main())
