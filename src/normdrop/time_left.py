"""The time a grid has left, from the runs' states (normdrop.status).

Time left: seconds per epoch are measured per (dataset, model) from the finished runs'
epochs.parquet (wall_time_s of the last epoch / epochs) and the checkpoints' elapsed time of
unfinished ones (search and training runs alike); a (dataset, model) without a measurement uses the
mean over all. The remaining work (epochs left x seconds per epoch, summed over every unfinished
run, failed ones included) is divided by the number of runs that run at once: `--resources gpu=N`
(what Snakemake was given), else the runs running now (at least 1); and it is never less than the
longest single remaining run. The order of the DAG (search before training) is not modelled.
"""

from __future__ import annotations


def estimate(runs: list, slots: int | None) -> dict:
    """Seconds of work and of wall-clock left of `runs` (normdrop.status.RunStatus, inspected);
    see the module's docstring for how."""
    samples = [r for r in runs if r.measured_s and r.done > 0]
    per_cell: dict[tuple, list[float]] = {}
    for r in samples:
        s = per_cell.setdefault((r.dataset, r.model), [0.0, 0.0])
        s[0], s[1] = s[0] + r.measured_s, s[1] + r.done
    rates = {cell: sec / ep for cell, (sec, ep) in per_cell.items()}
    overall = sum(r.measured_s for r in samples) / sum(r.done for r in samples) if samples else None
    running = sum(r.state == "running" for r in runs)
    concurrency = slots or max(1, running)
    out = {
        "seconds_per_epoch": {f"{d}/{m}": round(v, 3) for (d, m), v in sorted(rates.items())},
        "overall_seconds_per_epoch": overall,
        "runs_left": 0,
        "runs_from_overall_mean": 0,
        "runs_unknown": 0,
        "work_s": 0.0,
        "longest_run_s": 0.0,
        "concurrency": concurrency,
        "concurrency_from": "--resources" if slots else "the runs running now, at least 1",
        "wall_s": 0.0,
    }
    for r in runs:
        if r.state in ("finished", "diverged"):
            continue
        out["runs_left"] += 1
        rate = rates.get((r.dataset, r.model))
        if rate is None:
            out["runs_from_overall_mean"] += overall is not None
            rate = overall
        if rate is None or r.epochs is None:
            out["runs_unknown"] += 1
            continue
        left = max(0.0, r.epochs - r.done) * rate
        out["work_s"] += left
        out["longest_run_s"] = max(out["longest_run_s"], left)
    if out["runs_unknown"]:
        out["wall_s"] = None
    else:
        out["wall_s"] = max(out["work_s"] / concurrency, out["longest_run_s"])
    return out


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def time_left_line(est: dict, grid: bool = True) -> str:
    if est["runs_left"] == 0 and not grid:
        return "0 s for the runs found (without --configfile runs not started are not known)"
    if est["runs_left"] == 0:
        return "0 s (every run is done)"
    if est["wall_s"] is None:
        return f"unknown ({est['runs_unknown']} of {est['runs_left']} runs left have no timing)"
    return (
        f"about {duration(est['wall_s'])} ({est['runs_left']} runs left, "
        f"{duration(est['work_s'])} of work, {est['concurrency']} at once)"
    )


def estimate_note(est: dict) -> list[str]:
    """How the time left was estimated, in two indented lines."""
    rates = ", ".join(f"{k} {v:.3g} s" for k, v in est["seconds_per_epoch"].items()) or "none"
    first = f"  from the measured seconds per epoch: {rates}"
    if est["runs_from_overall_mean"]:
        first += f" (runs of other models: the mean, {est['overall_seconds_per_epoch']:.3g} s)"
    second = f"  x epochs left, summed, / {est['concurrency']} at once ({est['concurrency_from']})"
    second += "; never less than the longest run left"
    return [first, second]
