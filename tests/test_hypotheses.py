"""normdrop.hypotheses: verdicts on constructed per-seed results whose answer is known."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from normdrop import hypotheses as hyp  # noqa: E402
from normdrop import tables as tab  # noqa: E402
from normdrop.seed_stats import contrast  # noqa: E402
from normdrop.summary_data import PAPER_VARIANTS  # noqa: E402

LOW = [0.010, 0.012, 0.011]
HIGH = [0.045, 0.047, 0.046]
SAME = [0.046, 0.045, 0.047]


@pytest.fixture(scope="module")
def rows(runs_from_values):
    def rows(values) -> dict[str, pd.Series]:
        """Test rows by id for one constructed dataset/model."""
        results = hyp.run_hypothesis_tests(runs_from_values(values))
        return {r["test"]: r for _, r in results.iterrows()}

    return rows


@pytest.mark.parametrize(
    ("bn", "verdict"),
    [(LOW, "supported"), (SAME, "inconclusive"), ([0.08, 0.09, 0.085], "reversed")],
)
def test_h1_loss_sd(bn, verdict, rows):
    r = rows({"none": {"loss_sd": HIGH}, "bn": {"loss_sd": bn}})["H1a"]
    assert r["verdict"] == verdict
    assert r["effect"] == pytest.approx(np.mean(bn) - np.mean(HIGH))
    assert np.isfinite(r["ci_low"]) and r["ci_low"] < r["effect"] < r["ci_high"]


def test_h1_needs_both_parts(runs_from_values):
    values = {
        "none": {"loss_sd": HIGH, "convergence_epoch": [65.0, 60.0, 70.0]},
        "bn": {"loss_sd": LOW, "convergence_epoch": [34.0, 30.0, 38.0]},
    }
    matrix = hyp.verdicts(hyp.run_hypothesis_tests(runs_from_values(values)))
    assert matrix.loc[0, "H1"] == "supported"
    values["bn"]["convergence_epoch"] = [64.0, 61.0, 69.0]  # no clear effect on convergence
    matrix = hyp.verdicts(hyp.run_hypothesis_tests(runs_from_values(values)))
    assert matrix.loc[0, "H1"] == "partly supported"


def test_h1_without_the_first_epoch_is_shown_but_does_not_decide(runs_from_values):
    # BN steadier over all epochs (H1a) only because of its first one: over epochs 2+ (H1a2) it
    # is the less steady. H1's verdict follows the paper's definition, H1a.
    values = {
        "none": {"loss_sd": HIGH, "loss_sd_late": LOW, "convergence_epoch": [65.0, 60.0, 70.0]},
        "bn": {"loss_sd": LOW, "loss_sd_late": HIGH, "convergence_epoch": [34.0, 30.0, 38.0]},
    }
    results = hyp.run_hypothesis_tests(runs_from_values(values))
    by = results.set_index("test")
    assert by.loc["H1a", "verdict"] == "supported" and by.loc["H1a2", "verdict"] == "reversed"
    assert by.loc["H1a2", "effect"] == pytest.approx(np.mean(HIGH) - np.mean(LOW))
    assert hyp.verdicts(results).loc[0, "H1"] == "supported"
    assert any("H1a2: loss SD, epochs 2+" in row[2] for row in hyp.results_table(results).rows)


def test_combine_h1_rule():
    assert hyp.combine_h1("supported", "supported") == "supported"
    assert hyp.combine_h1("reversed", "reversed") == "reversed"
    assert hyp.combine_h1("supported", "reversed") == "not supported"
    assert hyp.combine_h1("inconclusive", "reversed") == "not supported"
    assert hyp.combine_h1("supported", "inconclusive") == "partly supported"
    assert hyp.combine_h1("inconclusive", hyp.TOO_FEW) == "inconclusive"


@pytest.mark.parametrize(
    ("gap", "verdict"),
    [
        ([4.0, 4.5, 3.8], "supported"),
        ([9.8, 10.3, 9.9], "inconclusive"),
        ([15, 16, 15.5], "reversed"),
    ],
)
def test_h2_generalization_gap(gap, verdict, rows):
    r = rows({"none": {"gen_gap": [10.0, 10.4, 9.6]}, "dropout": {"gen_gap": gap}})["H2"]
    assert r["verdict"] == verdict
    assert (r["variant_a"], r["variant_b"]) == ("dropout", "none")


@pytest.mark.parametrize(
    ("combo", "verdict"),
    [
        ([0.80, 0.805, 0.81], "supported"),  # clearly below the better single technique
        ([0.845, 0.85, 0.855], "inconclusive"),
        ([0.90, 0.905, 0.91], "reversed"),  # clearly above: the benefits add up here
    ],
)
def test_h3_combination_against_the_better_single(combo, verdict, rows):
    r = rows(
        {
            "none": {"final_test_acc": [0.78, 0.785, 0.79]},
            "bn": {"final_test_acc": [0.845, 0.85, 0.855]},
            "dropout": {"final_test_acc": [0.81, 0.815, 0.82]},
            "bn_dropout": {"final_test_acc": combo},
        }
    )
    assert r["H3"]["variant_b"] == "bn"  # bn is the better single technique
    assert r["H3"]["verdict"] == verdict
    assert r["H3"]["effect"] == pytest.approx(100 * (np.mean(combo) - 0.85))  # points
    # Interaction (bn_dropout - bn) - (dropout - none), in points.
    expected = 100 * ((np.mean(combo) - 0.85) - (0.815 - 0.785))
    assert r["H3x"]["effect"] == pytest.approx(expected)


def test_two_group_contrast_is_scipys_welch_test():
    a, b = np.array([1.0, 2.0, 4.0]), np.array([3.0, 5.0, 6.0, 9.0])
    est, low, high, p, problem = contrast([a, b], [1, -1])
    ref = sps.ttest_ind(a, b, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert problem is None
    assert (est, low, high, p) == pytest.approx((a.mean() - b.mean(), ci.low, ci.high, ref.pvalue))
    # The four-group contrast with weights (1, -1) on two groups and 0 elsewhere agrees too.
    est4, low4, high4, p4, _ = contrast([a, b, a, a], [1, -1, 0, 0])
    assert (est4, low4, high4, p4) == pytest.approx((est, low, high, p))


def test_too_few_seeds_and_zero_variance_are_inconclusive(rows):
    r = rows({"none": {"loss_sd": [0.04]}, "bn": {"loss_sd": [0.01]}})["H1a"]
    assert r["verdict"] == "inconclusive (too few seeds)"
    assert np.isnan(r["ci_low"]) and np.isnan(r["p_value"])
    r = rows({"none": {"convergence_epoch": [65.0] * 3}, "bn": {"convergence_epoch": [34.0] * 3}})
    assert r["H1b"]["verdict"] == "inconclusive (zero variance)"
    assert r["H1b"]["effect"] == pytest.approx(-31.0)


def test_missing_variant_and_diverged_seeds(rows):
    r = rows(
        {
            "none": {"final_test_acc": [0.78, np.nan, 0.79], "gen_gap": [10.0, np.nan, 11.0]},
            "dropout": {"gen_gap": [4.0, 4.2, 4.1]},
        }
    )
    assert (r["H2"]["n_a"], r["H2"]["n_b"]) == (3, 2)  # the diverged seed is left out
    assert r["H1a"]["verdict"] == "inconclusive (variant missing)"
    assert r["H3"]["verdict"] == "inconclusive (variant missing)"
    assert "none: 1/3 seeds diverged" in r["H2"]["diverged_note"]


def test_other_norms_are_not_used(runs_from_values):
    runs = runs_from_values({"none": {"loss_sd": HIGH}, "bn": {"loss_sd": LOW}})
    gn = runs[runs["variant"] == "bn"].assign(variant="gn", norm="group", loss_sd=0.5)
    r = hyp.run_hypothesis_tests(pd.concat([runs, gn])).set_index("test").loc["H1a"]
    assert r["verdict"] == "supported" and r["variant_a"] == "bn"


def test_sentence_has_verdict_effect_and_ci(runs_from_values):
    results = hyp.run_hypothesis_tests(
        runs_from_values(
            {"none": {"gen_gap": [10.0, 10.4, 9.6]}, "dropout": {"gen_gap": [4.0, 4.5, 3.8]}}
        )
    )
    text = hyp.sentence(results, "cifar10", "cnn", "H2")
    assert text.startswith("CIFAR-10 / CNN, H2 (")
    assert "supported." in text and "95% CI" in text and "points" in text and "n = 3 vs 3" in text


def test_cli_writes_tables_and_sentences(tmp_path, make_summary):
    make_summary(tmp_path / "summary", ("mnist", "cifar10"), ("mlp", "resnet20"))
    out = tmp_path / "tables"
    assert hyp.main(["--summary-dir", str(tmp_path / "summary"), "--out-dir", str(out)]) == 0
    assert {p for p in out.rglob("*") if p.is_file()} == set(hyp.hypothesis_paths(out))
    md = (out / "hypotheses.md").read_text()
    body = [line for line in md.splitlines() if line.startswith("|")][2:]
    assert len(body) == 2 * 2 * len(hyp.HYPOTHESIS_TESTS)
    assert md.count("\n- ") == 2 * 2 * 3  # one sentence per hypothesis per dataset/model
    verdicts = pd.read_csv(out / "verdicts.csv")
    assert list(verdicts.columns) == ["dataset", "model", "H1", "H2", "H3"] and len(verdicts) == 4
    tex = (out / "hypotheses.tex").read_text()
    assert "\\toprule" in tex and "bn\\_dropout" in tex


def test_cli_bad_input_is_exit_2(tmp_path, capsys):
    assert hyp.main(["--summary-dir", str(tmp_path), "--out-dir", str(tmp_path)]) == 2
    assert "runs.parquet" in capsys.readouterr().err


def test_paper_claims_reference_file():
    claims = {c["id"]: c for c in hyp.load_claims()}
    assert set(claims) == {"H1", "H2", "H3"}
    assert claims["H1"]["statement"].startswith("Batch Normalization reduces training instability")
    assert tab.load_paper_table("paper_table2")["variant"].tolist() == list(PAPER_VARIANTS)


def test_runs_that_did_not_learn_have_no_convergence_epoch_and_are_counted(runs_from_values):
    flat = {"convergence_epoch": [np.nan] * 3, "learned": [False] * 3, "final_val_acc": [0.1] * 3}
    runs = runs_from_values({"none": flat, "bn": {"convergence_epoch": [3.0, 4.0, 5.0]}})
    r = {row["test"]: row for _, row in hyp.run_hypothesis_tests(runs).iterrows()}
    # Not "BN converges slower/faster": there is nothing to compare with.
    assert r["H1b"]["verdict"] == "inconclusive (did not learn)"
    assert "none: 3/3 seeds did not learn" in r["H1b"]["diverged_note"]
    table = tab.table2(tab.variant_stats(runs), "cifar10", "cnn", ["none", "bn"])
    none = dict(zip(table.header, table.rows[0], strict=True))
    assert none["Conv. epoch"] == "did not learn (3/3 seeds)"
    assert none["Seeds"] == "3/3; did not learn (3/3 seeds)"
