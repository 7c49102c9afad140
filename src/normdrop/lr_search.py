"""The learning-rate search's choice: the best candidate, the rule for a pick at the grid's edge
(`pick_edge`, shared with the report), and the extension that trains further rates at an edge.

    python -m normdrop.lr_search --out selected.json <candidate>/meta.json ...

Each candidate is a run folder of the search (meta.json, epochs.parquet) that the workflow's
`lr_search` rule trained; the `select_lr` rule writes the choice into selected.json.
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
from normdrop.attempts import run_compute_s
from normdrop.storage import atomic_write_json


def load_run(folder: Path) -> tuple[dict, pd.DataFrame]:
    """A finished run's meta.json and epochs.parquet."""
    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text())
    return meta, pd.read_parquet(folder / "epochs.parquet")


def candidate_row(meta: dict, epochs: pd.DataFrame) -> dict:
    best = epochs["val_acc"].max() if meta["status"] == "completed" else math.nan
    return {
        "dataset": meta["dataset"],
        "model": meta["model"],
        "variant": meta["variant"],
        "lr": meta["lr"],
        "status": meta["status"],
        "best_val_acc": float(best) if pd.notna(best) else math.nan,
        "compute_s": run_compute_s(meta),  # all its attempts; None: not recorded
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


def train_candidate(meta_path: Path, lr: float, data: Path, scratch: Path, how: dict) -> Path:
    """Train the search candidate `lr` beside the one at `meta_path` (same settings, other lr);
    return its folder. Reuses a finished one of the same settings. `how`: how the training CLI
    runs, as the workflow's candidates do ("device": its device flags; "tensorboard": the cell's
    TensorBoard folder, None for the CLI's default; "tracking": --tensorboard or
    --no-tensorboard, "" for the CLI's default)."""
    from normdrop.config import RunConfig, to_cli_args

    settings = json.loads(meta_path.read_text())["settings"]
    cfg = RunConfig.from_recorded({**settings, "lr": lr})
    key = layout.run_key("lr_search", lr=lr)  # a sibling of the candidate at meta_path
    folder = meta_path.parent.parent / key
    done = folder / "meta.json"
    if done.exists() and json.loads(done.read_text()).get("settings_hash") == cfg.settings_hash():
        return folder
    cmd = [sys.executable, "-m", "normdrop.train", "--data", str(data), "--out", str(folder)]
    cmd += ["--checkpoint", str(scratch / f"{key}.ckpt"), *to_cli_args(cfg)]
    if how.get("tensorboard"):  # beside the other candidates' event files
        cmd += ["--tensorboard-dir", str(Path(how["tensorboard"]) / key)]
    cmd += shlex.split(how.get("tracking", "")) + shlex.split(how.get("device", ""))
    print(f"extending the search: training lr {lr:g} into {folder}", flush=True)
    subprocess.run(cmd, check=True)
    return folder


def select_lr_extended(metas: list[Path], extend: int, data, scratch, how=None) -> dict:
    """select_lr, then up to `extend` extra candidates while the pick sits at an edge (`how`:
    how they train, see train_candidate)."""
    folders = [m.parent for m in metas]
    choice = select_lr(folders)
    extensions = 0
    while choice["at_edge"] and extensions < extend:
        lr = next_candidate(choice)
        folders.append(train_candidate(metas[0], lr, Path(data), Path(scratch), how or {}))
        extensions += 1
        choice = select_lr(folders)
    return {**choice, "extend_at_edge": extend, "extensions": extensions}


# --------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m normdrop.lr_search",
        description="choose the learning rate from candidate runs",
    )
    p.add_argument("--out", type=Path, required=True, help="selected.json to write")
    p.add_argument("metas", type=Path, nargs="+", help="candidate meta.json files")
    p.add_argument(
        "--extend-at-edge", type=int, default=0, metavar="N",
        help="at an edge pick, train the next rate on that side (x3 or /3), up to N times",
    )  # fmt: skip
    p.add_argument("--data", type=Path, help="prepared dataset (needed with --extend-at-edge)")
    p.add_argument("--scratch", type=Path, help="checkpoints of extra candidates")
    p.add_argument("--device-args", default="", help="device flags passed to the training CLI")
    p.add_argument("--tensorboard-dir", type=Path, help="the cell's TensorBoard folder")
    p.add_argument("--tracking-args", default="", help="--tensorboard or --no-tensorboard")
    args = p.parse_args(argv)
    if args.extend_at_edge and not (args.data and args.scratch):
        p.error("--extend-at-edge needs --data and --scratch")
    how = {"device": args.device_args, "tracking": args.tracking_args}
    how["tensorboard"] = args.tensorboard_dir
    try:
        choice = select_lr_extended(args.metas, args.extend_at_edge, args.data, args.scratch, how)
    except (ValueError, FileNotFoundError, subprocess.CalledProcessError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    atomic_write_json(args.out, choice)
    print(f"selected lr {choice['lr']:g}")
    if choice["at_edge"]:
        print(edge_warning(choice), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
