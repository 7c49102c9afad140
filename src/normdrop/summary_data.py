"""The summary data contract: what the aggregate step writes and every report module reads.

- The three files under `{results_dir}/summary/` (`runs.parquet`, `epochs.parquet`,
  `lr_search.parquet`), their required columns, and `read_summary`, which checks them and raises
  `SummaryError` with one line naming the file and what is wrong.
- The display names and order of datasets, models and variants, and the paper's four
  configurations, found by their (norm, dropout) pair, never by a variant's name.
- The metrics as displayed (unit, decimals, CSV name), and which runs count in a mean.
- Which (dataset, model) pairs a report covers, and the CLI options that choose them.

Used by normdrop.tables, normdrop.hypotheses, normdrop.plots, normdrop.study and normdrop.report.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

# --------------------------------------------------------------------------------------------
# The files (written by normdrop.aggregate)

RUN_COLUMNS = (
    "dataset",
    "model",
    "variant",
    "norm",
    "dropout",
    "dropout_rate",
    "seed",
    "lr",
    "param_count",
    "status",
    "diverged_epoch",
    "epochs",
    "loss_sd",
    "loss_sd_late",
    "convergence_epoch",
    "final_test_acc",
    "final_val_acc",
    "final_train_acc",
    "gen_gap",
    "es_epoch",
    "es_test_acc",
)
EPOCH_COLUMNS = (
    "dataset",
    "model",
    "variant",
    "seed",
    "epoch",
    "lr",
    "train_loss_mean",
    "train_loss_sd",
    "val_acc",
    "test_acc",
)
LR_SEARCH_COLUMNS = ("dataset", "model", "variant", "lr", "status", "best_val_acc", "selected")

SUMMARY_FILES = {
    "runs": ("runs.parquet", RUN_COLUMNS),
    "epochs": ("epochs.parquet", EPOCH_COLUMNS),
    "lr_search": ("lr_search.parquet", LR_SEARCH_COLUMNS),
}


class SummaryError(Exception):
    """Missing or malformed summary input; the message names the file and what is wrong."""


def read_summary(summary_dir: Path | str, name: str) -> pd.DataFrame:
    """One summary table ('runs', 'epochs' or 'lr_search'), checked against the contract."""
    filename, required = SUMMARY_FILES[name]
    path = Path(summary_dir) / filename
    if not path.is_file():
        raise SummaryError(f"{path}: file not found (run the workflow's aggregate step first)")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise SummaryError(f"{path}: not a readable parquet file ({exc})") from exc
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise SummaryError(f"{path}: missing column(s) {', '.join(missing)}")
    frame = frame.copy()
    for col in ("dataset", "model", "variant"):
        frame[col] = frame[col].astype(str)
    if "dropout" in frame.columns:
        frame["dropout"] = frame["dropout"].astype(bool)
    if "selected" in frame.columns:
        frame["selected"] = frame["selected"].astype(bool)
    return frame


# --------------------------------------------------------------------------------------------
# Names, order and description of datasets, models and variants

DATASET_NAMES = {
    "mnist": "MNIST",
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "synthetic": "Synthetic",
}
MODEL_NAMES = {"mlp": "MLP", "cnn": "CNN", "resnet20": "ResNet-20", "vit": "ViT", "lstm": "LSTM"}
DATASET_ORDER = ("mnist", "cifar10", "cifar100", "synthetic")
MODEL_ORDER = ("mlp", "cnn", "resnet20", "vit", "lstm")

# The paper's four configurations, identified by (norm, dropout), never by the variant's name.
PAPER_VARIANTS = ("none", "bn", "dropout", "bn_dropout")
PAPER_KEY = {("none", False): "none", ("batch", False): "bn", ("none", True): "dropout"}
PAPER_KEY[("batch", True)] = "bn_dropout"
NORM_NAMES = {
    "none": "",
    "batch": "BN",
    "group": "GroupNorm",
    "layer": "LayerNorm",
    "rms": "RMSNorm",
}
NORM_ORDER = ("none", "batch", "group", "layer", "rms")


def dataset_name(dataset: str) -> str:
    return DATASET_NAMES.get(dataset, dataset)


def model_name(model: str) -> str:
    return MODEL_NAMES.get(model, model)


def ordered(values: Iterable[str], preferred: Sequence[str]) -> list[str]:
    """Unique values, the known ones in `preferred` order first, then the rest sorted."""
    values = set(values)
    known = [v for v in preferred if v in values]
    return known + sorted(values - set(known))


def paper_key(norm: str, dropout: bool) -> str | None:
    """'none', 'bn', 'dropout' or 'bn_dropout' for the paper's configurations, else None."""
    return PAPER_KEY.get((str(norm), bool(dropout)))


def variant_table(runs: pd.DataFrame) -> list[tuple[str, str, bool, str | None]]:
    """(variant, norm, dropout, paper key or None) per variant name, in display order."""
    meta = runs.groupby("variant", sort=False)[["norm", "dropout"]].first()
    entries = [
        (str(v), str(n), bool(d), paper_key(n, d))
        for v, n, d in zip(meta.index, meta["norm"], meta["dropout"], strict=True)
    ]

    def sort_key(entry) -> tuple:
        variant, norm, dropout, key = entry
        if key is not None:
            # The canonical name first when a user defines two variants with the same pair.
            return (0, PAPER_VARIANTS.index(key), variant != key, variant)
        norm_pos = NORM_ORDER.index(norm) if norm in NORM_ORDER else len(NORM_ORDER)
        return (1, norm_pos, dropout, variant)

    return sorted(entries, key=sort_key)


def order_variants(runs: pd.DataFrame, variants: Iterable[str] | None = None) -> list[str]:
    """Variant names in display order: the paper's four, then the others by norm and dropout."""
    names = [entry[0] for entry in variant_table(runs)]
    if variants is None:
        return names
    wanted = set(variants)
    return [v for v in names if v in wanted]


def paper_variants(runs: pd.DataFrame) -> dict[str, str]:
    """Map paper key -> variant name among `runs` (usually one dataset/model).

    When several variants share a (norm, dropout) pair, the one named like the key wins, else
    the first in sort order.
    """
    found: dict[str, str] = {}
    for variant, _, _, key in variant_table(runs):
        if key is not None and key not in found:
            found[key] = variant
    return found


def describe_variant(norm: str, dropout: bool, rates: Iterable[float] = ()) -> str:
    """Human description of a (norm, dropout) pair, e.g. 'BN + dropout (p=0.3)'."""
    rates = sorted({float(r) for r in rates if r is not None and np.isfinite(r) and r > 0})
    rate = f" (p={'/'.join(f'{r:g}' for r in rates)})" if rates else ""
    norm_text = NORM_NAMES.get(str(norm), str(norm))
    if not norm_text and not dropout:
        return "No BN, no dropout"
    if not norm_text:
        return f"Dropout only{rate}"
    if not dropout:
        return f"{norm_text} only"
    return f"{norm_text} + dropout{rate}"


# --------------------------------------------------------------------------------------------
# Metrics as displayed, and the runs that count in them


@dataclass(frozen=True)
class Metric:
    column: str  # column of runs.parquet
    label: str  # table header
    scale: float  # factor from the stored unit to the displayed one
    decimals: int
    csv_name: str  # column stem in the CSV outputs (names the displayed unit)


METRICS = (
    Metric("loss_sd", "Loss SD", 1.0, 4, "loss_sd"),
    Metric("loss_sd_late", "Loss SD ep. 2+", 1.0, 4, "loss_sd_late"),
    Metric("convergence_epoch", "Conv. epoch", 1.0, 1, "convergence_epoch"),
    Metric("final_test_acc", "Test acc. (%)", 100.0, 2, "final_test_acc_pct"),
    Metric("gen_gap", "Gen. gap (pts)", 1.0, 2, "gen_gap_pts"),
    Metric("es_test_acc", "ES test acc. (%)", 100.0, 2, "es_test_acc_pct"),
    Metric("es_epoch", "ES epoch", 1.0, 1, "es_epoch"),
)
METRIC_BY_COLUMN = {m.column: m for m in METRICS}


def completed(runs: pd.DataFrame) -> pd.Series:
    """Boolean mask of runs that count in means: completed ones (a diverged run has NaNs)."""
    return runs["status"].astype(str) == "completed"


def did_not_learn(runs: pd.DataFrame) -> pd.Series:
    """Boolean mask of completed runs that ended within the margin of chance (metrics.learned);
    none in a summary written before the `learned` column existed."""
    if "learned" not in runs.columns:
        return pd.Series(False, index=runs.index)
    return completed(runs) & ~runs["learned"].astype(bool)


def did_not_learn_text(n: int, n_runs: int) -> str:
    return f"did not learn ({n}/{n_runs} seeds)"


def metric_values(runs: pd.DataFrame, column: str) -> np.ndarray:
    """Finite values of one metric over the completed runs, in displayed units."""
    metric = METRIC_BY_COLUMN.get(column)
    scale = metric.scale if metric else 1.0
    values = pd.to_numeric(runs.loc[completed(runs), column], errors="coerce").to_numpy(float)
    return values[np.isfinite(values)] * scale


# --------------------------------------------------------------------------------------------
# What a report covers


def select_pairs(
    runs: pd.DataFrame,
    datasets: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    source: str = "runs.parquet",
) -> list[tuple[str, str]]:
    """(dataset, model) pairs to report, in display order.

    Without `datasets`/`models`: every pair present in `runs`. With them: exactly their
    product, so that the outputs are known in advance; a pair without runs is an error.
    """
    present = set(zip(runs["dataset"], runs["model"], strict=True))
    if datasets is None and models is None:
        ds = ordered({d for d, _ in present}, DATASET_ORDER)
        ms = ordered({m for _, m in present}, MODEL_ORDER)
        return [(d, m) for d in ds for m in ms if (d, m) in present]
    ds = list(datasets) if datasets is not None else ordered({d for d, _ in present}, DATASET_ORDER)
    ms = list(models) if models is not None else ordered({m for _, m in present}, MODEL_ORDER)
    missing = [f"{d}/{m}" for d in ds for m in ms if (d, m) not in present]
    if missing:
        raise SummaryError(f"{source}: no runs for dataset/model {', '.join(missing)}")
    return [(d, m) for d in ds for m in ms]


def read_selection(
    summary_dir: Path | str,
    datasets: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, list[tuple[str, str]], list[str], list[str]]:
    """(runs of the selected datasets and models, pairs, datasets, models), in display order."""
    runs = read_summary(summary_dir, "runs")
    pairs = select_pairs(runs, datasets, models, source=str(Path(summary_dir) / "runs.parquet"))
    ds = ordered({d for d, _ in pairs}, datasets or DATASET_ORDER)
    ms = ordered({m for _, m in pairs}, models or MODEL_ORDER)
    return runs[runs["dataset"].isin(ds) & runs["model"].isin(ms)], pairs, ds, ms


def add_selection_args(parser: argparse.ArgumentParser) -> None:
    """The options shared by the report CLIs: where to read, where to write, what to cover."""
    parser.add_argument("--summary-dir", required=True, type=Path, help="the aggregate's output")
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument(
        "--datasets", nargs="+", help="report exactly these datasets (default: all in runs)"
    )
    parser.add_argument("--models", nargs="+", help="report exactly these models (default: all)")


def run_report_cli(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    write: Callable[[argparse.Namespace], list[Path]],
    what: str,
) -> int:
    """Parse `argv`, write, and say how many `what` files were written; bad summary input is
    one line on stderr and exit code 2."""
    args = parser.parse_args(argv)
    try:
        paths = write(args)
    except SummaryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} {what} files under {args.out_dir}")
    return 0
