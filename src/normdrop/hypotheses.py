"""Tests of the paper's hypotheses H1-H3 per (dataset, model), with effect sizes over seeds.

The tests are data (`REGISTRY`; a new hypothesis is one `Hypothesis` entry), read by one routine
each for rows, verdicts and sentences. A test contrasts the paper's four configurations, found by
their (norm, dropout) pair: none = (none, off), bn = (batch, off), dropout = (none, on),
bn_dropout = (batch, on). Its effect is a contrast of means over seeds in the metric's displayed
units; each test predicts its sign. Diverged runs are left out (the sentences count them).

Uncertainty (`normdrop.seed_stats.contrast`): Welch's t-test (unequal variances) over seeds,
`scipy.stats.ttest_ind(..., equal_var=False)`, with its 95% confidence interval for the
difference of means and its two-sided p-value; a contrast of four groups (H3x) uses the same
Welch-Satterthwaite construction. With fewer than 2 finished seeds in a group, or zero spread in
every group, the CI is undefined (NaN).

Verdict rule for one test (from the 95% CI of the effect): "supported" if the CI lies entirely
on the predicted side of 0; "reversed" if entirely on the other side; "inconclusive" if it
contains 0; "inconclusive (too few seeds)" / "(zero variance)" if no CI could be formed;
"inconclusive (variant missing)" if a configuration was not run (or every seed diverged).

A hypothesis' verdict combines its tests of role VERDICT (`combine`): one test gives its own;
H1 needs both parts: "supported" if H1a and H1b are, "reversed" if both are reversed, "not
supported" if either part is reversed otherwise, "partly supported" if one part is supported and
the other inconclusive, else "inconclusive".

CLI: python -m normdrop.hypotheses --summary-dir D --out-dir T [--datasets ...] [--models ...]
Outputs: `catalog.hypothesis_paths(T)`.
"""

from __future__ import annotations

import argparse
import html
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from normdrop.catalog import HYPOTHESES_TABLE, METRICS, VERDICTS_TABLE, dataset_name, model_name
from normdrop.render import (
    TextTable,
    fmt_num,
    fmt_p,
    fmt_signed,
    p_text,
    to_html,
    to_latex,
    to_markdown,
    write_table,
)
from normdrop.seed_stats import CONFIDENCE, MISSING, NOT_LEARNED, TOO_FEW, contrast
from normdrop.storage import atomic_write_text
from normdrop.summary_data import (
    add_selection_args,
    completed,
    did_not_learn,
    metric_values,
    paper_variants,
    read_selection,
    run_report_cli,
    select_pairs,
)

SUPPORTED = "supported"
NEEDS_LEARNING = ("convergence_epoch",)  # undefined for a run that did not learn
REVERSED = "reversed"
INCONCLUSIVE = "inconclusive"
PARTLY = "partly supported"
NOT_SUPPORTED = "not supported"
# A test's role: part of its hypothesis' verdict (and sentence); shown in the sentence after the
# verdict's parts; or shown in the tables only.
VERDICT, SENTENCE, TABLE = "verdict", "sentence", "table"


@dataclass(frozen=True)
class HypothesisTest:
    """One test: effect = sum of weight x mean over its terms, in the metric's displayed units.

    A term is (paper key, weight), or (tuple of keys, weight) for the best of them by mean (by
    the metric's better direction, catalog.METRICS). Two terms: a difference, `labels` the two
    variant names; more: a contrast, `labels` given."""

    test: str  # id, e.g. "H1a"
    metric: str  # runs.parquet column
    terms: tuple[tuple[str | tuple[str, ...], int], ...]
    sign: int = -1  # predicted sign of the effect
    role: str = VERDICT
    quantity: str = ""  # words for the sentence (default: the metric's, catalog.METRICS)
    labels: tuple[str, str] = ()  # the two sides of a contrast of more than two terms
    reference: str = ""  # about the second side in the sentence; {mean_b}: its mean

    @property
    def words(self) -> str:
        return self.quantity or METRICS[self.metric].quantity


@dataclass(frozen=True)
class Hypothesis:
    name: str
    wording: str  # short wording for tables and sentences; the paper's own: paper_claims.yaml
    tests: tuple[HypothesisTest, ...]
    meanings: dict = field(default_factory=dict)  # verdict -> what it means, in the sentence


# H1a2: H1a without the first epoch, beside it in the tables (docs/protocol.md: loss SD is
# sensitive to the first epochs; when the two disagree, the first epoch made the difference).
# H3: "best single" is whichever of bn and dropout has the higher mean test accuracy; choosing it
# from the same data makes H3 slightly eager to call the combination worse (read its CI).
# "Inconclusive" matches the paper's own evidence ("does not significantly exceed BN alone") but
# is no evidence of interference. H3x: the 2x2 interaction; < 0 means sub-additive.
BN_VS_NONE = (("bn", 1), ("none", -1))
# fmt: off
REGISTRY = [
    Hypothesis("H1", "BN reduces training instability and accelerates convergence", (
        HypothesisTest("H1a", "loss_sd", BN_VS_NONE),
        HypothesisTest("H1a2", "loss_sd_late", BN_VS_NONE, role=TABLE),
        HypothesisTest("H1b", "convergence_epoch", BN_VS_NONE),
    )),
    Hypothesis("H2", "dropout reduces overfitting, measured as the generalization gap", (
        HypothesisTest("H2", "gen_gap", (("dropout", 1), ("none", -1))),
    )),
    Hypothesis("H3", "BN + dropout is not better than the better of the two alone", (
        HypothesisTest("H3", "final_test_acc", (("bn_dropout", 1), (("bn", "dropout"), -1)),
                       reference="the better single technique, {mean_b}%"),
        HypothesisTest("H3x", "final_test_acc",
                       (("bn_dropout", 1), ("bn", -1), ("dropout", -1), ("none", 1)),
                       role=SENTENCE, quantity="interaction",
                       labels=("(bn_dropout − bn)", "(dropout − none)")),
    ), {
        SUPPORTED: "the combination is clearly below the better single technique",
        REVERSED: "the combination clearly beats the better single technique",
        INCONCLUSIVE: "the combination is not clearly different from the better single technique",
    }),
]
# fmt: on


def wordings() -> dict[str, str]:
    """{hypothesis: its short wording}, in order."""
    return {h.name: h.wording for h in REGISTRY}


def tests() -> dict[str, tuple[Hypothesis, HypothesisTest]]:
    return {t.test: (h, t) for h in REGISTRY for t in h.tests}


# --------------------------------------------------------------------------------------------
# Verdicts


def verdict_from_ci(low: float, high: float, expected_sign: int = -1) -> str:
    """The one-test verdict rule of the module docstring (expected_sign -1: effect < 0)."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return TOO_FEW
    if expected_sign * low > 0 and expected_sign * high > 0:
        return SUPPORTED
    if expected_sign * low < 0 and expected_sign * high < 0:
        return REVERSED
    return INCONCLUSIVE


def combine(*parts: str) -> str:
    """A hypothesis' verdict from its tests' (H1's rule in the module docstring; one test: its
    verdict)."""
    kinds = set(parts)
    if len(kinds) == 1:  # all supported, all reversed, or the same kind of inconclusive
        return parts[0]
    if REVERSED in kinds:
        return NOT_SUPPORTED
    if SUPPORTED in kinds:
        return PARTLY
    return INCONCLUSIVE


# --------------------------------------------------------------------------------------------
# Per (dataset, model)


def _seed_note(runs: pd.DataFrame, variant: str) -> str:
    """Seeds left out: diverged (out of every test), did not learn (out of H1b: no convergence
    epoch, metrics.learned)."""
    sub = runs[runs["variant"] == variant]
    n_div, n_flat = int((~completed(sub)).sum()), int(did_not_learn(sub).sum())
    notes = [f"{n_div}/{len(sub)} seeds diverged"] if n_div else []
    notes += [f"{n_flat}/{len(sub)} seeds did not learn"] if n_flat else []
    return f"{variant}: {', '.join(notes)}" if notes else ""


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def _test_row(test: HypothesisTest, values, names: dict, flat, confidence: float) -> dict:
    """The columns of one test's row that depend on the data: which variants, n, means, effect.
    `flat(key)`: some seeds of that configuration did not learn."""
    pick = max if METRICS[test.metric].better == "higher" else min
    keys = []
    for key, _ in test.terms:  # a tuple of keys: the best of them by mean
        if isinstance(key, tuple):
            present = [k for k in key if len(values(k))]
            key = pick(present, key=lambda k: np.mean(values(k))) if present else key[0]
        keys.append(key)
    groups = [values(k) for k in keys]
    estimate, low, high, p, problem = contrast(groups, [w for _, w in test.terms], confidence)
    if problem == MISSING and test.metric in NEEDS_LEARNING and any(map(flat, keys)):
        problem = NOT_LEARNED  # seeds ran, but no convergence epoch to compare
    if len(keys) == 2:
        a, b = (names.get(k, k) for k in keys)
        n_a, n_b, mean_a, mean_b = len(groups[0]), len(groups[1]), *map(_mean, groups)
    else:
        (a, b), n_a = test.labels, min(map(len, groups))
        n_b, mean_a, mean_b = n_a, math.nan, math.nan
    return dict(comparison=f"{a} − {b}", variant_a=a, variant_b=b, n_a=n_a, n_b=n_b,
                mean_a=mean_a, mean_b=mean_b, effect=estimate, ci_low=low, ci_high=high,
                p_value=p, expected="< 0" if test.sign < 0 else "> 0",
                verdict=problem or verdict_from_ci(low, high, test.sign))  # fmt: skip


def pair_tests(runs: pd.DataFrame, dataset: str, model: str, confidence=CONFIDENCE) -> list[dict]:
    """Every registered test's row (H1a, H1a2, H1b, H2, H3, H3x) for one dataset and model."""
    sub = runs[(runs["dataset"] == dataset) & (runs["model"] == model)]
    names = paper_variants(sub)

    def flat(key: str) -> bool:
        return key in names and bool(did_not_learn(sub[sub["variant"] == names[key]]).any())

    def values(key: str, metric: str) -> np.ndarray:
        if key not in names:
            return np.array([])
        return metric_values(sub[sub["variant"] == names[key]], metric)

    notes = "; ".join(filter(None, (_seed_note(sub, v) for v in names.values())))
    # fmt: off
    return [
        dict(dataset=dataset, model=model, hypothesis=h.name, test=t.test, metric=t.metric,
             quantity=t.words, unit=METRICS[t.metric].unit,
             **_test_row(t, lambda k, m=t.metric: values(k, m), names, flat, confidence),
             diverged_note=notes)
        for h, t in tests().values()
    ]
    # fmt: on


def run_hypothesis_tests(runs: pd.DataFrame, pairs=None, confidence=CONFIDENCE) -> pd.DataFrame:
    """One row per (dataset, model, test); columns as in `pair_tests`."""
    pairs = pairs if pairs is not None else select_pairs(runs)
    rows = [r for d, m in pairs for r in pair_tests(runs, d, m, confidence)]
    return pd.DataFrame(rows)


def _verdict(by: dict, h: Hypothesis) -> str:
    return combine(*(by[t.test]["verdict"] for t in h.tests if t.role == VERDICT))


def verdicts(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, model): the verdict of each hypothesis (H1 combined, H2, H3)."""
    out = []
    for (d, m), g in results.groupby(["dataset", "model"], sort=False):
        by = {r["test"]: r for r in g.to_dict("records")}
        out.append(dict(dataset=d, model=m, **{h.name: _verdict(by, h) for h in REGISTRY}))
    return pd.DataFrame(out)


# --------------------------------------------------------------------------------------------
# Words


def effect_text(row: pd.Series | dict, with_n: bool = True) -> str:
    """'−0.0310 (95% CI −0.0420 to −0.0200, p = 0.003, n = 3 vs 3)'."""
    _, test = tests()[row["test"]]
    metric = METRICS[test.metric]
    d = metric.decimals
    text = fmt_signed(row["effect"], d) + (f" {metric.unit}" if metric.unit else "")
    if np.isfinite(row["ci_low"]):
        text += (
            f" (95% CI {fmt_signed(row['ci_low'], d)} to {fmt_signed(row['ci_high'], d)},"
            f" {p_text(row['p_value'])}"
        )
    else:
        text += " (no CI"
    if with_n and len(test.terms) == 2:
        text += f", n = {row['n_a']} vs {row['n_b']} seeds"
    return text + ")"


def _body(h: Hypothesis, by: dict, verdict: str) -> str:
    """The sentence's middle: the verdict's tests (each with its own verdict when there are
    several), then the tests shown beside them."""
    parts = [by[t.test] for t in h.tests if t.role == VERDICT]
    first, (_, test) = parts[0], tests()[parts[0]["test"]]
    if first["verdict"] == MISSING:
        absent = [v for v, n in ((first["variant_a"], first["n_a"]), (first["variant_b"],
                  first["n_b"])) if n == 0]  # fmt: skip
        return f"not tested: no completed runs of {' and '.join(absent)}"
    body = f"{first['variant_a']} − {first['variant_b']}"
    if test.reference:
        mean_b = fmt_num(first["mean_b"], METRICS[test.metric].decimals)
        body += f" ({test.reference.format(mean_b=mean_b)})"
    if len(parts) == 1:
        body += f": {test.words} {effect_text(first)}"
        body += f", i.e. {h.meanings[verdict]}" if verdict in h.meanings else ""
    else:
        body += ": " + ", ".join(
            f"{tests()[r['test']][1].words} {effect_text(r, i == 0)} [{r['verdict']}]"
            for i, r in enumerate(parts)
        )
    for t in (t for t in h.tests if t.role == SENTENCE):
        r = by[t.test]
        body += f"; {t.words} {r['comparison']} = {effect_text(r, False)} [{r['verdict']}]"
    return body


def sentence(
    results: pd.DataFrame, dataset: str, model: str, hypothesis: str, standalone: bool = True
) -> str:
    """One sentence for the report: the verdict, with effect sizes and CIs.

    standalone=False leaves out the hypothesis' wording (for a list under its own heading).
    """
    g = results[(results["dataset"] == dataset) & (results["model"] == model)]
    by = {r["test"]: r for _, r in g.iterrows()}
    h = next(h for h in REGISTRY if h.name == hypothesis)
    verdict = _verdict(by, h)
    where = f"{dataset_name(dataset)} / {model_name(model)}"
    note = g["diverged_note"].iloc[0] if len(g) else ""
    tail = f" Diverged runs left out ({note})." if note else ""
    if standalone:
        where += f", {hypothesis} ({h.wording})"
    return f"{where}: {verdict}. {_body(h, by, verdict)}.{tail}"


def sentences(results: pd.DataFrame, standalone: bool = False) -> dict[str, list[str]]:
    """{hypothesis: [sentence per (dataset, model)]}, for lists under a heading per hypothesis."""
    pairs = list(dict.fromkeys(zip(results["dataset"], results["model"], strict=True)))
    return {
        h.name: [sentence(results, d, m, h.name, standalone) for d, m in pairs] for h in REGISTRY
    }


# --------------------------------------------------------------------------------------------
# Tables


def results_table(results: pd.DataFrame) -> TextTable:
    rows, rule_before, last = [], set(), None
    for _, r in results.iterrows():
        _, test = tests()[r["test"]]
        metric = METRICS[test.metric]
        if (r["dataset"], r["model"]) != last:
            rule_before.add(len(rows))
            last = (r["dataset"], r["model"])
        d = metric.decimals
        ci = f"[{fmt_signed(r['ci_low'], d)}, {fmt_signed(r['ci_high'], d)}]"
        ci = ci if np.isfinite(r["ci_low"]) else "n/a"
        n = f"{r['n_a']} vs {r['n_b']}" if len(test.terms) == 2 else f"≥{r['n_a']} per group"
        label = f"{test.test}: {test.words}" + (f" ({metric.unit})" if metric.unit else "")
        where = [dataset_name(r["dataset"]), model_name(r["model"]), label, r["comparison"], n]
        rows.append([*where, fmt_signed(r["effect"], d), ci, fmt_p(r["p_value"]), r["verdict"]])
    return TextTable(
        title="Hypothesis tests: effect = difference of means over seeds",
        header=["Dataset", "Model", "Test", "Effect of", "Seeds"]
        + ["Effect", "95% CI", "p", "Verdict"],
        rows=rows,
        align="lllllrrrl",
        notes=[
            "Welch's t-test over seeds (two-sided p, 95% CI of the difference of means). Every "
            "hypothesis predicts a negative effect. Verdict: supported if the CI is below 0, "
            "reversed if above 0, inconclusive if it contains 0 or cannot be formed. H1a2 is H1a "
            "without the first epoch, shown beside it (H1's verdict uses H1a, the paper's "
            "definition). H3x is the 2x2 interaction (negative: sub-additive), shown beside H3."
        ],
        label="tab:hypotheses",
        rule_before=rule_before,
    )


def verdict_table(matrix: pd.DataFrame) -> TextTable:
    words = wordings()
    rows = [
        [dataset_name(r["dataset"]), model_name(r["model"]), *(r[h] for h in words)]
        for r in matrix.to_dict("records")
    ]
    return TextTable(
        title="Verdicts per dataset and model",
        header=["Dataset", "Model"] + [f"{h}: {text}" for h, text in words.items()],
        rows=rows,
        align="ll" + "l" * len(words),
        notes=[f"{h}: {text}." for h, text in words.items()]
        + ["Rules in normdrop/hypotheses.py; details in the hypothesis-test table."],
        label="tab:verdicts",
        latex_header=["Dataset", "Model", *words],  # the wording goes in the notes
    )


def write_hypotheses(summary_dir, out_dir, datasets=None, models=None) -> list[Path]:
    """Every file of `catalog.hypothesis_paths(out_dir)`, for the selected datasets and models."""
    runs, pairs, _, _ = read_selection(summary_dir, datasets, models)
    results = run_hypothesis_tests(runs, pairs)
    out = Path(out_dir)
    table = results_table(results)
    words = sentences(results)
    md = to_markdown(table) + "\n"
    for h, lines in words.items():
        md += f"\n**{h}: {wordings()[h]}**\n\n" + "".join(f"- {s}\n" for s in lines)
    stem = out / HYPOTHESES_TABLE
    paths = [
        atomic_write_text(stem.with_suffix(".md"), md),
        atomic_write_text(stem.with_suffix(".tex"), to_latex(table)),
        atomic_write_text(stem.with_suffix(".html"), to_html(table, after=_sentences_html(words))),
        atomic_write_text(stem.with_suffix(".csv"), results.to_csv(index=False)),
    ]
    matrix = verdicts(results)
    paths += write_table(verdict_table(matrix), out / VERDICTS_TABLE, matrix)
    return paths


def _sentences_html(words: dict[str, list[str]]) -> str:
    return "".join(
        f"<h4>{h}: {html.escape(wordings()[h])}</h4><ul>"
        + "".join(f"<li>{html.escape(s)}</li>" for s in lines)
        + "</ul>"
        for h, lines in words.items()
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Test the paper's hypotheses H1-H3.")
    add_selection_args(parser)
    return run_report_cli(
        parser,
        argv,
        lambda a: write_hypotheses(a.summary_dir, a.out_dir, a.datasets, a.models),
        "hypothesis",
    )


if __name__ == "__main__":
    sys.exit(main())
