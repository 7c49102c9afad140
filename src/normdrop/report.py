"""The text summary of a study: `{results_dir}/summary/report.md`.

Per hypothesis (the paper's wording beside ours), one sentence per dataset and model with the
verdict, effect size and 95% CI; the verdict matrix; our CIFAR-10 numbers beside the paper's
Table 2; Tables 2 and 1; compute, hardware and what the error bars mean (normdrop.compute,
from the run folders' meta.json); links to the figures when their directory is given. The rest
is computed from the summary files with the same code as normdrop.tables and
normdrop.hypotheses, so the report and the tables cannot disagree.

CLI: python -m normdrop.report --summary-dir D [--out D/report.md] [--figures-dir F]
                               [--datasets ...] [--models ...]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from normdrop import compute
from normdrop import hypotheses as hyp
from normdrop import tables as tab
from normdrop.catalog import REPORT_FILE, SUMMARY_FILES, figure_paths, load_claims
from normdrop.lr_search import pick_edge
from normdrop.render import to_markdown
from normdrop.seed_stats import variant_stats
from normdrop.storage import atomic_write_text
from normdrop.summary_data import (
    SummaryError,
    completed,
    convergence_fraction,
    order_variants,
    read_selection,
    read_summary,
)

METHOD = (
    "Each effect is a difference of means over seeds with a 95% confidence interval from "
    "Welch's t-test (unequal variances). A hypothesis is *supported* when the interval lies "
    "entirely on the predicted side of zero, *reversed* when it lies entirely on the other "
    "side, and *inconclusive* when it contains zero or cannot be formed (fewer than two "
    "finished seeds, or no spread at all). H1 needs both of its parts (loss SD and "
    "convergence epoch). Diverged runs are left out of every mean and counted; a run that did "
    "not learn (final validation accuracy at most 1.5 x chance) has no convergence epoch and is "
    "counted as such. The full rule "
    "is in `normdrop/hypotheses.py`."
)


# A search of two rates has no inside: each pick is the largest or smallest rate (docs/protocol.md).
TWO_RATES = (
    "Note: the learning-rate search tried two rates per cell, so every pick is at the edge of the "
    "rates tried and the edge says nothing here; give lr_search.candidates three or more rates "
    "to learn whether the best rate lies beyond them."
)


def _provenance(runs) -> str:
    n = len(runs)
    n_done = int(completed(runs).sum())
    revs = (
        ", ".join(sorted({str(r) for r in runs["git_revision"]})) if "git_revision" in runs else ""
    )
    devices = ", ".join(sorted({str(d) for d in runs["device"]})) if "device" in runs else ""
    text = f"{n} training runs ({n_done} completed, {n - n_done} diverged)."
    if revs:
        text += f" Code revision(s): {revs}."
    if devices:
        text += f" Device(s): {devices}."
    return text


def _demote(markdown: str, level: int = 3) -> str:
    """A table's bold title line becomes a heading of `level` inside the report."""
    lines = markdown.splitlines()
    if lines and lines[0].startswith("**") and lines[0].endswith("**"):
        lines[0] = "#" * level + " " + lines[0].strip("*")
    return "\n".join(lines) + "\n"


def lr_edge_note(summary_dir: Path, pairs) -> list[str]:
    """A note under Table 2 naming the cells whose learning-rate pick is the largest or smallest
    rate tried (normdrop.lr_search.pick_edge): their best rate may lie outside the grid."""
    if not (Path(summary_dir) / SUMMARY_FILES["lr_search"]).is_file():
        return []
    search = read_summary(summary_dir, "lr_search")
    if search.groupby(["dataset", "model", "variant"]).size().le(2).all():
        return [TWO_RATES, ""]  # every pick is at an edge: one line, not one per cell
    cells = []
    for (d, m, v), group in search.groupby(["dataset", "model", "variant"], sort=False):
        rows = group.to_dict("records")
        picked = [r for r in rows if r["selected"]]
        edge = pick_edge(rows, picked[0]) if picked else None  # as select-lr marked it
        if (d, m) in pairs and edge:
            cells.append(f"{d}/{m}/{v} (lr {picked[0]['lr']:g}, the {edge})")
    if not cells:
        return []
    return [
        f"Note: the learning-rate search picked the largest or smallest rate tried for "
        f"{len(cells)} cell(s): {'; '.join(cells)}. Their best rate may lie outside the grid "
        "(docs/protocol.md, learning-rate search; `lr_search.extend_at_edge` searches further).",
        "",
    ]


def build_report(
    summary_dir: Path | str,
    out_path: Path | str,
    figures_dir: Path | str | None = None,
    datasets: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
) -> str:
    summary_dir = Path(summary_dir)
    runs, pairs, ds, ms = read_selection(summary_dir, datasets, models)
    stats = variant_stats(runs)
    variants = order_variants(runs)
    results = hyp.run_hypothesis_tests(runs, pairs)
    words = hyp.sentences(results)
    claims = {c["id"]: c for c in load_claims()}

    out = ["# BatchNorm and dropout: results against the paper's hypotheses", ""]
    out += [_provenance(runs), "", METHOD, ""]
    out.append(_demote(to_markdown(hyp.verdict_table(hyp.verdicts(results))), 2))
    out += ["## Hypotheses", ""]
    for h, lines in words.items():
        claim = claims.get(h, {})
        out.append(f"### {h}: {hyp.wordings()[h]}")
        out.append("")
        if claim:
            out.append(f'> Paper: "{claim["statement"].strip()}"')
            if claim.get("evidence"):
                out.append(f'> Its evidence (Table 2): "{claim["evidence"].strip()}"')
            out.append("")
        out += [f"- {s}" for s in lines]
        out.append("")
    comparison, _, _ = tab.paper_comparison(stats, runs, ms)
    if comparison.header == ["Comparison"]:  # no run on the paper's dataset: its one sentence
        out += [f"## {comparison.title}", "", comparison.rows[0][0], ""]
    else:
        out.append(_demote(to_markdown(comparison), 2))
    out += ["## Table 2 per dataset and model", ""]
    out += [
        _demote(to_markdown(tab.table2(stats, d, m, variants, convergence_fraction(runs))))
        for d, m in pairs
    ]
    out += lr_edge_note(summary_dir, pairs)
    table1, _ = tab.table1(runs, ds, ms)
    out += ["## Parameter counts (Table 1)", "", _demote(to_markdown(table1))]
    # The results folder holds the summary folder (layout.summary_dir) and the run folders.
    out += [_demote(line) if line.startswith("**") else line
            for line in compute.section(summary_dir.parent, runs)]  # fmt: skip
    if figures_dir is not None:
        out += ["## Figures", ""]
        base = Path(out_path).parent
        paths = [p for p in figure_paths(figures_dir, ds, ms) if p.suffix == ".png"]
        for p in paths:
            rel = os.path.relpath(p, base)
            label = " / ".join(Path(p).relative_to(figures_dir).with_suffix("").parts)
            out.append(f"- [{label}]({rel})")
        out.append("")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the study's text summary (Markdown).")
    parser.add_argument("--summary-dir", required=True, type=Path)
    parser.add_argument("--out", type=Path, help="default: SUMMARY_DIR/report.md")
    parser.add_argument("--figures-dir", type=Path, help="link the figures from here")
    parser.add_argument("--datasets", nargs="+")
    parser.add_argument("--models", nargs="+")
    args = parser.parse_args(argv)
    out = args.out or args.summary_dir / REPORT_FILE
    try:
        text = build_report(args.summary_dir, out, args.figures_dir, args.datasets, args.models)
    except SummaryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    atomic_write_text(out, text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
