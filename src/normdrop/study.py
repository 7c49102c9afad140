"""A study beyond the paper (`studies/*.yaml`): its figure and its table of effects per value.

A study sweeps one axis -- the batch size, the dropout rate, or the depth of the 6n+2 ResNets --
for a few variant families (a family is a variant before the sweep: `bn` for `bn_bs16`,
`bn_bs32`, ...). Its config's `study` section names the axis and the effects to test:

    effects:
      - {name: BN − GroupNorm, metric: final_test_acc, plus: [bn], minus: [gn]}
      - {name: ..., metric: gen_gap, plus: [dropout], minus: [dropout], minus_at: 0}

An effect at axis value x is sum(mean of each `plus` family at x) − sum(mean of each `minus`
family at x, or at `minus_at`), over seeds, in the metric's displayed units (accuracy in %, gap
in points); an entry `family@v` is taken at axis value v instead (the interaction per norm of
studies/transformer.yaml: plus [layernorm, no_norm@0] minus [layernorm@0, no_norm]). Two
groups: Welch's t-test; four (the H3 interaction, plus [bn_dropout, none] minus [bn, dropout]):
the Welch-Satterthwaite contrast of `seed_stats.contrast`. 95% CI per value and
a verdict that only says on which side of 0 the CI lies, since a study asks where an effect
turns rather than testing one direction.

Outputs (`catalog.study_paths`):
- `{tables}/study_effects.{md,csv,tex,html}`: one row per (dataset, model, effect, axis value);
- `{figures}/study_metrics.{png,pdf}`: final test accuracy, generalization gap, loss SD and
  convergence epoch against the axis (log2 for the batch size), one line per family in the
  paper's colours (`figure_style.variant_styles`), mean over seeds with a band of ± 1 SD (an
  accuracy's band cut to [0, 100] %); one row of
  panels per dataset and model (per dataset for the depth axis, whose models are the x values).

CLI: python -m normdrop.study --summary-dir S --tables-dir T --figures-dir F --study-json '{..}'
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from normdrop.catalog import (
    EFFECT_METRICS,
    METRICS,
    STUDY_FIGURE,
    STUDY_METRICS,
    STUDY_TABLE,
    UNIT_ABBREVIATIONS,
    dataset_name,
    model_name,
)
from normdrop.figure_style import (
    BAND_ALPHA,
    RC,
    accuracy_axis,
    clip_to_accuracy,
    legend_below,
    new_figure,
    no_data,
    save_figure,
    variant_styles,
)
from normdrop.grid import model_depth
from normdrop.render import TextTable, fmt_num, fmt_signed, write_table
from normdrop.seed_stats import CONFIDENCE, MISSING, NOT_LEARNED, contrast
from normdrop.summary_data import (
    DATASET_ORDER,
    SummaryError,
    did_not_learn,
    metric_values,
    ordered,
    read_summary,
)

AXIS_LABELS = {
    "batch_size": "Batch size",
    "dropout_rate": "Dropout rate",
    "depth": "ResNet depth (layers)",
}
PANELS = tuple((c, METRICS[c].panel_title) for c in STUDY_METRICS)  # (runs column, title)
EFFECT_UNITS = {c: UNIT_ABBREVIATIONS[METRICS[c].unit] for c in EFFECT_METRICS}
POSITIVE, NEGATIVE, UNCLEAR = "> 0 (CI above 0)", "< 0 (CI below 0)", "inconclusive (CI has 0)"


def with_axis(runs: pd.DataFrame, axis: str) -> pd.DataFrame:
    """`runs` with the axis value of every run in column `x`."""
    if axis == "depth":
        x = runs["model"].map(model_depth)
    else:
        x = pd.to_numeric(runs[axis], errors="coerce")
    return runs.assign(x=x.astype(float))


def panel_groups(runs: pd.DataFrame, axis: str) -> list[tuple[str, str | None]]:
    """(dataset, model) per row of panels; model None when the models are the axis (depth)."""
    datasets = ordered(runs["dataset"], DATASET_ORDER)
    if axis == "depth":
        return [(d, None) for d in datasets]
    pairs = set(zip(runs["dataset"], runs["model"], strict=True))
    return [(d, m) for d in datasets for m in sorted({m for dd, m in pairs if dd == d})]


def _group(runs: pd.DataFrame, dataset: str, model: str | None) -> pd.DataFrame:
    sub = runs[runs["dataset"] == dataset]
    return sub if model is None else sub[sub["model"] == model]


def _model_text(model: str | None) -> str:
    return "ResNet-6n+2" if model is None else model_name(model)


def family_styles(runs: pd.DataFrame) -> dict:
    """The paper's colour per family, identified by its (norm, dropout-on-somewhere) pair."""
    fam = runs.groupby("family", sort=False).agg(norm=("norm", "first"), dropout=("dropout", "any"))
    frame = fam.reset_index().rename(columns={"family": "variant"})
    return variant_styles(frame)


# --------------------------------------------------------------------------------------------
# Effects per value


def pinned(family: str, x: float) -> tuple[str, float]:
    """(family, axis value) of an effect's entry: `name` is taken at x, `name@v` at v."""
    name, _, at = family.partition("@")
    return name, float(at) if at else float(x)


def _verdict(low: float, high: float, problem: str | None) -> str:
    if problem:
        return problem
    if low > 0:
        return POSITIVE
    if high < 0:
        return NEGATIVE
    return UNCLEAR


def effects(runs: pd.DataFrame, study: dict, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """One row per (dataset, model, effect, axis value): the contrast, its CI, p and verdict."""
    runs = with_axis(runs, study["axis"])
    rows = []
    for dataset, model in panel_groups(runs, study["axis"]):
        sub = _group(runs, dataset, model)
        for effect in study["effects"]:
            metric, ref = effect["metric"], effect.get("minus_at")
            for x in sorted(sub["x"].dropna().unique()):
                plus_at = [pinned(f, x) for f in effect["plus"]]
                minus_at = [pinned(f, x if ref is None else ref) for f in effect["minus"]]
                if sorted(plus_at) == sorted(minus_at):
                    continue  # the same groups on both sides: zero by construction

                def select(family, at, sub=sub):
                    return sub[(sub["family"] == family) & np.isclose(sub["x"], at)]

                plus = [metric_values(select(f, at), metric) for f, at in plus_at]
                minus = [metric_values(select(f, at), metric) for f, at in minus_at]
                groups = plus + minus
                weights = [1.0] * len(plus) + [-1.0] * len(minus)
                estimate, low, high, p, problem = contrast(groups, weights, confidence)
                if problem == MISSING and metric == "convergence_epoch":
                    flat = [did_not_learn(select(f, at)).any() for f, at in plus_at + minus_at]
                    problem = NOT_LEARNED if any(flat) else problem  # no epoch to compare
                rows.append(
                    dict(
                        dataset=dataset,
                        model=model or "",
                        effect=effect["name"],
                        metric=metric,
                        unit=EFFECT_UNITS[metric],
                        axis=study["axis"],
                        value=float(x),
                        reference=float(ref) if ref is not None else np.nan,
                        n_min=min(map(len, groups)),
                        estimate=estimate,
                        ci_low=low,
                        ci_high=high,
                        p_value=p,
                        verdict=_verdict(low, high, problem),
                    )
                )
    return pd.DataFrame(rows)


def _value_text(value: float) -> str:
    return f"{value:g}"


def effects_table(results: pd.DataFrame, study: dict) -> TextTable:
    axis = study["axis"]
    rows, rule_before, last = [], set(), None
    for r in results.itertuples():
        key = (r.dataset, r.model, r.effect)
        if key != last:
            rule_before.add(len(rows))
            last = key
        d = METRICS[r.metric].decimals
        ci = (
            f"[{fmt_signed(r.ci_low, d)}, {fmt_signed(r.ci_high, d)}]"
            if np.isfinite(r.ci_low)
            else "n/a"
        )
        metric = METRICS[r.metric].label
        value = _value_text(r.value)
        if np.isfinite(r.reference):
            value += f" vs {_value_text(r.reference)}"
        rows.append(
            [
                dataset_name(r.dataset),
                _model_text(r.model or None),
                f"{r.effect}: {metric}",
                value,
                str(r.n_min),
                fmt_signed(r.estimate, d),
                ci,
                fmt_num(r.p_value, 3),
                r.verdict,
            ]
        )
    return TextTable(
        title=f"Study '{study['name']}': effect per {AXIS_LABELS[axis].lower()}",
        header=[
            "Dataset",
            "Model",
            "Effect",
            AXIS_LABELS[axis],
            "Seeds (min)",
            "Effect",
            "95% CI",
            "p",
            "Verdict",
        ],
        rows=rows,
        align="lllrrrrrl",
        notes=[
            study["question"],
            "Effect: difference of means over seeds in the metric's displayed units (accuracy "
            "in %, gap in points); a four-group effect is the 2x2 interaction contrast. Welch's "
            "t-test (Welch-Satterthwaite for four groups), two-sided p, 95% CI. The verdict says "
            "on which side of 0 the CI lies; 'inconclusive' when it contains 0.",
        ],
        label=f"tab:study-{study['name']}",
        rule_before=rule_before,
    )


# --------------------------------------------------------------------------------------------
# Figure


def _x_axis(ax, axis: str, values: Sequence[float]) -> None:
    if axis == "batch_size":
        ax.set_xscale("log", base=2)
    ax.set_xticks(list(values))
    ax.set_xticklabels([_value_text(v) for v in values])
    ax.minorticks_off()
    ax.set_xlabel(AXIS_LABELS[axis])


def plot_study(runs: pd.DataFrame, study: dict):
    axis = study["axis"]
    runs = with_axis(runs, axis)
    styles = family_styles(runs)
    groups = panel_groups(runs, axis)
    fig = new_figure((1.0 + 3.3 * len(PANELS), 1.4 + 2.7 * len(groups)))
    axes = np.atleast_2d(fig.subplots(len(groups), len(PANELS), squeeze=False))
    xs = sorted(runs["x"].dropna().unique())
    for row, (dataset, model) in enumerate(groups):
        sub = _group(runs, dataset, model)
        for col, (column, title) in enumerate(PANELS):
            ax = axes[row, col]
            accuracy = column == "final_test_acc"
            drew = False
            for fam, st in styles.items():
                points = []
                for x in xs:
                    sel = sub[(sub["family"] == fam) & np.isclose(sub["x"], x)]
                    v = metric_values(sel, column)
                    if len(v):
                        sd = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
                        points.append((x, float(np.mean(v)), sd))
                if not points:
                    continue
                x_, mean, sd = map(np.array, zip(*points, strict=True))
                low, high = clip_to_accuracy(mean, sd) if accuracy else (mean - sd, mean + sd)
                ax.plot(x_, mean, color=st.color, marker=st.marker, linestyle=st.linestyle, lw=1.6)
                ax.fill_between(x_, low, high, color=st.color, alpha=BAND_ALPHA, lw=0)
                drew = True
            if not drew:
                no_data(ax)
            elif accuracy:
                accuracy_axis(ax)
            _x_axis(ax, axis, xs)
            ax.set_title(f"{dataset_name(dataset)}, {_model_text(model)}\n{title}", fontsize=9)
    handles = [
        Line2D([], [], color=s.color, marker=s.marker, linestyle=s.linestyle, label=s.label)
        for s in styles.values()
    ]
    handles.append(Patch(color="0.5", alpha=BAND_ALPHA + 0.1, label="mean ± SD over seeds"))
    legend_below(fig, handles, ncols=min(len(handles), 5))
    fig.suptitle(f"Study '{study['name']}': {study['question']}", fontsize=11)
    return fig


# --------------------------------------------------------------------------------------------
# CLI


def write_study(summary_dir, tables_dir, figures_dir, study: dict) -> list[Path]:
    runs = read_summary(summary_dir, "runs")
    if "family" not in runs.columns:
        raise SummaryError(f"{summary_dir}/runs.parquet has no 'family' column; rerun aggregate")
    results = effects(runs, study)
    written = write_table(effects_table(results, study), Path(tables_dir) / STUDY_TABLE, results)
    with matplotlib.rc_context(RC):
        written += save_figure(plot_study(runs, study), Path(figures_dir) / STUDY_FIGURE)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A study's effect table and figure.")
    parser.add_argument("--summary-dir", required=True, type=Path)
    parser.add_argument("--tables-dir", required=True, type=Path)
    parser.add_argument("--figures-dir", required=True, type=Path)
    parser.add_argument("--study-json", required=True, help="the config's `study` section")
    args = parser.parse_args(argv)
    try:
        paths = write_study(
            args.summary_dir, args.tables_dir, args.figures_dir, json.loads(args.study_json)
        )
    except SummaryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} study files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
