"""Tests of the paper's hypotheses H1-H3 per (dataset, model), with effect sizes over seeds.

The paper's four configurations are found by their (norm, dropout) pair, not by name:
none = (none, off), bn = (batch, off), dropout = (none, on), bn_dropout = (batch, on). Other
variants (group/layer norm) are not part of these tests. Diverged runs are left out (their
metrics are NaN); the sentences say how many seeds that removed.

Tests (effect = mean of the first group minus mean of the second, in the metric's units):

- H1a  loss SD            bn - none                  hypothesised < 0 (BN steadies training)
- H1a2 loss SD, epochs 2+ bn - none                  the same, without the first epoch: shown
       beside H1a, not part of H1's verdict (docs/protocol.md: loss SD is sensitive to the first
       epochs; when H1a and H1a2 disagree, the first epoch made the difference)
- H1b  convergence epoch  bn - none                  hypothesised < 0 (BN converges sooner)
- H2   generalization gap dropout - none             hypothesised < 0 (points; less overfitting)
- H3   final test acc.    bn_dropout - best single   hypothesised < 0 (points; not additive)
- H3x  final test acc.    (bn_dropout - bn) - (dropout - none), the 2x2 interaction; < 0
       means sub-additive. Shown beside H3, not part of its verdict.

"Best single" is whichever of bn and dropout has the higher mean test accuracy; choosing it from
the same data makes H3 slightly eager to call the combination worse, so read its CI, not only
its verdict.

Uncertainty (`normdrop.seed_stats.contrast`): Welch's t-test (unequal variances) over seeds,
`scipy.stats.ttest_ind(..., equal_var=False)`, with its 95% confidence interval for the
difference of means and its two-sided p-value. H3x uses the same Welch-Satterthwaite
construction for the four-group contrast. With fewer than 2 finished seeds in a group the CI
is undefined (NaN); when every group has zero spread over seeds (e.g. identical convergence
epochs) it is degenerate (NaN too).

Verdict rule for one test (from the 95% CI of the effect):
- "supported":    the CI lies entirely on the hypothesised side of 0;
- "reversed":     the CI lies entirely on the opposite side of 0;
- "inconclusive": the CI contains 0 (no clear effect with these seeds);
- "inconclusive (too few seeds)" / "inconclusive (zero variance)": no CI could be formed;
- "inconclusive (variant missing)": a configuration was not run (or every seed diverged).

For H3, "inconclusive" means the combination is not clearly different from the better single
technique, which matches the paper's own evidence ("does not significantly exceed BN alone") but
is no evidence of interference; "supported" means it is clearly worse, "reversed" clearly better.

H1 as a whole needs both parts: "supported" if H1a and H1b are; "reversed" if both are reversed;
"not supported" if either part is reversed otherwise; "partly supported" if one part is
supported and the other inconclusive; else "inconclusive". H2 and H3 take their test's verdict.

CLI: python -m normdrop.hypotheses --summary-dir D --out-dir T [--datasets ...] [--models ...]
Outputs: `hypothesis_paths(T)`.
"""

from __future__ import annotations

import argparse
import html
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from normdrop.render import (
    TABLE_FORMATS,
    TextTable,
    fmt_num,
    fmt_signed,
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
    dataset_name,
    did_not_learn,
    metric_values,
    model_name,
    paper_variants,
    read_summary,
    run_report_cli,
    select_pairs,
)

SUPPORTED = "supported"
NEEDS_LEARNING = ("convergence_epoch",)  # undefined for a run that did not learn
REVERSED = "reversed"
INCONCLUSIVE = "inconclusive"
PARTLY = "partly supported"
NOT_SUPPORTED = "not supported"


@dataclass(frozen=True)
class HypothesisTest:
    """One test of a hypothesis: which metric, in which words and units."""

    test: str  # id, e.g. "H1a"
    hypothesis: str  # "H1", "H2", "H3"
    metric: str  # runs.parquet column
    quantity: str  # words for the sentence
    unit: str  # displayed unit
    decimals: int


HYPOTHESIS_TESTS = {
    "H1a": HypothesisTest("H1a", "H1", "loss_sd", "loss SD", "", 4),
    "H1a2": HypothesisTest("H1a2", "H1", "loss_sd_late", "loss SD, epochs 2+", "", 4),
    "H1b": HypothesisTest("H1b", "H1", "convergence_epoch", "convergence epoch", "epochs", 1),
    "H2": HypothesisTest("H2", "H2", "gen_gap", "generalization gap", "points", 2),
    "H3": HypothesisTest("H3", "H3", "final_test_acc", "test accuracy", "points", 2),
    "H3x": HypothesisTest("H3x", "H3", "final_test_acc", "interaction", "points", 2),
}
HYPOTHESES = {  # short wording for tables and sentences; the paper's own is in paper_claims.yaml
    "H1": "BN reduces training instability and accelerates convergence",
    "H2": "dropout reduces overfitting, measured as the generalization gap",
    "H3": "BN + dropout is not better than the better of the two alone",
}


def load_claims() -> list[dict]:
    """The paper's claims, verbatim (reference/paper_claims.yaml)."""
    ref = resources.files("normdrop") / "reference" / "paper_claims.yaml"
    with ref.open("r", encoding="utf-8") as f:
        return yaml.safe_load(f)["claims"]


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


def combine_h1(a: str, b: str) -> str:
    """H1's verdict from its two parts (rule in the module docstring)."""
    parts = {a, b}
    if len(parts) == 1:  # both supported, both reversed, or the same kind of inconclusive
        return a
    if REVERSED in parts:
        return NOT_SUPPORTED
    if SUPPORTED in parts:
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


def _row(pair, test: HypothesisTest, a: str, b: str, n_a, n_b, mean_a, mean_b, result) -> dict:
    estimate, low, high, p, problem = result
    verdict = problem if problem else verdict_from_ci(low, high, -1)
    return dict(
        dataset=pair[0],
        model=pair[1],
        hypothesis=test.hypothesis,
        test=test.test,
        metric=test.metric,
        quantity=test.quantity,
        unit=test.unit,
        comparison=f"{a} − {b}",
        variant_a=a,
        variant_b=b,
        n_a=n_a,
        n_b=n_b,
        mean_a=mean_a,
        mean_b=mean_b,
        effect=estimate,
        ci_low=low,
        ci_high=high,
        p_value=p,
        expected="< 0",
        verdict=verdict,
    )


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def pair_tests(runs: pd.DataFrame, dataset: str, model: str, confidence=CONFIDENCE) -> list[dict]:
    """All test rows (H1a, H1a2, H1b, H2, H3, H3x) for one dataset and model."""
    sub = runs[(runs["dataset"] == dataset) & (runs["model"] == model)]
    names = paper_variants(sub)
    pair = (dataset, model)

    def flat(key: str) -> bool:
        return key in names and bool(did_not_learn(sub[sub["variant"] == names[key]]).any())

    def values(key: str, metric: str) -> np.ndarray:
        if key not in names:
            return np.array([])
        return metric_values(sub[sub["variant"] == names[key]], metric)

    rows = []
    pairs = (("H1a", "bn", "none"), ("H1a2", "bn", "none"), ("H1b", "bn", "none"))
    for tid, a, b in (*pairs, ("H2", "dropout", "none")):
        test = HYPOTHESIS_TESTS[tid]
        va, vb = values(a, test.metric), values(b, test.metric)
        res = contrast([va, vb], [1, -1], confidence)
        if res[4] == MISSING and any(flat(k) for k in (a, b) if test.metric in NEEDS_LEARNING):
            res = (*res[:4], NOT_LEARNED)  # seeds ran, but no convergence epoch to compare
        rows.append(
            _row(
                pair,
                test,
                names.get(a, a),
                names.get(b, b),
                len(va),
                len(vb),
                _mean(va),
                _mean(vb),
                res,
            )
        )
    # H3: the combination against the better single technique (higher mean test accuracy).
    test = HYPOTHESIS_TESTS["H3"]
    acc = {k: values(k, test.metric) for k in ("none", "bn", "dropout", "bn_dropout")}
    singles = [k for k in ("bn", "dropout") if len(acc[k])]
    best = max(singles, key=lambda k: np.mean(acc[k])) if singles else "bn"
    res = contrast([acc["bn_dropout"], acc[best]], [1, -1], confidence)
    rows.append(
        _row(
            pair,
            test,
            names.get("bn_dropout", "bn_dropout"),
            names.get(best, best),
            len(acc["bn_dropout"]),
            len(acc[best]),
            _mean(acc["bn_dropout"]),
            _mean(acc[best]),
            res,
        )
    )
    # H3x: the 2x2 interaction contrast (bn_dropout - bn) - (dropout - none).
    test = HYPOTHESIS_TESTS["H3x"]
    groups = [acc["bn_dropout"], acc["bn"], acc["dropout"], acc["none"]]
    res = contrast(groups, [1, -1, -1, 1], confidence)
    row = _row(
        pair,
        test,
        "(bn_dropout − bn)",
        "(dropout − none)",
        min(map(len, groups)),
        min(map(len, groups)),
        math.nan,
        math.nan,
        res,
    )
    rows.append(row)
    notes = "; ".join(filter(None, (_seed_note(sub, v) for v in names.values())))
    for r in rows:
        r["diverged_note"] = notes
    return rows


def run_hypothesis_tests(
    runs: pd.DataFrame,
    pairs: Sequence[tuple[str, str]] | None = None,
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """One row per (dataset, model, test); columns as in `_row` plus diverged_note."""
    pairs = pairs if pairs is not None else select_pairs(runs)
    rows = [r for d, m in pairs for r in pair_tests(runs, d, m, confidence)]
    return pd.DataFrame(rows)


def verdicts(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, model): the verdict of H1 (combined), H2 and H3."""
    out = []
    for (d, m), g in results.groupby(["dataset", "model"], sort=False):
        by = g.set_index("test")["verdict"]
        out.append(
            dict(
                dataset=d,
                model=m,
                H1=combine_h1(by["H1a"], by["H1b"]),
                H2=by["H2"],
                H3=by["H3"],
            )
        )
    return pd.DataFrame(out)


# --------------------------------------------------------------------------------------------
# Words


def fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def p_text(p: float) -> str:
    """'p = 0.012' or 'p < 0.001'."""
    text = fmt_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _unit(test: HypothesisTest) -> str:
    return f" {test.unit}" if test.unit else ""


def effect_text(row: pd.Series | dict, with_n: bool = True) -> str:
    """'−0.0310 (95% CI −0.0420 to −0.0200, p = 0.003, n = 3 vs 3)'."""
    test = HYPOTHESIS_TESTS[row["test"]]
    d = test.decimals
    text = f"{fmt_signed(row['effect'], d)}{_unit(test)}"
    if np.isfinite(row["ci_low"]):
        text += (
            f" (95% CI {fmt_signed(row['ci_low'], d)} to {fmt_signed(row['ci_high'], d)},"
            f" {p_text(row['p_value'])}"
        )
    else:
        text += " (no CI"
    if with_n and test.test != "H3x":
        text += f", n = {row['n_a']} vs {row['n_b']} seeds"
    return text + ")"


def sentence(
    results: pd.DataFrame, dataset: str, model: str, hypothesis: str, standalone: bool = True
) -> str:
    """One sentence for the report: the verdict, with effect sizes and CIs.

    standalone=False leaves out the hypothesis' wording (for a list under its own heading).
    """
    g = results[(results["dataset"] == dataset) & (results["model"] == model)]
    by = {r["test"]: r for _, r in g.iterrows()}
    where = f"{dataset_name(dataset)} / {model_name(model)}"
    if hypothesis == "H1":
        a, b = by["H1a"], by["H1b"]
        verdict = combine_h1(a["verdict"], b["verdict"])
        body = (
            f"{a['variant_a']} − {a['variant_b']}: loss SD {effect_text(a)} [{a['verdict']}], "
            f"convergence epoch {effect_text(b, False)} [{b['verdict']}]"
        )
    elif hypothesis == "H2":
        r = by["H2"]
        verdict = r["verdict"]
        body = f"{r['variant_a']} − {r['variant_b']}: generalization gap {effect_text(r)}"
    else:
        r, x = by["H3"], by["H3x"]
        verdict = r["verdict"]
        meaning = {
            SUPPORTED: "the combination is clearly below the better single technique",
            REVERSED: "the combination clearly beats the better single technique",
            INCONCLUSIVE: "the combination is not clearly different from the better single "
            "technique",
        }.get(verdict, "")
        body = (
            f"{r['variant_a']} − {r['variant_b']} (the better single technique, "
            f"{fmt_num(r['mean_b'], 2)}%): test accuracy {effect_text(r)}"
            + (f", i.e. {meaning}" if meaning else "")
            + f"; interaction (bn_dropout − bn) − (dropout − none) = {effect_text(x, False)}"
            f" [{x['verdict']}]"
        )
    missing = [
        r
        for r in ([by["H1a"]] if hypothesis == "H1" else [by[hypothesis]])
        if r["verdict"] == MISSING
    ]
    if missing:
        r = missing[0]
        absent = [v for v, n in ((r["variant_a"], r["n_a"]), (r["variant_b"], r["n_b"])) if n == 0]
        body = f"not tested: no completed runs of {' and '.join(absent)}"
    note = g["diverged_note"].iloc[0] if len(g) else ""
    tail = f" Diverged runs left out ({note})." if note else ""
    if standalone:
        where += f", {hypothesis} ({HYPOTHESES[hypothesis]})"
    return f"{where}: {verdict}. {body}.{tail}"


def sentences(results: pd.DataFrame, standalone: bool = False) -> dict[str, list[str]]:
    """{hypothesis: [sentence per (dataset, model)]}, for lists under a heading per hypothesis."""
    pairs = list(dict.fromkeys(zip(results["dataset"], results["model"], strict=True)))
    return {h: [sentence(results, d, m, h, standalone) for d, m in pairs] for h in HYPOTHESES}


# --------------------------------------------------------------------------------------------
# Tables


def results_table(results: pd.DataFrame) -> TextTable:
    rows, rule_before, last = [], set(), None
    for _, r in results.iterrows():
        test = HYPOTHESIS_TESTS[r["test"]]
        if (r["dataset"], r["model"]) != last:
            rule_before.add(len(rows))
            last = (r["dataset"], r["model"])
        d = test.decimals
        ci = (
            f"[{fmt_signed(r['ci_low'], d)}, {fmt_signed(r['ci_high'], d)}]"
            if np.isfinite(r["ci_low"])
            else "n/a"
        )
        n = f"{r['n_a']} vs {r['n_b']}" if test.test != "H3x" else f"≥{r['n_a']} per group"
        rows.append(
            [
                dataset_name(r["dataset"]),
                model_name(r["model"]),
                f"{test.test}: {test.quantity}" + (f" ({test.unit})" if test.unit else ""),
                r["comparison"],
                n,
                fmt_signed(r["effect"], d),
                ci,
                fmt_p(r["p_value"]),
                r["verdict"],
            ]
        )
    return TextTable(
        title="Hypothesis tests: effect = difference of means over seeds",
        header=[
            "Dataset",
            "Model",
            "Test",
            "Effect of",
            "Seeds",
            "Effect",
            "95% CI",
            "p",
            "Verdict",
        ],
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
    rows = [
        [dataset_name(r.dataset), model_name(r.model), r.H1, r.H2, r.H3]
        for r in matrix.itertuples()
    ]
    return TextTable(
        title="Verdicts per dataset and model",
        header=["Dataset", "Model"] + [f"{h}: {HYPOTHESES[h]}" for h in HYPOTHESES],
        rows=rows,
        align="lllll",
        notes=[f"{h}: {text}." for h, text in HYPOTHESES.items()]
        + ["Rules in normdrop/hypotheses.py; details in the hypothesis-test table."],
        label="tab:verdicts",
        latex_header=["Dataset", "Model", *HYPOTHESES],  # the wording goes in the notes
    )


def hypothesis_paths(out_dir: Path | str) -> list[Path]:
    out = Path(out_dir)
    return [out / f"{stem}.{ext}" for stem in ("hypotheses", "verdicts") for ext in TABLE_FORMATS]


def write_hypotheses(
    summary_dir: Path | str,
    out_dir: Path | str,
    datasets: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
) -> list[Path]:
    runs = read_summary(summary_dir, "runs")
    pairs = select_pairs(runs, datasets, models, source=str(Path(summary_dir) / "runs.parquet"))
    results = run_hypothesis_tests(runs, pairs)
    out = Path(out_dir)
    table = results_table(results)
    words = sentences(results)
    md = to_markdown(table) + "\n"
    for h, lines in words.items():
        md += f"\n**{h}: {HYPOTHESES[h]}**\n\n" + "".join(f"- {s}\n" for s in lines)
    paths = [
        atomic_write_text(out / "hypotheses.md", md),
        atomic_write_text(out / "hypotheses.tex", to_latex(table)),
        atomic_write_text(out / "hypotheses.html", to_html(table, after=_sentences_html(words))),
        atomic_write_text(out / "hypotheses.csv", results.to_csv(index=False)),
    ]
    matrix = verdicts(results)
    paths += write_table(verdict_table(matrix), out / "verdicts", matrix)
    return paths


def _sentences_html(words: dict[str, list[str]]) -> str:
    return "".join(
        f"<h4>{h}: {html.escape(HYPOTHESES[h])}</h4><ul>"
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
