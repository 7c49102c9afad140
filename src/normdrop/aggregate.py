"""From run folders to the study's summary tables, and the learning-rate choice.

    python -m normdrop.aggregate select-lr --out selected.json <candidate>/meta.json ...
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
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd

from normdrop import layout
from normdrop.catalog import DATASETS, SUMMARY_FILES, synthetic_settings
from normdrop.config import EXECUTION_FIELDS
from normdrop.grid import grid_config
from normdrop.metrics import run_metrics
from normdrop.storage import atomic_write_json, atomic_write_parquet


class StaleResultsError(RuntimeError):
    """Runs on disk disagree with the current config or with each other's code revision."""


def load_run(folder: Path) -> tuple[dict, pd.DataFrame]:
    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text())
    return meta, pd.read_parquet(folder / "epochs.parquet")


# --------------------------------------------------------------------------- lr search
def candidate_row(meta: dict, epochs: pd.DataFrame) -> dict:
    best = epochs["val_acc"].max() if meta["status"] == "completed" else math.nan
    return {
        "dataset": meta["dataset"],
        "model": meta["model"],
        "variant": meta["variant"],
        "lr": meta["lr"],
        "status": meta["status"],
        "best_val_acc": float(best) if pd.notna(best) else math.nan,
    }


def lr_edge(lrs, picked: float) -> str | None:
    """'largest' or 'smallest' when `picked` is the largest or smallest of the rates tried (the
    best rate may lie beyond them; diverged rates count as tried), else None. One rate is a fixed
    rate, not a search: None."""
    lrs = sorted(set(lrs))
    if len(lrs) < 2:
        return None
    return "largest" if picked == lrs[-1] else "smallest" if picked == lrs[0] else None


def pick_edge(candidates: list[dict], pick: dict) -> str | None:
    """lr_edge of a search's pick among its candidate rows (lr, status, best_val_acc), as
    selected.json and the report both mark it. A pick that ties with another rate (every
    candidate at chance, say) does not point beyond the grid: the search did not tell them apart,
    so it is not marked, nor extended."""
    valid = [c for c in candidates if c["status"] == "completed"]
    if sum(c["best_val_acc"] == pick["best_val_acc"] for c in valid) > 1:
        return None
    return lr_edge([c["lr"] for c in candidates], pick["lr"])


def select_lr(candidate_folders: list[Path]) -> dict:
    """The candidate with the best validation accuracy (ties: the smaller rate); diverged lose.
    `at_edge` says whether the pick is the largest or smallest rate tried."""
    rows = sorted((candidate_row(*load_run(f)) for f in candidate_folders), key=lambda r: r["lr"])
    valid = [r for r in rows if r["status"] == "completed" and math.isfinite(r["best_val_acc"])]
    if not valid:
        where = f"{rows[0]['dataset']}/{rows[0]['model']}/{rows[0]['variant']}" if rows else "?"
        raise ValueError(
            f"every learning-rate candidate diverged for {where} "
            f"({[r['lr'] for r in rows]}): add smaller values to lr_search.candidates"
        )
    best = max(valid, key=lambda r: r["best_val_acc"])  # max keeps the first (smallest lr) tie
    return {
        "lr": best["lr"],
        "criterion": "best validation accuracy of the search run",
        "at_edge": pick_edge(rows, best),
        "candidates": rows,
    }


def edge_warning(choice: dict) -> str:
    """select_lr's one warning line for a pick at the edge of the rates tried."""
    c = choice["candidates"][0]
    side = {"largest": "above", "smallest": "below"}[choice["at_edge"]]
    further = (
        f"after {choice['extensions']} extension(s), the limit of lr_search.extend_at_edge"
        if choice.get("extensions")
        else "lr_search.extend_at_edge: N searches further"
    )
    return (
        f"warning: {c['dataset']}/{c['model']}/{c['variant']}: the selected lr {choice['lr']:g} "
        f"is the {choice['at_edge']} candidate tried; the best rate may lie {side} the grid "
        f"({further})"
    )


# Extension (lr_search.extend_at_edge, docs/protocol.md): at an edge pick, the next rate on that
# side is trained here, by select-lr's own job, with the candidates' settings and the training CLI,
# and the choice is made again. A Snakemake checkpoint would make the DAG depend on the search's
# outcome; one job that trains at most N more candidates keeps the DAG fixed and is resumable:
# a finished extra candidate (its meta.json, same settings hash) is reused, a killed one resumes
# from its checkpoint.
EXTEND_FACTOR = 3.0  # the protocol's grid steps by about x3 (1e-4, 3e-4, 1e-3, 3e-3)


def next_candidate(choice: dict) -> float:
    lr = (
        choice["lr"] * EXTEND_FACTOR
        if choice["at_edge"] == "largest"
        else choice["lr"] / EXTEND_FACTOR
    )
    return float(f"{lr:.6g}")  # 0.003 x 3 = 0.009, not 0.009000000000000001: a clean folder name


def train_candidate(meta_path: Path, lr: float, data: Path, scratch: Path, run: dict) -> Path:
    """Train the search candidate `lr` beside the one at `meta_path` (same settings, other lr);
    return its folder. Reuses a finished one of the same settings. `run`: how the training CLI
    runs, as the workflow's candidates do ("device": its device flags; "tensorboard": the cell's
    TensorBoard folder, None for the CLI's default; "tracking": --tensorboard or
    --no-tensorboard, "" for the CLI's default)."""
    from normdrop.config import RunConfig, to_cli_args

    settings = json.loads(meta_path.read_text())["settings"]
    cfg = RunConfig.from_dict({**settings, "lr": lr})
    key = layout.run_key("lr_search", lr=lr)  # a sibling of the candidate at meta_path
    folder = meta_path.parent.parent / key
    done = folder / "meta.json"
    if done.exists() and json.loads(done.read_text()).get("settings_hash") == cfg.settings_hash():
        return folder
    cmd = [sys.executable, "-m", "normdrop.train", "--data", str(data), "--out", str(folder)]
    cmd += ["--checkpoint", str(scratch / f"{key}.ckpt"), *to_cli_args(cfg)]
    if run.get("tensorboard"):  # beside the other candidates' event files
        cmd += ["--tensorboard-dir", str(Path(run["tensorboard"]) / key)]
    cmd += shlex.split(run.get("tracking", "")) + shlex.split(run.get("device", ""))
    print(f"extending the search: training lr {lr:g} into {folder}", flush=True)
    subprocess.run(cmd, check=True)
    return folder


def select_lr_extended(metas: list[Path], extend: int, data, scratch, run=None) -> dict:
    """select_lr, then up to `extend` extra candidates while the pick sits at an edge (`run`:
    how they train, see train_candidate)."""
    folders = [m.parent for m in metas]
    choice = select_lr(folders)
    extensions = 0
    while choice["at_edge"] and extensions < extend:
        lr = next_candidate(choice)
        folders.append(train_candidate(metas[0], lr, Path(data), Path(scratch), run or {}))
        extensions += 1
        choice = select_lr(folders)
    return {**choice, "extend_at_edge": extend, "extensions": extensions}


# --------------------------------------------------------------------------- summary
def _semantic(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k not in (*EXECUTION_FIELDS, "lr")}


def _diff(recorded: dict, expected: dict) -> str:
    recorded, expected = _semantic(_normalised(recorded)), _semantic(_normalised(expected))
    keys = sorted(k for k in expected if recorded.get(k) != expected[k])
    return ", ".join(f"{k}: {recorded.get(k)!r} on disk vs {expected[k]!r} in config" for k in keys)


def _normalised(settings: dict) -> dict:
    # JSON stores tuples as lists; compare like with like.
    return {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}


def _keys(run: layout.GridRun) -> dict:
    return {
        "dataset": run.dataset,
        "model": run.model,
        "variant": run.variant,
        "seed": int(run.tag),
    }


def run_row(run: layout.GridRun, meta: dict, epochs, spec: dict, fraction: float, classes=None):
    """One training run's row of runs.parquet: its settings, final metrics and provenance;
    `classes` (the dataset's) tells a run that did not learn (metrics.learned)."""
    settings = meta["settings"]
    return {
        **_keys(run),
        "norm": spec["norm"],
        # on when its rate is > 0 (a swept rate of 0 is dropout off)
        "dropout": bool(spec["dropout"] and settings["dropout"] > 0),
        "dropout_rate": settings["dropout"],
        "family": spec.get("family", run.variant),  # variant before a sweep
        "batch_size": settings["batch_size"],
        "lr": meta["lr"],
        "param_count": meta["param_count"],
        "status": meta["status"],
        "diverged_epoch": meta["diverged_epoch"] or math.nan,
        "epochs": settings["epochs"],
        **run_metrics(epochs, meta["train_eval_acc"], meta["status"], fraction, classes),
        "convergence_fraction": fraction,  # what convergence_epoch means (tables, figures)
        "wall_time_s": meta["wall_time_s"],
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
        if _semantic(meta["settings"]) != _semantic(expected):
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
    s = sub.add_parser("select-lr", help="choose the learning rate from candidate runs")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("metas", type=Path, nargs="+", help="candidate meta.json files")
    s.add_argument(
        "--extend-at-edge", type=int, default=0, metavar="N",
        help="at an edge pick, train the next rate on that side (x3 or /3), up to N times",
    )  # fmt: skip
    s.add_argument("--data", type=Path, help="prepared dataset (needed with --extend-at-edge)")
    s.add_argument("--scratch", type=Path, help="checkpoints of extra candidates")
    s.add_argument("--device-args", default="", help="device flags passed to the training CLI")
    s.add_argument("--tensorboard-dir", type=Path, help="the cell's TensorBoard folder")
    s.add_argument("--tracking-args", default="", help="--tensorboard or --no-tensorboard")
    a = sub.add_parser("collect", help="summary parquet files of the whole grid")
    a.add_argument("--config-json", required=True, help="the merged workflow config as JSON")
    a.add_argument("--out-dir", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        if args.cmd == "select-lr":
            if args.extend_at_edge and not (args.data and args.scratch):
                p.error("--extend-at-edge needs --data and --scratch")
            run = {"device": args.device_args, "tracking": args.tracking_args}
            run["tensorboard"] = args.tensorboard_dir
            choice = select_lr_extended(
                args.metas, args.extend_at_edge, args.data, args.scratch, run
            )
            atomic_write_json(args.out, choice)
            print(f"selected lr {choice['lr']:g}")
            if choice["at_edge"]:
                print(edge_warning(choice), file=sys.stderr)
        else:
            runs, epochs, candidates = collect_runs(json.loads(args.config_json))
            for name, frame in zip(SUMMARY_FILES.values(), (runs, epochs, candidates), strict=True):
                atomic_write_parquet(args.out_dir / name, frame)
            print(f"collected {len(runs)} runs into {args.out_dir}")
    except (ValueError, StaleResultsError, FileNotFoundError, subprocess.CalledProcessError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
