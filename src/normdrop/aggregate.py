"""From run folders to the study's summary tables (the learning-rate choice: normdrop.lr_search).

    python -m normdrop.aggregate collect --config-json '<merged config>' --out-dir summary/

`collect` loads every run of the config's grid, refuses runs whose recorded settings disagree
with the current config (a stale result from another config) or that mix code revisions, and
writes runs.parquet (one row per run with its final metrics), epochs.parquet (every curve) and
lr_search.parquet (every candidate), atomically.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd

from normdrop import layout
from normdrop.attempts import run_compute_s
from normdrop.catalog import DATASETS, SUMMARY_FILES, synthetic_settings
from normdrop.config import EXECUTION_FIELDS, RUN_DEFAULTS, current_names
from normdrop.grid import grid_config
from normdrop.lr_search import load_run
from normdrop.metrics import run_metrics
from normdrop.storage import atomic_write_parquet
from normdrop.tracking import write_mean_curves


class StaleResultsError(RuntimeError):
    """Runs on disk disagree with the current config or with each other's code revision."""


# --------------------------------------------------------------------------- summary
def _semantic(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k not in (*EXECUTION_FIELDS, "lr")}


def _diff(recorded: dict, expected: dict) -> str:
    recorded, expected = _semantic(_normalised(recorded)), _semantic(_normalised(expected))
    keys = sorted(k for k in expected if recorded.get(k) != expected[k])
    return ", ".join(f"{k}: {recorded.get(k)!r} on disk vs {expected[k]!r} in config" for k in keys)


def _normalised(settings: dict) -> dict:
    # JSON stores tuples as lists, and runs recorded before the renames the old names (config.
    # LEGACY_NAMES), before a setting existed without it (it had its default, as their settings
    # hash says: RunConfig.settings_hash): compare like with like.
    settings = {**RUN_DEFAULTS, **current_names(settings)}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}


def _keys(run: layout.RunSpec) -> dict:
    return {
        "dataset": run.dataset,
        "model": run.model,
        "variant": run.variant,
        "seed": int(run.tag),
    }


def run_row(run: layout.RunSpec, meta: dict, epochs, variant: dict, fraction: float, classes=None):
    """One training run's row of runs.parquet: its settings, final metrics and provenance;
    `variant`: its entry of the config's variants (norm, dropout on or off, family); `classes`
    (the dataset's) tells a run that did not learn (metrics.learned)."""
    settings = current_names(meta["settings"])
    return {
        **_keys(run),
        "norm": variant["norm"],
        # on when its rate is > 0 (a swept rate of 0 is dropout off)
        "dropout": bool(variant["dropout"] and settings["dropout_rate"] > 0),
        "dropout_rate": settings["dropout_rate"],
        "family": variant.get("family", run.variant),  # variant before a sweep
        "batch_size": settings["batch_size"],
        "lr": meta["lr"],
        "param_count": meta["param_count"],
        "status": meta["status"],
        "diverged_epoch": meta["diverged_epoch"] or math.nan,
        "epochs": settings["epochs"],
        **run_metrics(epochs, meta["train_eval_acc"], meta["status"], fraction, classes),
        "convergence_fraction": fraction,  # what convergence_epoch means (tables, figures)
        "wall_time_s": meta["wall_time_s"],
        "compute_s": run_compute_s(meta, math.nan),  # all attempts; NaN: unknown
        "git_revision": meta["git_revision"],
        "device": meta.get("device", "unknown"),
        "slurm_job_id": meta.get("slurm_job_id"),
    }


def check_one_dataset_file(data: dict[str, dict[str | None, list[Path]]]) -> None:
    """All runs on one dataset (searches and training runs, so every cell) were trained on one
    prepared file, by its SHA-256: else one line naming the hashes and a run of each."""
    for dataset, by_hash in data.items():
        if len(by_hash) > 1:
            listing = ", ".join(
                f"{(h or 'not recorded')[:12]} ({len(f)} runs, e.g. {f[0]})"
                for h, f in by_hash.items()
            )
            raise StaleResultsError(
                f"runs on {dataset} were trained on {len(by_hash)} different data files "
                f"(data_sha256 in meta.json): {listing}. Rerun the runs that do not match the "
                "current data (delete them, or --forcerun train lr_search)."
            )


def collect_runs(config: dict) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """runs, epochs and lr_search frames of the config's grid; StaleResultsError if a run on disk
    disagrees with the config (each one listed) or the runs mix code revisions."""
    config = grid_config(config)  # `select` and `sweep` applied (a no-op on the workflow's grid)
    results = config["results_dir"]
    fraction = config["metrics"]["convergence_fraction"]
    runs, curves, candidates, stale, chosen, data = [], [], [], [], {}, {}
    for run in layout.iter_runs(config):
        cell = (run.dataset, run.model, run.variant)
        if cell not in chosen:  # the cell's first run: its search's choice and candidates
            chosen[cell] = selected = json.loads(
                Path(layout.selected(results, **run.wildcards)).read_text()
            )
            candidates += [
                {**c, "selected": c["lr"] == selected["lr"]} for c in selected["candidates"]
            ]
        folder = Path(layout.run_dir(results, run.kind, **run.wildcards))
        meta, epochs = load_run(folder)
        data.setdefault(run.dataset, {}).setdefault(meta.get("data_sha256"), []).append(folder)
        expected = _normalised(run.settings.to_dict())
        if _semantic(_normalised(meta["settings"])) != _semantic(expected):
            stale.append(f"{folder}: {_diff(meta['settings'], expected)}")
        elif run.kind == "train" and meta["lr"] != chosen[cell]["lr"]:
            stale.append(f"{folder}: lr {meta['lr']} on disk vs {chosen[cell]['lr']} selected")
        if run.kind == "train":
            spec = config["variants"][run.variant]
            synthetic = synthetic_settings(config["data"].get("synthetic"))["num_classes"]
            classes = DATASETS[run.dataset].classes or synthetic
            runs.append(run_row(run, meta, epochs, spec, fraction, classes))
            curves.append(epochs.assign(**_keys(run)))
    if stale:
        raise StaleResultsError(
            f"{len(stale)} result(s) disagree with the current config (delete them, or rerun "
            "with --forcerun train lr_search, to recompute):\n  " + "\n  ".join(stale[:20])
        )
    check_one_dataset_file(data)
    runs = pd.DataFrame(runs)
    revisions = runs["git_revision"].value_counts()
    if len(revisions) > 1 and not config["metrics"]["allow_mixed_revisions"]:
        listing = ", ".join(f"{rev} ({n} runs)" for rev, n in revisions.items())
        raise StaleResultsError(
            f"runs come from {len(revisions)} code revisions: {listing}. Rerun the older ones, "
            "or set metrics.allow_mixed_revisions: true to accept the mix."
        )
    key_cols = ["dataset", "model", "variant", "seed"]
    epochs = pd.concat(curves, ignore_index=True)
    epochs = epochs[key_cols + [c for c in epochs.columns if c not in key_cols]]
    return runs, epochs, pd.DataFrame(candidates)


# --------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m normdrop.aggregate")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("collect", help="summary parquet files of the whole grid")
    a.add_argument("--config-json", required=True, help="the merged workflow config as JSON")
    a.add_argument("--out-dir", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        runs, epochs, candidates = collect_runs(json.loads(args.config_json))
    except (ValueError, StaleResultsError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for name, frame in zip(SUMMARY_FILES.values(), (runs, epochs, candidates), strict=True):
        atomic_write_parquet(args.out_dir / name, frame)
    print(f"collected {len(runs)} runs into {args.out_dir}")
    config = json.loads(args.config_json)
    if config.get("tracking", {}).get("tensorboard"):
        cells = write_mean_curves(epochs, config["results_dir"])
        print(f"wrote seed-averaged TensorBoard curves of {len(cells) // 3} cells")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
