"""Did B reproduce A? Two results folders compared cell by cell, seed by seed.

    python -m normdrop.compare A B [--out-dir DIR] [--datasets ...] [--models ...]

A and B are results folders (config key `results_dir`), each with its aggregate's
`summary/runs.parquet`. The comparison pairs the cells (dataset, model, variant) and, within a
cell, the seeds, and shows:

- the settings that differ, from runs.parquet and each run's meta.json (settings, versions,
  device, code revision, data file, `accounting`), protocol first (epochs, batch size, ...).
  Different datasets or models are refused with one line (--datasets/--models pick common ones).
- per metric of Table 2 and per cell: A and B (mean ± SD over seeds), B − A with its 95% CI, and
  whether the CI excludes zero. Where A and B hold the same finished seeds the CI is the paired
  t-interval over the seeds' differences (`scipy.stats.ttest_rel`); otherwise Welch's
  (`normdrop.seed_stats.contrast`). Across the cells of one metric the p-values are
  Holm-corrected: a difference is marked "yes" where it holds after the correction, "unadj." where
  only the uncorrected CI excludes zero. Identical values (a folder against itself) give B − A = 0
  with the CI [0, 0].
- H1-H3 verdicts of A and B side by side (normdrop.hypotheses on each folder), flips first.
- one figure: per cell and metric, A and B as mean ± SD with the seeds as dots.

Outputs under --out-dir (default: print the Markdown only): comparison.md (all of it),
comparison.html (all of it, for a report), comparison_{settings,metrics,verdicts}.{md,tex,html,csv}
and comparison.{png,pdf}. Bad input: one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from scipy import stats as sps

from normdrop import hypotheses as hyp
from normdrop import layout
from normdrop.catalog import METRICS, PLOTTED_METRICS, dataset_name, model_name
from normdrop.config import EXECUTION_FIELDS, current_names
from normdrop.figure_style import RC, clip_to_accuracy, legend_below, new_figure, save_figure
from normdrop.render import (
    TextTable,
    fmt_mean_sd,
    fmt_p,
    fmt_signed,
    to_html,
    to_markdown,
    write_table,
)
from normdrop.seed_stats import CONFIDENCE, MISSING, TOO_FEW, contrast
from normdrop.storage import atomic_write_text
from normdrop.summary_data import (
    DATASET_ORDER,
    MODEL_ORDER,
    SummaryError,
    completed,
    order_variants,
    ordered,
    read_summary,
    select_pairs,
)

CELL = ["dataset", "model", "variant"]
NOT_RECORDED = "not recorded"  # also for NaN (v != v)
SHA = re.compile(r"\b([0-9a-f]{12})[0-9a-f]{28}\b")  # a git revision, shown by 12 digits
# Per-run keys that are not settings to compare (they name the run, or differ every time).
NOT_COMPARED = {"dataset", "model", "variant", "seed", "hostname", "started_at", "finished_at"}
NOT_COMPARED |= {"tensorboard_dir", "data_file", "gpu_lease", "cuda_visible_devices"}
PROVENANCE_KEYS = ("git_revision", "device", "data_sha256", "platform")
SUMMARY_SETTINGS = dict.fromkeys(("epochs", "batch_size", "dropout_rate", "lr"), "protocol")
SUMMARY_SETTINGS |= dict.fromkeys(("git_revision", "device"), "provenance")


class CompareError(Exception):
    """Two folders that cannot be compared, or a folder without a summary: one line."""


# --------------------------------------------------------------------------------------------
# Reading a folder


def run_settings(results: Path, runs: pd.DataFrame) -> pd.DataFrame:
    """Per training run: cell, seed, each compared setting as text (runs.parquet's, meta.json's)."""
    cols = {c: kind for c, kind in SUMMARY_SETTINGS.items() if c in runs.columns}
    rows = []
    for r in runs[CELL + ["seed", *cols]].to_dict("records"):
        keys = dict({c: r[c] for c in CELL}, seed=str(r["seed"]))
        meta_path = Path(layout.run_files(results, "train", **keys)["meta.json"])
        flat = _flatten_meta(json.loads(meta_path.read_text())) if meta_path.is_file() else {}
        rows.append({**keys, **{f"{k}:{c}": str(r[c]) for c, k in cols.items()}, **flat})
    return pd.DataFrame(rows)


def _flatten_meta(meta: dict) -> dict[str, str]:
    """meta.json as {kind:key: value text}; kind is protocol, execution or provenance."""
    flat = {}
    for key, value in current_names(meta.get("settings", {})).items():
        if key not in NOT_COMPARED:
            kind = "execution" if key in EXECUTION_FIELDS else "protocol"
            flat[f"{kind}:{key}"] = value
    flat["protocol:lr"] = meta.get("lr")  # chosen by the learning-rate search
    for name, version in (meta.get("versions") or {}).items():
        flat[f"provenance:{name}"] = version
    for key in PROVENANCE_KEYS:
        if key in meta:
            flat[f"provenance:{key}"] = meta[key]
    for key in ("gpu_name", "gpu_driver", "git_dirty"):  # meta.json's accounting (issue 25)
        if key in (meta.get("accounting") or {}):
            flat[f"provenance:{key}"] = meta["accounting"][key]
    return {k: json.dumps(v) if isinstance(v, list | dict) else str(v) for k, v in flat.items()}


def read_folder(results: Path, datasets=None, models=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs.parquet of the selected datasets and models, their settings)."""
    try:
        runs = read_summary(layout.summary_dir(results), "runs")
        select_pairs(runs, datasets, models, source=str(results))  # a named pair must exist
    except SummaryError as exc:
        raise CompareError(str(exc)) from exc
    runs = runs[runs["dataset"].isin(datasets or runs["dataset"])]
    runs = runs[runs["model"].isin(models or runs["model"])].reset_index(drop=True)
    return runs, run_settings(results, runs)


def check_comparable(a: pd.DataFrame, b: pd.DataFrame) -> None:
    for what in ("dataset", "model"):
        sa, sb = set(a[what]), set(b[what])
        if sa != sb:
            raise CompareError(
                f"cannot compare: A has {what}s {', '.join(sorted(sa))}, B has "
                f"{', '.join(sorted(sb))}; compare folders of the same {what}s, or pick common "
                f"ones with --{what}s"
            )


# --------------------------------------------------------------------------------------------
# Settings that differ


def setting_differences(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """One row per setting whose values differ in some cell present in both: kind, setting,
    the values in A and in B (over those cells), and how many cells differ."""
    keys = sorted((set(a.columns) | set(b.columns)) - {*CELL, "seed"})

    def values(frame: pd.DataFrame) -> dict[tuple, dict[str, set]]:  # cell -> key -> values
        out: dict[tuple, dict[str, set]] = {}
        for r in frame.to_dict("records"):
            cell = out.setdefault(tuple(r[c] for c in CELL), {k: set() for k in keys})
            for k in keys:
                v = r.get(k)
                cell[k].add(NOT_RECORDED if v is None or v != v else SHA.sub(r"\1", str(v)))
        return out

    cells_a, cells_b = values(a), values(b)
    common = sorted(set(cells_a) & set(cells_b))
    rows, one_sided = [], []
    for key in keys:
        if any(
            all(cells[c][key] == {NOT_RECORDED} for c in common) for cells in (cells_a, cells_b)
        ):
            one_sided.append(key.partition(":")[2])  # recorded by one folder only: not compared
            continue
        differ = [c for c in common if cells_a[c][key] != cells_b[c][key]]
        if differ:
            va = set().union(*(cells_a[c][key] for c in differ))
            vb = set().union(*(cells_b[c][key] for c in differ))
            kind, _, name = key.partition(":")
            a_text, b_text = ", ".join(sorted(va)), ", ".join(sorted(vb))
            rows.append(dict(kind=kind, setting=name, a=a_text, b=b_text, cells=len(differ),
                             of_cells=len(common)))  # fmt: skip
    order = {"protocol": 0, "execution": 1, "provenance": 2}
    frame = pd.DataFrame(rows, columns=["kind", "setting", "a", "b", "cells", "of_cells"])
    frame = frame.sort_values("kind", key=lambda s: s.map(order), kind="stable")
    frame.attrs["one_sided"] = one_sided
    return frame


# --------------------------------------------------------------------------------------------
# Differences per metric and cell


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN). Neither scipy nor the lock's other
    packages have it (scipy's false_discovery_control is Benjamini-Hochberg): p_(i) times
    (m - i + 1), made monotone, capped at 1."""
    p = np.asarray(p_values, float)
    out = np.full_like(p, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite])]
    m = len(order)
    running = 0.0
    for i, idx in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[idx]))
        out[idx] = running
    return out


def _seed_values(runs: pd.DataFrame, column: str) -> pd.Series:
    """Finite values of one metric per finished seed, in displayed units, indexed by seed."""
    done = runs[runs["_done"]] if "_done" in runs else runs[completed(runs)]
    values = pd.to_numeric(done[column], errors="coerce") * METRICS[column].scale
    return pd.Series(values.to_numpy(float), index=done["seed"].astype(int)).dropna()


def difference(a: pd.Series, b: pd.Series, confidence: float = CONFIDENCE) -> dict:
    """B − A over seeds: paired where both hold the same seeds (at least 2), else Welch."""
    out = dict(n_a=len(a), n_b=len(b), mean_a=a.mean(), sd_a=a.std(), mean_b=b.mean(),
               sd_b=b.std(), diff=np.nan, ci_low=np.nan, ci_high=np.nan, p=np.nan)  # fmt: skip
    if not len(a) or not len(b):
        return dict(out, test=MISSING)
    out["diff"] = float(b.mean() - a.mean())
    if len(a) >= 2 and set(a.index) == set(b.index):
        d = b - a.reindex(b.index)
        out["test"] = f"paired (n={len(d)})"
        if (d == 0).all():  # identical seeds: no difference, and certainly so
            return dict(out, ci_low=0.0, ci_high=0.0, p=1.0)
        if np.ptp(d.to_numpy()) == 0:
            return dict(out, test="no spread")  # a constant difference: no t-interval
        with warnings.catch_warnings():  # nearly equal differences: scipy warns, CI still right
            warnings.simplefilter("ignore", RuntimeWarning)
            res = sps.ttest_rel(b.to_numpy(), a.reindex(b.index).to_numpy())
        ci = res.confidence_interval(confidence)
        return dict(out, ci_low=float(ci.low), ci_high=float(ci.high), p=float(res.pvalue))
    est, low, high, p, problem = contrast([b.to_numpy(), a.to_numpy()], [1, -1], confidence)
    if problem == TOO_FEW:
        return dict(out, test=problem)
    if problem and np.array_equal(np.sort(a.to_numpy()), np.sort(b.to_numpy())):
        return dict(out, test=f"Welch ({len(a)} vs {len(b)})", ci_low=0.0, ci_high=0.0, p=1.0)
    return dict(out, test=problem or f"Welch ({len(a)} vs {len(b)})", ci_low=low, ci_high=high,
                p=p)  # fmt: skip


def common_cells(a: pd.DataFrame, b: pd.DataFrame):
    """(the cells in both, in display order; A's runs per cell; B's runs per cell)."""
    # Grouped once, each run marked finished or not once: pandas' string columns are slow.
    by_a, by_b = (dict(tuple(f.assign(_done=completed(f)).groupby(CELL, sort=False)))
                  for f in (a, b))  # fmt: skip
    ds = ordered(a["dataset"], DATASET_ORDER)
    ms = ordered(a["model"], MODEL_ORDER)
    vs = order_variants(pd.concat([a, b]))
    cells = sorted(set(by_a) & set(by_b), key=lambda c: (ds.index(c[0]), ms.index(c[1]),
                                                         vs.index(c[2])))  # fmt: skip
    return cells, by_a, by_b


def metric_differences(a: pd.DataFrame, b: pd.DataFrame, confidence=CONFIDENCE) -> pd.DataFrame:
    """One row per (metric, cell in both folders): A, B, B − A, CI, p, Holm-adjusted p, mark."""
    cells, by_a, by_b = common_cells(a, b)
    rows = []
    for metric in METRICS.values():
        block = []
        for cell in cells:
            va, vb = (_seed_values(by[cell], metric.column) for by in (by_a, by_b))
            res = difference(va, vb, confidence)
            block.append(dict(metric=metric.column, **dict(zip(CELL, cell, strict=True)), **res))
        p_holm = holm([r["p"] for r in block])
        for r, ph in zip(block, p_holm, strict=True):
            excludes = np.isfinite(r["ci_low"]) and (r["ci_low"] > 0 or r["ci_high"] < 0)
            r["p_holm"] = ph
            r["differs"] = "yes" if ph < 1 - confidence else ("unadj." if excludes else "")
        rows += block
    return pd.DataFrame(rows)


def verdict_flips(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """H1-H3 verdicts of A and B per (dataset, model), one row per hypothesis; flips first."""
    va, vb = (hyp.verdicts(hyp.run_hypothesis_tests(r)) for r in (a, b))
    both = va.melt(["dataset", "model"], var_name="hypothesis", value_name="a").merge(
        vb.melt(["dataset", "model"], var_name="hypothesis", value_name="b"),
        on=["dataset", "model", "hypothesis"],
    )
    both["flip"] = both["a"] != both["b"]
    return both.sort_values("flip", ascending=False, kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Tables and the figure


def settings_table(diffs: pd.DataFrame) -> TextTable:
    rows = [[r.kind, r.setting, r.a, r.b, f"{r.cells}/{r.of_cells}"] for r in diffs.itertuples()]
    if not rows:
        rows = [["", "none: every setting compared is the same", "", "", ""]]
    one_sided = ", ".join(diffs.attrs.get("one_sided", []))
    return TextTable(
        title="Settings that differ between A and B",
        header=["Kind", "Setting", "A", "B", "Cells"],
        rows=rows,
        align="lllll",
        notes=[
            "From runs.parquet and each run's meta.json. Protocol: what a run computes; "
            "execution: how it ran (same numbers expected); provenance: code, libraries, "
            "machine, data file."
        ]
        + ([f"Recorded in one folder only, not compared: {one_sided}."] if one_sided else []),
        label="tab:comparison-settings",
    )


def metrics_table(diffs: pd.DataFrame, confidence: float = CONFIDENCE) -> TextTable:
    rows, rule_before, last = [], set(), None
    for r in diffs.itertuples():
        m = METRICS[r.metric]
        if r.metric != last:
            rule_before.add(len(rows))
            last = r.metric
        d = m.decimals
        ci = f"[{fmt_signed(r.ci_low, d)}, {fmt_signed(r.ci_high, d)}]"
        ci = ci if np.isfinite(r.ci_low) else "n/a"
        rows.append([m.label, dataset_name(r.dataset), model_name(r.model), r.variant,
                     fmt_mean_sd(r.mean_a, r.sd_a, r.n_a, d),
                     fmt_mean_sd(r.mean_b, r.sd_b, r.n_b, d),
                     fmt_signed(r.diff, d), ci, r.test, fmt_p(r.p_holm), r.differs])  # fmt: skip
    pct = f"{confidence:.0%}"
    return TextTable(
        title="B − A per metric and cell (mean ± SD over seeds)",
        header=[
            "Metric",
            "Dataset",
            "Model",
            "Variant",
            "A",
            "B",
            "B − A",
            f"{pct} CI",
            "Test",
            "p (Holm)",
            "Differs",
        ],  # fmt: skip
        rows=rows,
        align="llll" + "rrrr" + "lrl",
        notes=[
            f"{pct} CI of B − A: paired t over the seeds both folders finished where they are "
            "the same seeds, else Welch's t (unequal variances). p is Holm-corrected across "
            "the cells of one metric. Differs: 'yes' where the difference holds after the "
            "Holm correction, 'unadj.' where only the uncorrected CI excludes 0. Diverged "
            "runs are left out."
        ],  # fmt: skip
        label="tab:comparison-metrics",
        rule_before=rule_before,
    )


def verdicts_table(flips: pd.DataFrame) -> TextTable:
    rows = [[dataset_name(r.dataset), model_name(r.model), r.hypothesis, r.a, r.b,
             "flips" if r.flip else ""] for r in flips.itertuples()]  # fmt: skip
    n = int(flips["flip"].sum())
    return TextTable(
        title=f"H1-H3 verdicts in A and B ({n} flip{'s' if n != 1 else ''}, listed first)",
        header=["Dataset", "Model", "Hypothesis", "A", "B", "Flip"],
        rows=rows,
        align="llllll",
        notes=[f"{h}: {w}." for h, w in hyp.wordings().items()],
        label="tab:comparison-verdicts",
    )


def plot_comparison(a: pd.DataFrame, b: pd.DataFrame, names=("A", "B")):
    """Per metric a panel; per cell A and B as mean ± SD over seeds, seeds as dots."""
    cells, by_a, by_b = common_cells(a, b)
    fig = new_figure((max(7.0, 0.55 * len(cells) + 2), 2.4 * len(PLOTTED_METRICS) + 1))
    axes = fig.subplots(len(PLOTTED_METRICS), 1, sharex=True, squeeze=False)[:, 0]
    colors = ("#4D4D4D", "#0072B2")  # A: the paper's grey, B: its BN blue (figure_style)
    for ax, column in zip(axes, PLOTTED_METRICS, strict=True):
        for k, (by, color) in enumerate(zip((by_a, by_b), colors, strict=True)):
            values = [_seed_values(by[cell], column).to_numpy() for cell in cells]
            xs = np.arange(len(cells)) + (k - 0.5) * 0.3  # A left of the cell's tick, B right
            dots = [(x, y) for x, v in zip(xs, values, strict=True) for y in v]
            if dots:
                ax.plot(*zip(*dots, strict=True), ".", color=color, alpha=0.5, ms=4)
            mean = np.array([v.mean() if len(v) else np.nan for v in values])
            sd = np.array([v.std(ddof=1) if len(v) > 1 else 0.0 for v in values])
            accuracy = METRICS[column].scale == 100.0  # whiskers inside [0, 100] %
            low, high = clip_to_accuracy(mean, sd) if accuracy else (mean - sd, mean + sd)
            ax.errorbar(xs, mean, [mean - low, high - mean], fmt="o", color=color, ms=5, capsize=3)
        ax.set_title(METRICS[column].panel_title, loc="left")
    axes[-1].set_xticks(range(len(cells)), ["/".join(c) for c in cells], rotation=60, ha="right")
    fig.suptitle("A and B per cell: mean ± SD over seeds (dots: seeds)")
    legend_below(fig, [Line2D([], [], color=c, marker="o", linestyle="", label=n)
                       for c, n in zip(colors, names, strict=True)], 2)  # fmt: skip
    return fig


# --------------------------------------------------------------------------------------------
# Files and CLI


def _html_parts(page: str) -> tuple[str, str]:
    """(the <style> blocks, the body) of a page from render.to_html."""
    body = re.search(r"<body>(.*)</body>", page, flags=re.S).group(1)
    return "".join(re.findall(r"<style[^>]*>.*?</style>", page, flags=re.S)), body


def compare(a_dir, b_dir, out_dir=None, datasets=None, models=None, names=("A", "B")) -> str:
    """The comparison as Markdown; with `out_dir`, also every file of the module docstring."""
    (a, sa), (b, sb) = (read_folder(Path(d), datasets, models) for d in (a_dir, b_dir))
    check_comparable(a, b)
    settings, flips = setting_differences(sa, sb), verdict_flips(a, b)
    diffs = metric_differences(a, b)
    tables = {"settings": settings_table(settings), "verdicts": verdicts_table(flips),
              "metrics": metrics_table(diffs)}  # fmt: skip
    head = f"# Comparison\n\nA: `{a_dir}` ({len(a)} runs); B: `{b_dir}` ({len(b)} runs).\n\n"
    unmatched = set(map(tuple, a[CELL].to_numpy())) ^ set(map(tuple, b[CELL].to_numpy()))
    if unmatched:
        head += f"Cells in only one folder (not compared): {', '.join(sorted(map('/'.join, unmatched)))}.\n\n"  # noqa: E501
    text = head + "\n".join(to_markdown(t) for t in tables.values())
    if out_dir is not None:
        out = Path(out_dir)
        for name, frame in (("settings", settings), ("verdicts", flips), ("metrics", diffs)):
            write_table(tables[name], out / f"comparison_{name}", frame)
        atomic_write_text(out / "comparison.md", text)
        parts = [_html_parts(to_html(t)) for t in tables.values()]
        page = to_html(tables["settings"])
        page = page.replace("</head>", "".join(s for s, _ in parts[1:]) + "</head>")
        atomic_write_text(out / "comparison.html", page.replace(
            "</body>", "".join(body for _, body in parts[1:]) + "</body>"))  # fmt: skip
        with matplotlib.rc_context(RC):
            save_figure(plot_comparison(a, b, names), out / "comparison")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m normdrop.compare", description="Compare two results folders (B − A)."
    )
    parser.add_argument("a", type=Path, help="results folder A (the reference)")
    parser.add_argument("b", type=Path, help="results folder B (the rerun)")
    parser.add_argument("--out-dir", type=Path, help="write the tables and figure here")
    parser.add_argument("--datasets", nargs="+", help="compare only these datasets")
    parser.add_argument("--models", nargs="+", help="compare only these models")
    args = parser.parse_args(argv)
    try:
        text = compare(args.a, args.b, args.out_dir, args.datasets, args.models)
    except CompareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
