"""normdrop.plots and normdrop.report: every figure is written, valid and of the fixed size."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import matplotlib.image as mpimg
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from normdrop import curves, figure_style, plots  # noqa: E402
from normdrop import report as rep  # noqa: E402
from normdrop.summary_data import read_summary  # noqa: E402

DATASETS = ("mnist", "cifar10")
MODELS = ("mlp", "resnet20")


@pytest.fixture(scope="module")
def summary(tmp_path_factory, make_summary) -> Path:
    """2 datasets x 2 models x (4 paper variants + group norm) x 3 seeds, 5 epochs, milestones
    after epochs 3 and 4; on CIFAR-10/MLP one seed of `none` and every seed of `bn_dropout`
    diverge."""
    root = tmp_path_factory.mktemp("plots")
    diverged = [("cifar10", "mlp", "none", 43)]
    diverged += [("cifar10", "mlp", "bn_dropout", s) for s in (42, 43, 44)]
    make_summary(
        root / "summary",
        DATASETS,
        MODELS,
        extra_variants={"gn_dropout": ("group", True)},
        diverged=tuple(diverged),
    )
    return root / "summary"


@pytest.fixture(scope="module")
def figures(summary) -> Path:
    out = summary.parent / "figures"
    rc = plots.main(
        ["--summary-dir", str(summary), "--out-dir", str(out), "--milestones", "3", "4"]
    )
    assert rc == 0
    return out


def test_exactly_the_declared_figures(figures):
    expected = set(plots.figure_paths(figures, DATASETS, MODELS))
    assert {p for p in figures.rglob("*") if p.is_file()} == expected
    assert len(expected) == 2 * (1 + len(DATASETS) * len(MODELS) * len(plots.FIGURE_KINDS))


def test_every_png_is_valid_and_of_the_fixed_size(figures):
    for path in figures.rglob("*.png"):
        kind = path.stem
        width, height = plots.png_size_px(kind, len(DATASETS), len(MODELS))
        image = mpimg.imread(path)
        assert image.shape[:2] == (height, width), path
        assert image.std() > 0.01, f"{path} is blank"


def test_every_pdf_is_a_pdf(figures):
    for path in figures.rglob("*.pdf"):
        assert path.read_bytes()[:5] == b"%PDF-", path


def test_colours_fixed_by_norm_and_dropout(summary):
    runs = read_summary(summary, "runs")
    styles = figure_style.variant_styles(runs)
    assert styles["bn"].color == figure_style.PAPER_COLORS["bn"]
    assert styles["gn_dropout"].color == figure_style.EXTRA_COLORS[0]
    # Renaming a paper variant keeps its colour; the extra variant keeps its own.
    renamed = runs.replace({"variant": {"bn": "batchnorm"}})
    again = figure_style.variant_styles(renamed)
    assert again["batchnorm"].color == figure_style.PAPER_COLORS["bn"]
    assert again["gn_dropout"].color == styles["gn_dropout"].color
    assert len({s.color for s in styles.values()}) == len(styles)


def test_milestones_read_from_the_logged_learning_rate(summary):
    epochs = read_summary(summary, "epochs")
    assert curves.lr_milestones(epochs) == [3, 4]


def test_bad_input_is_exit_2(tmp_path, capsys):
    (tmp_path / "runs.parquet").write_bytes(b"not parquet")
    assert plots.main(["--summary-dir", str(tmp_path), "--out-dir", str(tmp_path / "f")]) == 2
    assert "runs.parquet" in capsys.readouterr().err


def test_report_md(summary, figures):
    out = summary / "report.md"
    args = ["--summary-dir", str(summary), "--figures-dir", str(figures)]
    assert rep.main(args) == 0
    text = out.read_text()
    for h in ("H1", "H2", "H3"):
        assert f"### {h}: " in text
    assert text.count("\n- MNIST / MLP: ") == 3  # one verdict sentence per hypothesis
    assert "Paper's Table 2 (CIFAR-10) beside ours" in text and re.search(r"\| +84\.7 +\|", text)
    # Figure links are relative to the report and point at files that exist.
    links = re.findall(r"\]\(([^)]+\.png)\)", text)
    assert links and all((out.parent / link).is_file() for link in links)


def test_report_rules_know_every_figure_and_caption():
    # The report items (stem -> caption, name) are declared in common.smk.
    smk = (REPO / "workflow" / "common.smk").read_text()
    for kind in (*plots.FIGURE_KINDS, "OVERVIEW", "table2", "table1_params", "hypotheses"):
        assert re.search(rf'^\s+"?{kind}"?: \("', smk, re.M), kind
    for caption in re.findall(r': \("(\w+)", "', smk):
        assert (REPO / "workflow" / "report" / f"{caption}.rst").is_file(), caption
    assert (REPO / "workflow" / "report" / "workflow.rst").is_file()
