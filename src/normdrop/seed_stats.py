"""Statistics over seeds: mean ± SD per variant, and the Welch contrast between variants.

- `variant_stats`: per (dataset, model, variant), the run counts and mean, SD (ddof=1) and n of
  every displayed metric over the seeds that completed (Table 2, the paper comparison).
- `contrast`: sum(w_i * mean_i) over independent groups of seeds with its Welch-Satterthwaite
  CI and p-value; two groups with weights (1, -1) are scipy's Welch t-test
  (`scipy.stats.ttest_ind(..., equal_var=False)`). Used by the hypothesis tests
  (normdrop.hypotheses) and a study's effects (normdrop.study).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from normdrop.summary_data import (
    METRICS,
    completed,
    describe_variant,
    did_not_learn,
    metric_values,
)

CONFIDENCE = 0.95

# Why a contrast has no CI; these words are also the verdicts shown for it.
TOO_FEW = "inconclusive (too few seeds)"
ZERO_VAR = "inconclusive (zero variance)"
MISSING = "inconclusive (variant missing)"
NOT_LEARNED = "inconclusive (did not learn)"  # runs exist, none with a convergence epoch


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
            n_not_learned=int(did_not_learn(group).sum()),  # no convergence epoch
            diverged_epochs=", ".join(f"{e:g}" for e in sorted(set(diverged_epochs.dropna()))),
        )
        for metric in METRICS:
            mean, sd, n = mean_sd(metric_values(group, metric.column))
            row[f"{metric.csv_name}_mean"] = mean
            row[f"{metric.csv_name}_sd"] = sd
            row[f"{metric.csv_name}_n"] = n
        rows.append(row)
    return pd.DataFrame(rows)


def contrast(groups: Sequence[np.ndarray], weights: Sequence[float], confidence=CONFIDENCE):
    """Welch-Satterthwaite test of sum(w_i * mean_i) = 0 over independent groups.

    Returns (estimate, ci_low, ci_high, p_value, problem); problem is None, MISSING (a group
    is empty), TOO_FEW (a group has one value) or ZERO_VAR (no spread in any group).
    For two groups with weights (1, -1) it equals scipy's Welch t-test.
    """
    ns = [len(g) for g in groups]
    if min(ns) == 0:
        return math.nan, math.nan, math.nan, math.nan, MISSING
    estimate = float(sum(w * np.mean(g) for w, g in zip(weights, groups, strict=True)))
    if min(ns) < 2:
        return estimate, math.nan, math.nan, math.nan, TOO_FEW
    terms = [w * w * np.var(g, ddof=1) / len(g) for w, g in zip(weights, groups, strict=True)]
    se2 = float(sum(terms))
    if se2 <= 0 or not np.isfinite(se2):
        return estimate, math.nan, math.nan, math.nan, ZERO_VAR
    if len(groups) == 2 and list(weights) == [1, -1]:
        with warnings.catch_warnings():
            # Nearly identical seeds make scipy warn about precision; the CI is still right.
            warnings.simplefilter("ignore", RuntimeWarning)
            res = sps.ttest_ind(groups[0], groups[1], equal_var=False)
        ci = res.confidence_interval(confidence)
        return estimate, float(ci.low), float(ci.high), float(res.pvalue), None
    df = se2**2 / sum(t * t / (len(g) - 1) for t, g in zip(terms, groups, strict=True))
    se = math.sqrt(se2)
    half = float(sps.t.ppf(0.5 + confidence / 2, df)) * se
    p = float(2 * sps.t.sf(abs(estimate) / se, df))
    return estimate, estimate - half, estimate + half, p, None
