"""normdrop.plots and normdrop.report: every figure is written, valid and of the fixed size."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import matplotlib.image as mpimg
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from normdrop import catalog, curves, figure_style, plots  # noqa: E402
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
        ["--summary-dir", str(summary), "--out-dir", str(out), "--lr-milestones", "3", "4"]
    )
    assert rc == 0
    return out


def test_exactly_the_declared_figures(figures):
    expected = set(catalog.figure_paths(figures, DATASETS, MODELS))
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
    keys = re.findall(r'^\s+(?:"(\w+)"|catalog\.(\w+)): \(', smk, re.M)
    stems = {quoted or getattr(catalog, name) for quoted, name in keys}
    for stem in (*catalog.PAIR_FIGURES, catalog.OVERVIEW, catalog.TABLE2, catalog.TABLE1):
        assert stem in stems, stem
    for stem in (catalog.COMPARISON, catalog.HYPOTHESES_TABLE, catalog.VERDICTS_TABLE):
        assert stem in stems, stem
    assert {catalog.STUDY_TABLE, catalog.STUDY_FIGURE} <= stems
    for caption in re.findall(r':\s*\(\s*"(\w+)",\s*"', smk):
        assert (REPO / "workflow" / "report" / f"{caption}.rst").is_file(), caption
    assert (REPO / "workflow" / "report" / "workflow.rst").is_file()


def test_overview_panels_share_one_y_axis(summary):
    # MNIST sits near 97.5 %, CIFAR-10 near 80 %: on panels of their own, each spread would
    # fill its panel; on one axis both read at their true size.
    runs = read_summary(summary, "runs")
    pairs = [(d, m) for d in DATASETS for m in MODELS]
    fig = plots.plot_overview(runs, pairs, figure_style.variant_styles(runs))
    limits = {ax.get_ylim() for ax in fig.axes}
    assert len(limits) == 1, limits
    (low, high), acc = limits.pop(), runs["final_test_acc"].dropna() * 100
    assert 0 <= low <= acc.min() and acc.max() <= high <= 100


def test_report_without_the_papers_dataset_says_why_in_one_sentence(tmp_path, make_summary):
    make_summary(tmp_path / "summary", ("synthetic",), ("mlp",))
    text = rep.build_report(tmp_path / "summary", tmp_path / "report.md")
    section = text.split("## Paper's Table 2 (CIFAR-10) beside ours\n\n", 1)[1].split("\n## ")[0]
    assert section.strip() == (
        "Nothing to compare: this grid has no runs on CIFAR-10, the dataset of the paper's Table 2."
    )
    tables_out = tmp_path / "tables"
    from normdrop import tables as tab

    assert tab.main(["--summary-dir", str(tmp_path / "summary"), "--out-dir", str(tables_out)]) == 0
    assert "Nothing to compare" in (tables_out / "paper_comparison.csv").read_text()
    assert "<td" in (tables_out / "paper_comparison.html").read_text()


@pytest.mark.parametrize(
    "extra, says",
    [
        (
            "workflow/demo.yaml",
            "the variants none, bn, dropout, bn_dropout of the models mlp, cnn, resnet20 on "
            "synthetic, 3 seed(s) each, 6 epochs.",
        ),
        (
            "studies/batch_size.yaml",
            "the variants none, bn, gn, ln, each crossed with batch_size in 8, 16, 32, 64, 128 "
            "of the models resnet20 on cifar10, 3 seed(s) each, 100 epochs; "
            'the study "batch_size".',
        ),
    ],
)
def test_the_reports_opening_text_describes_the_grid_that_ran(extra, says):
    from html import unescape

    import jinja2
    import yaml
    from docutils.core import publish_parts

    from normdrop.workflow_config import deep_merge

    config = deep_merge(*(yaml.safe_load((REPO / f).read_text()) for f in ("config.yaml", extra)))

    class Snakemake:  # what Snakemake's report hands the template (snakemake/report)
        pass

    Snakemake.config = config
    template = (REPO / "workflow" / "report" / "workflow.rst").read_text()
    # Snakemake's report renders it with these settings (snakemake/report/__init__.py).
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    text = env.from_string(template).render(snakemake=Snakemake)
    html = publish_parts(text, writer="html")["html_body"]
    shown = unescape(re.sub(r"<[^>]+>", "", html))
    assert " ".join(says.split()) in " ".join(shown.split())


def test_a_variant_that_did_not_learn_is_named_in_the_convergence_panel(runs_from_values):
    flat = {"convergence_epoch": [math.nan] * 3, "learned": [False] * 3}
    runs = runs_from_values({"none": flat, "bn": {"convergence_epoch": [3.0, 4.0, 5.0]}})
    fig = plots.plot_metrics(runs, "cifar10", "cnn", figure_style.variant_styles(runs))
    texts = {ax.get_title(): [t.get_text() for t in ax.texts] for ax in fig.axes}
    assert "did not learn" in " ".join(texts["Convergence speed"])
    assert "did not learn" not in " ".join(texts["Final test accuracy"])  # accuracy stays
