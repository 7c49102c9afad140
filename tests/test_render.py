"""normdrop.render: the table renderers, and golden files of two tables in every format.

The golden files under tests/golden/ are the tables CLI's output for a fixed synthetic summary
(the `make_summary` fixture, seeded): Table 2 of CIFAR-10 / MLP (one diverged seed) and
the paper comparison (spanning LaTeX headers, a rule between models, Δ, ±, −). A change to the
renderers, the statistics or the cells shows up here as a diff to review; after reviewing it,
regenerate with `python tests/test_render.py` and commit the new files.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from normdrop import tables  # noqa: E402
from normdrop.render import (  # noqa: E402
    TABLE_FORMATS,
    TextTable,
    latex_text,
    to_html,
    to_latex,
    to_markdown,
)

GOLDEN = Path(__file__).resolve().parent / "golden"
GOLDEN_TABLES = ("cifar10/mlp/table2", "paper_comparison")


def write_tables(root: Path, make_summary) -> Path:
    """The tables CLI on the fixed summary: 2 datasets x 2 models x 4 variants x 3 seeds, one
    diverged run (CIFAR-10 / MLP / none / seed 43); `make_summary` is the fixture of that name."""
    make_summary(
        root / "summary",
        ("mnist", "cifar10"),
        ("mlp", "resnet20"),
        diverged=(("cifar10", "mlp", "none", 43),),
    )
    rc = tables.main(["--summary-dir", str(root / "summary"), "--out-dir", str(root / "tables")])
    assert rc == 0
    return root / "tables"


@pytest.fixture(scope="module")
def written(tmp_path_factory, make_summary) -> Path:
    return write_tables(tmp_path_factory.mktemp("golden"), make_summary)


@pytest.mark.parametrize("ext", TABLE_FORMATS)
@pytest.mark.parametrize("stem", GOLDEN_TABLES)
def test_table_equals_its_golden_file(written, stem, ext):
    golden = GOLDEN / f"{stem}.{ext}"
    produced = written / f"{stem}.{ext}"
    assert produced.read_text(encoding="utf-8") == golden.read_text(encoding="utf-8"), (
        f"{produced} differs from {golden}; if the change is intended, regenerate with "
        "`python tests/test_render.py` and review the diff"
    )


# --------------------------------------------------------------------------------------------
# Renderers on a constructed table

TABLE = TextTable(
    title="Effects: a_b & 50%",
    header=["Group", "Value", "Note"],
    rows=[["a|b", "0.0450", "−1.5 ± 0.2"], ["a", "1,195,010", "x < y"], ["b", "n/a", "Δ"]],
    align="lrl",
    notes=["Mean ± SD; 95% CI.", "Second note <b>."],
    label="tab:test",
    rule_before={0, 2},
)


def test_markdown_cells_title_notes_and_alignment():
    md = to_markdown(TABLE)
    lines = md.splitlines()
    assert lines[0] == "**Effects: a_b & 50%**" and lines[1] == ""
    header, marks, *rows = [line for line in lines if line.startswith("|")]
    assert [c.strip() for c in header.strip("|").split("|")] == ["Group", "Value", "Note"]
    # Left, right, left; the cells as given ('0.0450' not reparsed as 0.045), '|' escaped.
    assert re.fullmatch(r"\|:-+\|-+:\|:-+\|", marks)
    assert "a\\|b" in rows[0] and "0.0450" in rows[0] and "1,195,010" in rows[1]
    assert lines[-2:] == ["Mean ± SD; 95% CI.  ", "Second note <b>.  "]


def test_latex_is_booktabs_escaped_with_group_rules():
    tex = to_latex(TABLE)
    lines = tex.splitlines()
    assert lines[0].startswith("%") and "\\usepackage{booktabs}" in lines[0]
    assert "\\caption{Effects: a\\_b \\& 50\\%}" in lines and "\\label{tab:test}" in lines
    assert "\\begin{tabular}{lrl}" in lines
    top, bottom = lines.index("\\toprule"), lines.index("\\bottomrule")
    assert lines[top + 1] == "Group & Value & Note \\\\"
    body = lines[top + 2 : bottom]
    # \midrule under the header, and before row 2 (a new group); none before row 0.
    assert body == [
        "\\midrule",
        "a|b & 0.0450 & $-$1.5 $\\pm$ 0.2 \\\\",
        "a & 1,195,010 & x $<$ y \\\\",
        "\\midrule",
        "b & n/a & $\\Delta$ \\\\",
    ]
    assert "{\\footnotesize Mean $\\pm$ SD; 95\\% CI. Second note $<$b$>$.}" in tex
    assert tex.rstrip().endswith("\\end{table}")


def test_latex_spanning_header_and_empty_table():
    table = TextTable(
        title="T",
        header=["Model", "A paper", "A ours"],
        rows=[],
        align="lrr",
        latex_header=[("", "Model"), ("A", "Paper"), ("A", "Ours")],
    )
    lines = to_latex(table).splitlines()
    top = lines.index("\\toprule")
    assert lines[top + 1 : top + 6] == [
        " & \\multicolumn{2}{c}{A} \\\\",  # a blank cell, then A over two columns
        "\\cmidrule(lr){2-3}",
        "Model & Paper & Ours \\\\",
        "\\midrule",
        "\\multicolumn{3}{c}{(no rows)} \\\\",
    ]


def test_latex_text_leaves_no_character_pdflatex_cannot_print():
    text = latex_text("a_b {c} ~ ^ \\ & # $ % ± − Δ × ≥ ≤ < > — –")
    assert not re.search(r"(?<!\\)[_{}&#$%]", text.replace("$", "").replace("{}", ""))
    assert not set(text) & set("±−Δ×≥≤—–~^")
    assert "$\\pm$" in text and "$\\geq$" in text and "\\textbackslash" in text


def test_html_page_cells_escaped_alignment_and_group_rule():
    page = to_html(TABLE, after="<h4>extra</h4>")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<title>Effects: a_b &amp; 50%</title>" in page
    assert "<caption>Effects: a_b &amp; 50%</caption>" in page
    assert ">x &lt; y</td>" in page and ">a|b</td>" in page
    assert re.search(r"td\.col1 \{\s*text-align: right;", page)  # the "r" column
    assert not re.search(r"col[02] \{\s*text-align", page)
    assert re.search(r"tbody tr:nth-child\(3\) td \{\s*border-top", page)  # group at row 2
    assert "nth-child(1)" not in page
    notes_at = page.index('<p class="note">Mean ± SD; 95% CI.</p>')
    assert page.index("</table>") < notes_at < page.index("<h4>extra</h4>")
    assert '<p class="note">Second note &lt;b&gt;.</p>' in page


if __name__ == "__main__":
    # Regenerate the golden files (review `git diff tests/golden` before committing).
    import tempfile

    from fixtures.summaries import make_summary

    with tempfile.TemporaryDirectory() as tmp:
        out = write_tables(Path(tmp), make_summary)
        for stem in GOLDEN_TABLES:
            for ext in TABLE_FORMATS:
                target = GOLDEN / f"{stem}.{ext}"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text((out / f"{stem}.{ext}").read_text(encoding="utf-8"))
                print(f"wrote {target}")
