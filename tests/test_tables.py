"""normdrop.tables: Table 2 per dataset/model, Table 1, the paper comparison, CLI errors."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from normdrop import tables as tab  # noqa: E402
from normdrop.render import fmt_mean_sd, fmt_signed, to_markdown  # noqa: E402
from normdrop.seed_stats import variant_stats  # noqa: E402
from normdrop.summary_data import METRICS, order_variants, paper_variants  # noqa: E402

DATASETS = ("mnist", "cifar10")
MODELS = ("mlp", "resnet20")


@pytest.fixture(scope="module")
def written(tmp_path_factory, make_summary):
    """The CLI run once on a 2 x 2 x 4 x 3 synthetic summary with one diverged run."""
    root = tmp_path_factory.mktemp("tables")
    make_summary(root / "summary", DATASETS, MODELS, diverged=(("cifar10", "mlp", "none", 43),))
    rc = tab.main(["--summary-dir", str(root / "summary"), "--out-dir", str(root / "tables")])
    assert rc == 0
    return root / "tables"


def table_rows(markdown: str) -> list[str]:
    """Body rows of the first Markdown table (header and separator left out)."""
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    return rows[2:]


def cells(row: str) -> list[str]:
    """The cells of one Markdown table row, without their padding."""
    return [c.strip() for c in row.strip().strip("|").split("|")]


def test_cli_writes_exactly_the_declared_files(written):
    expected = set(tab.table_paths(written, DATASETS, MODELS))
    on_disk = {p for p in written.rglob("*") if p.is_file()}
    assert on_disk == expected  # also: no temp files left behind


def test_table2_has_one_row_per_variant_and_all_formats(written):
    md = (written / "cifar10" / "resnet20" / "table2.md").read_text()
    rows = table_rows(md)
    assert [r.split("|")[1].strip() for r in rows] == ["none", "bn", "dropout", "bn_dropout"]
    csv = pd.read_csv(written / "cifar10" / "resnet20" / "table2.csv")
    assert len(csv) == 4 and {"final_test_acc_pct_mean", "gen_gap_pts_sd"} <= set(csv.columns)
    assert "<table id=" in (written / "cifar10" / "resnet20" / "table2.html").read_text()


def test_table2_shows_the_diverged_seed(written):
    md = (written / "cifar10" / "mlp" / "table2.md").read_text()
    none_row = table_rows(md)[0]
    assert "2/3; diverged (1/3 seeds)" in none_row


def test_mean_sd_string_and_diverged_counts(runs_from_values):
    runs = runs_from_values(
        {
            "none": {"final_test_acc": [0.80, 0.82, 0.84]},
            "bn": {"final_test_acc": [0.90, np.nan, 0.92]},
            "dropout": {"final_test_acc": [np.nan, np.nan, np.nan]},
            "bn_dropout": {"final_test_acc": [0.85, 0.85, 0.85]},
        }
    )
    stats = variant_stats(runs)
    md = to_markdown(tab.table2(stats, "cifar10", "cnn", order_variants(runs)))
    rows = table_rows(md)
    assert len(rows) == 4
    assert "82.00 ± 2.00" in rows[0]  # (80, 82, 84) %: mean 82, SD 2
    assert "91.00 ± 1.41" in rows[1] and "diverged (1/3 seeds)" in rows[1]
    assert rows[2].count("diverged (3/3 seeds)") == 1 + len(METRICS)
    assert "85.00 ± 0.00" in rows[3]


def test_single_seed_has_no_sd():
    assert fmt_mean_sd(84.7, float("nan"), 1, 2) == "84.70 (n=1)"
    assert fmt_mean_sd(float("nan"), float("nan"), 0, 2) == "n/a"
    assert fmt_signed(-0.5, 2) == "−0.50"


def test_latex_is_booktabs_and_escaped(written):
    tex = (written / "paper_comparison.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "bn\\_dropout" in tex and "Test acc. (\\%)" in tex and "$\\pm$" in tex
    for path in written.rglob("*.tex"):
        body = path.read_text()
        # Below the leading comment line no bare _, % or # is left ('&' separates columns).
        assert not re.search(r"(?<!\\)[_%#]", body.split("\n", 1)[1]), path
        assert "±" not in body and "−" not in body and "<" not in body.replace("$<$", "")


def test_paper_numbers_beside_ours(written):
    paper = tab.load_paper_table("paper_table2")
    md = (written / "paper_comparison.md").read_text()
    rows = table_rows(md)
    assert len(rows) == 2 * 4  # two models on CIFAR-10, four paper variants each
    for row in paper.itertuples():
        assert f"{row.final_test_acc_pct:g}" in md and f"{row.loss_sd:g}" in md
    csv = pd.read_csv(written / "paper_comparison.csv")
    acc = csv[csv["metric"] == "final_test_acc_pct"]
    bn = acc[acc["paper_variant"] == "bn"]
    assert set(bn["model"]) == set(MODELS)
    assert np.allclose(bn["paper"], 84.7)
    assert np.allclose(acc["difference"], acc["ours_mean"] - acc["paper"])
    # The ordering sentence per model follows from the numbers beside it (no ties in either).
    for model, g in acc.groupby("model"):
        ours = " > ".join(g.sort_values("ours_mean", ascending=False)["paper_variant"])
        paper_order = " > ".join(g.sort_values("paper", ascending=False)["paper_variant"])
        verdict = "same order" if ours == paper_order else "different order"
        assert f"paper {paper_order}; ours {ours} ({verdict})" in md, (model, md)


def test_table1_parameter_counts(written):
    md = (written / "table1_params.md").read_text()
    rows = table_rows(md)
    # Per model: one row for the variants without BN, one for those with BN.
    assert len(rows) == 4
    assert cells(rows[0]) == ["MLP", "none, dropout", "1,195,010", "1,195,010", "1.2M"]
    assert "bn, bn_dropout" in rows[1] and "1,197,010" in rows[1]
    csv = pd.read_csv(written / "table1_params.csv")
    assert len(csv) == len(DATASETS) * len(MODELS) * 4
    assert set(csv["paper_param_count"]) == {1_200_000, 1_100_000}


def test_paper_variants_found_by_norm_and_dropout_not_name(runs_from_values):
    runs = runs_from_values({k: {"loss_sd": [0.01]} for k in ("none", "bn", "dropout")})
    runs.loc[runs["variant"] == "bn", "variant"] = "batchnorm"
    extra = runs[runs["variant"] == "none"].assign(variant="gn", norm="group")
    runs = pd.concat([runs, extra])
    assert paper_variants(runs) == {"none": "none", "bn": "batchnorm", "dropout": "dropout"}
    assert order_variants(runs) == ["none", "batchnorm", "dropout", "gn"]


def test_missing_file_is_exit_2(tmp_path, capsys):
    rc = tab.main(["--summary-dir", str(tmp_path), "--out-dir", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert rc == 2 and "runs.parquet" in err and "not found" in err


def test_missing_columns_is_exit_2(tmp_path, capsys, runs_from_values):
    runs = runs_from_values({"none": {"loss_sd": [0.01]}}).drop(columns=["gen_gap", "seed"])
    runs.to_parquet(tmp_path / "runs.parquet")
    rc = tab.main(["--summary-dir", str(tmp_path), "--out-dir", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert rc == 2 and "runs.parquet" in err and "seed" in err and "gen_gap" in err


def test_requested_pair_without_runs_is_exit_2(tmp_path, capsys, runs_from_values):
    runs_from_values({"none": {"loss_sd": [0.01]}}).to_parquet(tmp_path / "runs.parquet")
    args = ["--summary-dir", str(tmp_path), "--out-dir", str(tmp_path / "t")]
    assert tab.main(args + ["--datasets", "cifar10", "cifar100"]) == 2
    assert "cifar100/cnn" in capsys.readouterr().err
