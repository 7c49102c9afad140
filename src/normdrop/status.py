"""Where a grid stands, from its files alone: per run finished, running, failed, diverged...

    python -m normdrop.status --configfile workflow/demo.yaml     # the grid of a config
    python -m normdrop.status --results results/demo              # whatever the folder holds
    python -m normdrop.status --resources gpu=4 --all             # 4 runs at once; every run

It only reads: each run's meta.json and epochs.parquet, its checkpoint in scratch/ (with
torch.load(weights_only=True)) and its log in logs/. It takes no Snakemake lock and writes nothing,
so it works while Snakemake runs (locally or on SLURM), after it stopped, and on a finished grid.

A run is
  finished      meta.json says completed
  diverged      meta.json says diverged (at the epoch it names)
  failed        no meta.json, and the last line of its log is an error (a traceback's last line,
                `error: ...`); a rerun appends to the log, so it counts as running again
  running       no meta.json, and its checkpoint or log was written within the last
                2 x checkpoint_every_s + 5 min (a live run writes its checkpoint that often)
  stopped       no meta.json, files from an earlier attempt but no recent write and no error: killed
                (SIGKILL, out of memory, time limit) or its workflow stopped; a rerun resumes it
  not started   none of its files exist
Progress ("ep k/N": k epochs done of N) comes from the checkpoint, else from the log's last
`epoch k/N` line. A member of a fused job (config `fuse`) without outputs yet reads the job's
checkpoint (its own part: the job's progress, or the epoch it diverged in: then shown diverged)
and the job's log (a failure, a recent write), beside its own log of epoch lines.

Time left: normdrop.time_left.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from normdrop import layout
from normdrop.checkpoints import read_checkpoint_summary
from normdrop.config import ConfigError, current_names
from normdrop.progress import parse_epoch_line
from normdrop.time_left import duration, estimate, estimate_note, time_left_line
from normdrop.workflow_config import load_config, parse_overrides

STATES = ("finished", "diverged", "running", "stopped", "failed", "not started")
LOG_TAIL_BYTES = 256 * 1024  # enough for a long traceback; logs grow with each retry
# The last line of a Python traceback ("RuntimeError: ...", "torch.OutOfMemoryError: ..."), or
# an error line of our CLIs ("error: ...", "python -m normdrop.train: error: ...").
ERROR_LINE = re.compile(
    r"^([A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b|Traceback \(most recent)|\berror:",
    re.IGNORECASE,
)
CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")


@dataclass
class RunStatus:
    """One run as the status command sees it: where it is, and its state read from its files."""

    kind: str  # "train" or "lr_search"
    dataset: str
    model: str
    variant: str  # as meta.json records it once the run has one, else as its folder names it
    key: str  # "seed42" or "lr0.001", as in the paths
    name: str  # its path below runs/ or lr_search/: "synthetic/mlp/bn/seed42"
    paths: dict  # meta, epochs, steps, checkpoint, log (normdrop.layout)
    epochs: int | None = None  # N; None: unknown (no config and no file says)
    state: str = "not started"
    done: float = 0.0  # epochs done, fractional when a checkpoint is mid-epoch
    measured_s: float | None = None  # seconds spent on `done` epochs (a rate sample)
    diverged_epoch: int | None = None
    last_line: str | None = None  # of the log, for failed runs
    last_write_s: float | None = None  # seconds since the checkpoint or log was last written
    active_s: float = 900.0  # a write within this many seconds means the run is alive
    folder_variant: str | None = None  # the folder's variant where meta.json records another
    checkpoint_problem: str | None = None  # why its checkpoint could not be read here

    def progress(self) -> str:
        n = "?" if self.epochs is None else self.epochs
        return f"ep {math.floor(self.done + 1e-9)}/{n}"


# --------------------------------------------------------------------------- the grid
def _status_of(where: layout.RunSpec, results: Path) -> RunStatus:
    names = ("kind", "dataset", "model", "variant", "key", "name")
    run = RunStatus(**{k: getattr(where, k) for k in names}, paths=where.paths(results))
    if where.settings is not None:
        run.epochs = where.settings.epochs
        run.active_s = _active_s(where.settings.checkpoint_every_s)
    return run


def grid_runs(config: dict, results: Path | None = None) -> list[RunStatus]:
    """Every search candidate and training run of the config's grid, as the workflow runs it
    (layout.iter_runs: `select` applied, `sweep` expanded), under `results` (default: the
    config's results_dir)."""
    results = Path(config["results_dir"] if results is None else results)
    return [_status_of(where, results) for where in layout.iter_runs(config)]


def _active_s(checkpoint_every_s: float) -> float:
    return 2 * float(checkpoint_every_s) + 300


def found_runs(results: Path) -> list[RunStatus]:
    """Without a config: every run that has a meta.json, a checkpoint or a log under `results`."""
    return [_status_of(where, results) for where in layout.discover(results)]


# --------------------------------------------------------------------------- one run's files
def _read_json(path: Path) -> dict | None:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def read_log(path: Path) -> dict | None:
    """The last `epoch k/N` line's k and N, and the last non-blank line, of a run's log."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - LOG_TAIL_BYTES))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    lines = [CONTROL.sub("", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    epoch = None
    for line in reversed(lines):
        if epoch := parse_epoch_line(line):
            break
    last = lines[-1] if lines else None
    return {
        "epoch": epoch,
        "last_line": last,
        "error": bool(last and ERROR_LINE.search(last)),
    }


def recorded_variant(meta: dict) -> str | None:
    """The variant meta.json records; for a run trained by hand without --variant ('custom'),
    the grid's name of its norm and dropout (layout.variant_name), as a rerun would record."""
    settings = current_names(meta.get("settings") or {})
    variant = meta.get("variant") or settings.get("variant")
    if variant in (None, "custom") and "norm" in settings and "dropout_rate" in settings:
        return layout.variant_name(settings["norm"], settings["dropout_rate"])
    return variant


def inspect(run: RunStatus, now: float) -> RunStatus:
    """Fill in `run`'s state, progress and measured time from its files."""
    paths = run.paths
    meta = _read_json(paths["meta"])
    if meta is not None and meta.get("status") in ("completed", "diverged"):
        settings = meta.get("settings") or {}
        variant = recorded_variant(meta)
        if variant and variant != run.variant:  # listed as what it is, its folder noted
            run.folder_variant, run.variant = run.variant, variant
        run.epochs = run.epochs or settings.get("epochs")
        if meta["status"] == "diverged":
            run.state, run.diverged_epoch = "diverged", meta.get("diverged_epoch")
            run.done = float(run.diverged_epoch or 0)
        else:
            run.state, run.done = "finished", float(run.epochs or 0)
        try:  # wall_time_s: since the start, summed over resumed sessions, per epoch
            epochs = pd.read_parquet(paths["epochs"], columns=["epoch", "wall_time_s"])
            if len(epochs) and epochs["epoch"].iloc[-1] > 0:
                run.done = float(epochs["epoch"].iloc[-1])
                run.measured_s = float(epochs["wall_time_s"].iloc[-1])
        except Exception:  # unreadable: this run just gives no measurement
            pass
        return run

    ckpt, log = read_checkpoint_summary(paths["checkpoint"]), read_log(paths["log"])
    watched = [paths["checkpoint"], paths["log"]]
    diverged = None
    if ckpt is None and (paths["fused_checkpoint"].exists() or paths["fused_log"].exists()):
        ckpt, diverged, log = _as_fused_member(run, log)
        watched += [paths["fused_checkpoint"], paths["fused_log"]]
    if ckpt is not None and ckpt.problem:  # its state then comes from the log
        run.checkpoint_problem = ckpt.problem
    elif ckpt is not None:
        run.epochs = run.epochs or ckpt.settings.get("epochs")
        run.active_s = _active_s(ckpt.settings.get("checkpoint_every_s", 300))
        run.done, run.measured_s = ckpt.done, ckpt.elapsed_s
    if (ckpt is None or ckpt.problem) and log and log["epoch"]:
        run.done = float(log["epoch"][0])
    if log and log["epoch"]:
        run.epochs = run.epochs or log["epoch"][1]
    writes = [t for t in map(_mtime, watched) if t is not None]
    run.last_write_s = now - max(writes) if writes else None
    if diverged is not None:  # a fused member frozen at its divergence; the others go on
        run.state, run.diverged_epoch, run.done = "diverged", diverged, float(diverged)
    elif log and log["error"]:
        run.state, run.last_line = "failed", log["last_line"][:300]
    elif run.last_write_s is not None and run.last_write_s <= run.active_s:
        run.state = "running"
    elif writes:
        run.state = "stopped"
    return run


def _as_fused_member(run: RunStatus, log: dict | None) -> tuple:
    """(checkpoint summary, diverged epoch or None, log) of `run` as a member of its cell's fused
    job: the job checkpoint's summary with this member's settings (None if the job has no such
    member), and its own log, unless the job's log is newer and ends in an error (a fused job's
    traceback goes there, not to the members' logs)."""
    paths = run.paths
    job = read_checkpoint_summary(paths["fused_checkpoint"])
    diverged = None
    if job is not None and not job.problem:
        mine = [m for m in job.members if layout.run_key(run.kind, **m.settings) == run.key]
        # the job's progress with this member's settings; None for a job of other members
        job = dataclasses.replace(job, settings=mine[0].settings) if mine else None
        diverged = mine[0].diverged_epoch if mine else None
    job_log = read_log(paths["fused_log"])
    own, joint = _mtime(paths["log"]), _mtime(paths["fused_log"])
    if job_log and job_log["error"] and (own is None or joint >= own):
        log = {**(log or {"epoch": None}), "last_line": job_log["last_line"], "error": True}
    return job, diverged, log


def marked_incomplete(runs: list[RunStatus], workdir: Path, results_dir: str) -> None:
    """A run whose files say finished but whose job Snakemake still marks incomplete (killed
    after it wrote its outputs) is rerun by Snakemake: shown as stopped, not done."""
    for run in runs:
        meta = f"{results_dir}/{layout.KINDS[run.kind][1]}/{run.name}/meta.json"  # as the rule
        if run.state in ("finished", "diverged") and layout.snakemake_incomplete(workdir, meta):
            run.state, run.last_line = "stopped", "Snakemake marks its job incomplete: reruns it"


# --------------------------------------------------------------------------- rendering
def cell_summary(runs: list[RunStatus]) -> str:
    """One cell's runs in words: '2/3 done, 1 running (ep 37/100)'."""
    by = {state: [r for r in runs if r.state == state] for state in STATES}
    done = len(by["finished"]) + len(by["diverged"])
    parts = [f"{done}/{len(runs)} done"]
    if by["diverged"]:
        parts[0] += f" ({len(by['diverged'])} diverged)"
    for state in ("running", "stopped", "failed"):
        if by[state]:
            progress = ", ".join(r.progress() for r in by[state])
            parts.append(f"{len(by[state])} {state} ({progress})")
    if by["not started"]:
        parts.append(f"{len(by['not started'])} not started")
    return ", ".join(parts)


def cell_table(runs: list[RunStatus]) -> str:
    rows = {}
    for r in runs:
        rows.setdefault((r.dataset, r.model, r.variant), []).append(r)
    frame = pd.DataFrame(
        [(*cell, cell_summary(rs)) for cell, rs in rows.items()],
        columns=["dataset", "model", "variant", "runs"],
    )
    return left_aligned(frame)


def left_aligned(frame: pd.DataFrame) -> str:
    """A plain-text table, every column left-aligned (names read better that way)."""
    width = {c: max(len(str(c)), *(len(str(v)) for v in frame[c])) for c in frame}
    formatters = {c: (lambda v, w=width[c]: f"{v!s:<{w}}") for c in frame}
    text = frame.to_string(index=False, justify="left", formatters=formatters)
    return "\n".join(line.rstrip() for line in text.splitlines())


def counts(runs: list[RunStatus]) -> dict[str, int]:
    return {state: sum(r.state == state for r in runs) for state in STATES}


def status_text(
    runs: list[RunStatus], est: dict, results: Path, source: str, show_all: bool, grid=True
):
    """The report; `grid` False (runs found in a folder): what was not started is not known, so
    nothing is claimed done beyond the runs found."""
    out = [f"normdrop status of {results} ({source}), {time.strftime('%Y-%m-%d %H:%M %Z')}"]
    train = [r for r in runs if r.kind == "train"]
    search = [r for r in runs if r.kind == "lr_search"]
    for title, group in (("Learning-rate search", search), ("Training runs", train)):
        out += ["", f"{title}:", cell_table(group) if group else "  (none)"]
    edges = edge_picks(results)
    if edges and two_rate_searches(results):  # no rate lies inside: one line, not one per cell
        out += ["", f"Learning-rate pick at the grid's edge: {len(edges)}, as every search tried "
                "two rates; give lr_search.candidates three or more to tell"]  # fmt: skip
    elif edges:  # the best rate may lie outside the grid (docs/protocol.md)
        out += ["", f"Learning-rate pick at the grid's edge ({len(edges)}): " + ", ".join(edges)]
    moved = [r for r in runs if r.folder_variant]
    if moved:
        out += [
            "",
            f"Recorded in meta.json as another variant than the folder says ({len(moved)}):",
        ]
        out += [f"  {r.kind} {r.name}: {r.variant}" for r in moved]
    unread = [r for r in runs if r.checkpoint_problem]
    if unread:
        out += ["", f"Checkpoints not read, progress from the log ({len(unread)}):"]
        out += [f"  {r.kind} {r.name}: {r.checkpoint_problem}" for r in unread]
    failed = [r for r in runs if r.state == "failed"]
    if failed:
        out += ["", f"Failed ({len(failed)}), last line of each log:"]
        for r in failed:
            out += [f"  {r.kind} {r.name} ({r.progress()}): {r.last_line}", f"    {r.paths['log']}"]
    if show_all:
        frame = pd.DataFrame(
            {
                "kind": r.kind,
                "run": r.name,
                "state": r.state,
                "progress": r.progress(),
                "last write": "-" if r.last_write_s is None else f"{duration(r.last_write_s)} ago",
                "log": str(r.paths["log"]) if r.paths["log"].exists() else "-",
            }
            for r in runs
        )
        out += ["", "Every run:", left_aligned(frame)]
    out += ["", "Time left: " + time_left_line(est, grid), *estimate_note(est)]
    out += ["", total_line(train, search, est, grid)]
    return "\n".join(out)


def edge_picks(results: Path) -> list[str]:
    """'cell (largest, lr 0.003)' for each selected.json whose pick is at the edge of the rates
    tried (its `at_edge`, written by normdrop.lr_search)."""
    out = []
    for cell, path in layout.selected_files(results):
        choice = json.loads(path.read_text())
        if choice.get("at_edge"):
            out.append(f"{cell} ({choice['at_edge']}, lr {choice['lr']:g})")
    return out


def two_rate_searches(results: Path) -> bool:
    """Every search tried two rates: each pick is at an edge, which then says nothing."""
    sizes = {
        len(json.loads(p.read_text())["candidates"]) for _, p in layout.selected_files(results)
    }
    return sizes == {2}


def total_line(
    train: list[RunStatus], search: list[RunStatus], est: dict, grid: bool = True
) -> str:
    found = "" if grid else " found"

    def part(runs, label):
        c = counts(runs)
        done = c["finished"] + c["diverged"]
        words = [f"{done}/{len(runs)} {label} done"]
        if c["diverged"]:
            words[0] += f" ({c['diverged']} diverged)"
        words += [f"{c[s]} {s}" for s in STATES[2:] if c[s]]
        return ", ".join(words)

    left = "0 s left" if est["runs_left"] == 0 else f"{duration(est['wall_s'])} left"
    return (
        f"Total: {part(train, 'training runs' + found)}; {part(search, 'search runs' + found)}; "
        f"{left}"
    )


# --------------------------------------------------------------------------- CLI
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _slots(value: str) -> int:
    """`--resources gpu=4` (as given to Snakemake) or `--resources 4`."""
    text = value.split("=", 1)[1] if value.startswith("gpu=") else value
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: give gpu=N or N, a whole number >= 1")
    return int(text)


def main(argv=None) -> int:
    p = _Parser(
        prog="python -m normdrop.status", description=__doc__.split("\n")[0], allow_abbrev=False
    )
    p.add_argument(
        "--configfile",
        type=Path,
        nargs="+",
        default=[],
        help="config file(s) merged over config.yaml, as given to snakemake",
    )
    p.add_argument(
        "--config",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="config values over the config files, as given to snakemake (e.g. seeds=[42])",
    )
    p.add_argument(
        "--directory",
        "-d",
        type=Path,
        default=Path("."),
        help="the workflow's working directory (snakemake --directory)",
    )
    p.add_argument(
        "--results",
        type=Path,
        help="results folder (default: the config's results_dir); without "
        "--configfile, the runs are discovered from its files",
    )
    p.add_argument(
        "--resources",
        type=_slots,
        metavar="gpu=N",
        help="runs at once, for the time left (default: the runs running now)",
    )
    p.add_argument("--all", action="store_true", help="also list every run")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)

    if args.configfile or args.config or args.results is None:
        try:
            config = load_config(args.configfile, parse_overrides(args.config))
        except ConfigError as err:
            print(f"{p.prog}: error: invalid config: {err}", file=sys.stderr)
            return 2
        files = " + ".join(str(f) for f in ["config.yaml", *args.configfile, *args.config])
        results = args.results or args.directory / config["results_dir"]
        given = "given by --results" if args.results else f"results_dir of {files}"
        source = f"grid of {files}"
    else:
        config, results, given = None, args.results, "given by --results"
        source = "runs found in the folder; without --configfile, runs not started are not known"
    if not results.is_dir():
        print(
            f"{p.prog}: error: results folder {results} does not exist ({given})", file=sys.stderr
        )
        return 2
    runs = found_runs(results) if config is None else grid_runs(config, results)

    now = time.time()
    runs = [inspect(r, now) for r in runs]
    if config is not None:
        marked_incomplete(runs, args.directory, config["results_dir"])
    est = estimate(runs, args.resources)
    if args.json:
        rows = [{**asdict(r), "paths": {k: str(v) for k, v in r.paths.items()}} for r in runs]
        train = [r for r in runs if r.kind == "train"]
        search = [r for r in runs if r.kind == "lr_search"]
        report = {
            "results": str(results),
            "source": source,
            "grid_known": config is not None,  # else runs not started are not counted
            "counts": {"train": counts(train), "lr_search": counts(search)},
            "lr_at_edge": edge_picks(results),
            "estimate": est,
            "runs": rows,
        }
        print(json.dumps(report, indent=2, default=str))
    else:
        print(status_text(runs, est, results, source, args.all, grid=config is not None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
