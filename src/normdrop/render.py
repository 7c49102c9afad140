"""One table in Markdown, LaTeX (booktabs) and HTML, rendered by pandas; numbers as displayed.

A `TextTable` is the displayed text of a table (title, header, cells, alignment, notes, where
horizontal rules go). pandas renders it: `DataFrame.to_markdown` (tabulate's pipe format),
`Styler.to_latex(hrules=True)` (\\toprule, \\midrule, \\bottomrule) and `Styler.to_html`.
Written here by hand is only what those do not do, each where it happens:

- Markdown: the bold title line and the notes below the grid; '|' escaped in cells.
- LaTeX: the characters pdflatex cannot print from pandas' escaped text (±, −, Δ, <, ...);
  \\cmidrule under spanning headers, \\midrule between groups of rows, a "(no rows)" line; the
  notes below the tabular.
- HTML: the page's title, font and the notes below the table; column alignment and group
  rules as CSS.

Cells are text, not numbers: `fmt_num` and friends write them (true minus sign, 'n/a' for a
missing value, mean ± SD).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.io.formats.style import Styler

from normdrop.storage import atomic_write_text

# --------------------------------------------------------------------------------------------
# Numbers as displayed


def fmt_num(value: float, decimals: int, signed: bool = False) -> str:
    """A number for display; negative with a true minus sign (U+2212), 'n/a' if not finite."""
    if value is None or not np.isfinite(value):
        return "n/a"
    text = f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"
    return text.replace("-", "−")


def fmt_mean_sd(mean: float, sd: float, n: int, decimals: int) -> str:
    """'84.70 ± 0.31'; 'n/a' without values; '84.70 (n=1)' when the SD is undefined."""
    if n == 0 or not np.isfinite(mean):
        return "n/a"
    if n < 2 or not np.isfinite(sd):
        return f"{fmt_num(mean, decimals)} (n={n})"
    return f"{fmt_num(mean, decimals)} ± {fmt_num(sd, decimals)}"


def fmt_signed(value: float, decimals: int) -> str:
    return fmt_num(value, decimals, signed=True)


# --------------------------------------------------------------------------------------------
# The table


@dataclass
class TextTable:
    title: str
    header: list[str]
    rows: list[list[str]]
    align: str  # one letter per column: l, c or r
    notes: list[str] = field(default_factory=list)
    label: str = ""  # LaTeX \label; also names the HTML table's id
    rule_before: set[int] = field(default_factory=set)  # row indices that start a new group
    # LaTeX-only header: shorter names, or (spanning header, name) pairs for two header rows.
    latex_header: list[str] | list[tuple[str, str]] | None = None

    def frame(self, header: list | None = None) -> pd.DataFrame:
        """The cells as a frame of strings, one column per header entry (names may repeat)."""
        header = self.header if header is None else header
        if header and isinstance(header[0], tuple):
            columns = pd.MultiIndex.from_tuples(header)
        else:
            columns = pd.Index(header)
        return pd.DataFrame(self.rows, columns=columns, dtype=object)

    def group_starts(self) -> list[int]:
        """Row indices above which a group rule is drawn (none above the first row)."""
        return sorted(i for i in self.rule_before if 0 < i < len(self.rows))


# --------------------------------------------------------------------------------------------
# Markdown

_COLALIGN = {"l": "left", "c": "center", "r": "right"}


def fmt_p(p: float) -> str:
    """A p-value: '0.012', '< 0.001' or 'n/a'."""
    if not np.isfinite(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def p_text(p: float) -> str:
    """'p = 0.012' or 'p < 0.001'."""
    text = fmt_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _md_cell(text: str) -> str:
    # tabulate writes cells as they are: a '|' would end the cell and a newline the row.
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(table: TextTable) -> str:
    """A bold title line, the pipe table, then the notes (each ending in a line break)."""
    cells = table.frame().map(_md_cell)
    grid = cells.to_markdown(
        index=False,
        tablefmt="pipe",
        headers=[_md_cell(h) for h in table.header],
        colalign=[_COLALIGN[a] for a in table.align],
        disable_numparse=True,  # cells are already formatted ('0.0450' must not become 0.045)
    )
    lines = [f"**{table.title}**", "", grid]
    if table.notes:
        lines.append("")
        lines += [f"{note}  " for note in table.notes]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# LaTeX

# pandas' escape="latex" handles LaTeX's special ASCII characters; these are left for pdflatex
# to choke on: no glyph in its default font encoding (or, for '<' and '>', the wrong one: they
# print as '¡' and '¿' in text mode). No library maps them, so this table does.
_LATEX_SYMBOLS = {
    "±": r"$\pm$",
    "−": r"$-$",
    "Δ": r"$\Delta$",
    "×": r"$\times$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "<": r"$<$",
    ">": r"$>$",
    "—": "---",
    "–": "--",
}
_LATEX_SYMBOL_RE = re.compile("|".join(map(re.escape, _LATEX_SYMBOLS)))


def _latex_symbols(escaped: str) -> str:
    """Text already escaped by pandas, with the symbols pdflatex cannot print replaced."""
    return _LATEX_SYMBOL_RE.sub(lambda m: _LATEX_SYMBOLS[m.group()], str(escaped))


def latex_text(text: str) -> str:
    """Free text (caption, notes) escaped for LaTeX as pandas escapes a cell.

    Styler escapes cells and headers but places the caption as given and has no notes, so the
    text goes through Styler's own escaping as a one-cell table.
    """
    one_cell = Styler(pd.DataFrame([[str(text)]])).hide(axis="index").hide(axis="columns")
    return _latex_symbols(one_cell.format(escape="latex").to_string().rstrip("\n"))


def _latex_rules(tex: str, table: TextTable, n_header_rows: int) -> str:
    """Add to Styler's booktabs output what it does not draw: \\cmidrule under each spanning
    header, \\midrule between groups of rows, and "(no rows)" in an empty table. Styler writes
    one line per header and body row between \\toprule, \\midrule and \\bottomrule."""
    lines = tex.split("\n")
    top = lines.index("\\toprule")
    body = top + n_header_rows + 2  # the first body row, after the header's \midrule
    bottom = lines.index("\\bottomrule")
    for i in reversed(table.group_starts()):
        lines.insert(body + i, "\\midrule")
    if not table.rows:
        lines.insert(bottom, f"\\multicolumn{{{len(table.header)}}}{{c}}{{(no rows)}} \\\\")
    if n_header_rows == 2:
        rules, col = [], 1
        for name, group in groupby(h[0] for h in table.latex_header):
            span = len(list(group))
            if name:
                rules.append(f"\\cmidrule(lr){{{col}-{col + span - 1}}}")
            col += span
        lines.insert(top + 2, " ".join(rules))
    return "\n".join(lines)


def to_latex(table: TextTable) -> str:
    """A booktabs table environment; needs \\usepackage{booktabs} in the preamble."""
    header = table.latex_header or table.header
    two_rows = bool(header) and isinstance(header[0], tuple)
    styler = Styler(table.frame(header)).hide(axis="index")
    styler.format(escape="latex", formatter=_latex_symbols)
    styler.format_index(escape="latex", formatter=_latex_symbols, axis="columns")
    styler.set_table_styles([{"selector": "small", "props": ":;"}], overwrite=False)
    tex = styler.to_latex(
        column_format=table.align,
        position="htbp",
        position_float="centering",
        caption=latex_text(table.title),
        label=table.label or None,
        hrules=True,
        multicol_align="c",
    )
    tex = _latex_rules(tex.rstrip("\n"), table, 2 if two_rows else 1)
    if table.notes:
        notes = " ".join(latex_text(n) for n in table.notes)
        end = tex.rindex("\\end{table}")
        tex = tex[:end] + f"\n\\par\\smallskip{{\\footnotesize {notes}}}\n" + tex[end:]
    return "% Generated by normdrop.tables; needs \\usepackage{booktabs}.\n" + tex + "\n"


# --------------------------------------------------------------------------------------------
# HTML

_HTML_STYLE = [
    ("", "border-collapse: collapse"),
    ("caption", "font-weight: bold; text-align: left; padding: 4px 0"),
    ("th, td", "padding: 3px 8px; border-bottom: 1px solid #ccc"),
    ("th", "border-bottom: 2px solid #333"),
]
_CSS_ALIGN = {"c": "center", "r": "right"}
_PAGE_STYLE = (
    "body{font-family:sans-serif;font-size:14px;margin:1em}p.note{font-size:12px;color:#444}"
)


def to_html(table: TextTable, after: str = "") -> str:
    """A standalone HTML page (Snakemake's report embeds HTML results, not Markdown): the
    title as the table's caption, the notes below it, then `after` (HTML, as given)."""
    uuid = re.sub(r"[^A-Za-z0-9-]", "-", table.label or "table")
    styler = Styler(table.frame(), uuid=uuid, cell_ids=False).hide(axis="index")
    styler.format(escape="html").format_index(escape="html", axis="columns")
    styles = [{"selector": s, "props": p} for s, p in _HTML_STYLE]
    styles += [
        {"selector": f"th.col{j}, td.col{j}", "props": f"text-align: {_CSS_ALIGN[a]}"}
        for j, a in enumerate(table.align)
        if a in _CSS_ALIGN
    ]
    styles += [  # a group of rows starts below a heavier rule (LaTeX: \midrule)
        {"selector": f"tbody tr:nth-child({i + 1}) td", "props": "border-top: 2px solid #999"}
        for i in table.group_starts()
    ]
    styler.set_caption(html.escape(table.title)).set_table_styles(styles)
    page = styler.to_html(doctype_html=True)
    # Styler styles the table only; the page's title, font and notes are ours.
    head = f"<title>{html.escape(table.title)}</title>\n<style>{_PAGE_STYLE}</style>\n"
    notes = "".join(f'<p class="note">{html.escape(n)}</p>\n' for n in table.notes)
    return page.replace("</head>", head + "</head>").replace("</body>", notes + after + "</body>")


# --------------------------------------------------------------------------------------------
# Files


def write_table(table: TextTable, stem: Path, csv: pd.DataFrame | None = None) -> list[Path]:
    """Write `stem`.md/.tex/.html (and .csv when given), each atomically."""
    stem = Path(stem)
    paths = [
        atomic_write_text(stem.with_suffix(".md"), to_markdown(table)),
        atomic_write_text(stem.with_suffix(".tex"), to_latex(table)),
        atomic_write_text(stem.with_suffix(".html"), to_html(table)),
    ]
    if csv is not None:
        paths.append(atomic_write_text(stem.with_suffix(".csv"), csv.to_csv(index=False)))
    return paths
