"""The report's "Compute and reproducibility" section, from every run's meta.json.

What the NeurIPS checklist asks about compute (how much, on what) and about statistical
significance (what the error bars and intervals are), answered from the results folder:

- Compute per run and in total: a run's compute is the sum of its attempts' `wall_time_s`
  (meta.json's `attempts`: every start, finished, killed, preempted or failed; normdrop.attempts,
  `compute_s`, as in runs.parquet), or its `wall_time_s` where a run recorded no attempts
  (results written before attempts were recorded). Training runs and the learning-rate search
  (every candidate, also those `extend_at_edge` added) are counted apart and together. A run
  that never finished has no meta.json and is not counted (its attempts are still in its
  checkpoint's attempt log under scratch/). A fused job (normdrop.fusion) is one process for
  its K members: each member's meta.json holds the job's attempts, so the job's wall time is
  shared equally among its members and its attempts are counted once per job.
- Hardware and versions: devices, GPU name and driver, peak device memory, hosts, library
  versions, code revisions (uncommitted changes marked), the data files' SHA-256.
- What the ± values, error bars and confidence intervals mean, and their assumptions.

Older meta.json files without `attempts` or `accounting` are read as "not recorded".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from normdrop import layout
from normdrop.attempts import run_compute_s
from normdrop.render import TextTable, to_markdown

KIND_NAMES = {"train": "training runs", "lr_search": "learning-rate search"}
NOT_RECORDED = "not recorded"


def read_metas(results: Path | str) -> pd.DataFrame:
    """One row per finished run or search candidate under `results`: kind, cell, compute (s),
    attempts by outcome, and the provenance fields the section shows."""
    rows = []
    for run in layout.discover(results):
        path = run.paths(results)["meta"]
        if not path.is_file():
            continue
        meta = json.loads(path.read_text())
        attempts = meta.get("attempts") or []
        times = [a.get("wall_time_s") for a in attempts]
        compute = run_compute_s(meta, unknown=meta.get("wall_time_s"))  # the aggregate's rule
        accounting = meta.get("accounting") or {}
        outcomes = [a.get("outcome", "unknown") for a in attempts]
        rows.append(
            dict(
                kind=run.kind,
                cell=f"{run.dataset}/{run.model}/{run.variant}",
                # The process that trained it: a fused job's members share its checkpoint path
                # and each holds the job's attempts, which are counted once per job.
                job=meta.get("fused_checkpoint") or str(path.parent),
                members=1 + len(meta.get("fused_with") or []),
                compute_s=float(compute) if compute is not None else np.nan,
                attempts=len(attempts),
                not_finished=sum(o != "finished" for o in outcomes),
                untimed=sum(t is None for t in times),
                at_least=sum(bool(a.get("wall_time_at_least")) for a in attempts),
                device=meta.get("device", NOT_RECORDED),
                gpu=accounting.get("gpu_name") or NOT_RECORDED,
                driver=accounting.get("gpu_driver") or NOT_RECORDED,
                peak_bytes=accounting.get("peak_device_memory_bytes"),
                host=meta.get("hostname", NOT_RECORDED),
                git_revision=meta.get("git_revision", NOT_RECORDED),
                git_dirty=accounting.get("git_dirty"),
                data_sha256=meta.get("data_sha256") or accounting.get("data_sha256"),
                dataset=run.dataset,
                versions=json.dumps(meta.get("versions") or {}, sort_keys=True),
            )
        )
    return pd.DataFrame(rows)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds:.0f} s"


def compute_table(metas: pd.DataFrame) -> TextTable:
    """Per kind and in total: runs, attempts, compute in total, per run (median, max)."""
    rows = []
    for kind, name in [*KIND_NAMES.items(), ("all", "total")]:
        sub = metas if kind == "all" else metas[metas["kind"] == kind]
        if sub.empty:
            continue
        t = sub["compute_s"].dropna()
        jobs = sub.drop_duplicates("job")  # a fused job's attempts once, not once per member
        rows.append([name, str(len(sub)), str(int(jobs["attempts"].sum())),
                     str(int(jobs["not_finished"].sum())), _hours(t.sum()),
                     _hours(t.median()) if len(t) else "n/a",
                     _hours(t.max()) if len(t) else "n/a"])  # fmt: skip
    table = TextTable(
        title="Compute: wall time of every attempt",
        header=[
            "Runs",
            "Count",
            "Attempts",
            "Killed/preempted/failed",
            "Total",
            "Median per run",
            "Max per run",
        ],  # fmt: skip
        rows=rows,
        align="lrrrrrr",
        notes=[
            "A run's wall time is the sum of its attempts' (meta.json `attempts`: finished, "
            "killed, preempted and failed starts alike), or its own wall_time_s where it "
            "recorded no attempts (Attempts counts only recorded ones). Runs that never "
            "finished have no meta.json and are not counted."
        ],  # fmt: skip
        rule_before={len(rows) - 1} if len(rows) > 2 else set(),
    )
    fused = metas[metas["members"] > 1].drop_duplicates("job")
    if len(fused):
        table.notes.append(
            f"{len(fused)} fused job(s) trained {int(fused['members'].sum())} of these runs, "
            "each as one process (normdrop.fusion): a job's attempts are counted once, and its "
            "wall time is shared equally among its members."
        )
    jobs = metas.drop_duplicates("job")
    untimed, at_least = int(jobs["untimed"].sum()), int(jobs["at_least"].sum())
    if untimed or at_least:  # attempts killed before they could record their end (SIGKILL)
        table.notes.append(
            f"Killed attempts: {at_least} counted up to their last checkpoint (a "
            f"lower bound), {untimed} recorded no wall time and count as 0 s."
        )
    return table


def per_cell_table(metas: pd.DataFrame) -> TextTable:
    """Compute per (dataset, model, variant): training runs and search candidates."""
    pivot = metas.pivot_table(index="cell", columns="kind", values="compute_s", aggfunc="sum")
    rows = [[cell] + [_hours(r.get(k, np.nan)) if np.isfinite(r.get(k, np.nan)) else "n/a"
                      for k in KIND_NAMES] for cell, r in pivot.iterrows()]  # fmt: skip
    return TextTable(
        title="Compute per cell",
        header=["Cell", "Training (all seeds)", "Learning-rate search (all candidates)"],
        rows=rows,
        align="lrr",
    )


def _values(series: pd.Series) -> str:
    values = sorted({str(v) for v in series if v is not None and v == v})
    return ", ".join(values) if values else NOT_RECORDED


def hardware_lines(metas: pd.DataFrame) -> list[str]:
    """Bullets: devices, GPUs, memory, hosts, versions, code, data."""
    peak = pd.to_numeric(metas["peak_bytes"], errors="coerce").max()
    lines = [
        f"- Devices: {_values(metas['device'])}; GPU: {_values(metas['gpu'])} "
        f"(driver {_values(metas['driver'])}).",
        "- Peak device memory of a run: "
        + (f"{peak / 2**30:.2f} GiB." if np.isfinite(peak) else f"{NOT_RECORDED}."),
        f"- Hosts: {metas['host'].nunique()} ({_values(metas['host'])}).",
    ]
    versions: dict[str, set] = {}
    for text in metas["versions"]:
        for name, version in json.loads(text).items():
            versions.setdefault(name, set()).add(str(version))
    if versions:
        listed = "; ".join(f"{n} {', '.join(sorted(v))}" for n, v in sorted(versions.items()))
        lines.append(f"- Versions: {listed}.")
    dirty = metas["git_dirty"].dropna()
    lines.append(
        f"- Code revision(s): {_values(metas['git_revision'])}"
        + (f"; uncommitted changes in {int(dirty.sum())} run(s)." if dirty.any() else ".")
    )
    for dataset, sub in metas.groupby("dataset"):
        lines.append(f"- Data file of {dataset} (SHA-256): {_values(sub['data_sha256'])}.")
    return lines


def statistics_lines(seeds: list[int], n_per_cell: str) -> list[str]:
    """What a ± value, an error bar and a confidence interval are, and what they assume."""
    return [
        f"- **± values and error bars** are the sample standard deviation (ddof = 1) over "
        f"the seeds of a cell ({n_per_cell} finished seeds per cell; seeds "
        f"{', '.join(map(str, seeds))}): the spread from one seed to the next, not the "
        "uncertainty of the mean (the standard error is SD/√N).",
        "- **What a seed varies**: weight initialization, mini-batch order and dropout masks. "
        "The train/validation split (split seed 0), the data and the learning rate (chosen "
        "once per cell by the search, seed 42) are fixed, so their variability is not in the "
        "error bars.",
        "- **Confidence intervals** (hypothesis tests H1-H3) are 95% intervals of a difference "
        "of means from Welch's t (unequal variances, Welch-Satterthwaite degrees of freedom), "
        "two-sided; `python -m normdrop.compare` uses the paired t-interval where two folders "
        "hold the same seeds and Holm-corrects across cells.",
        "- **Assumptions**: seeds are independent; a metric's values over seeds are roughly "
        "normal (with 3 seeds this cannot be checked, and the interval is wide); the H1-H3 "
        "tests are not corrected for multiple comparisons. Diverged runs are left out of every "
        "mean and counted.",
    ]


def section(results: Path | str, runs: pd.DataFrame) -> list[str]:
    """The report's section as Markdown lines; `runs`: runs.parquet of the report."""
    from normdrop.summary_data import completed  # the report's own reader

    out = ["## Compute and reproducibility", ""]
    metas = read_metas(results)
    if not metas.empty:  # the report's cells only (a results folder may hold other runs)
        cells = set(runs["dataset"] + "/" + runs["model"] + "/" + runs["variant"])
        metas = metas[metas["cell"].isin(cells)]
    if metas.empty:
        out += [f"No run folders under {results}: compute and hardware not recorded.", ""]
    else:
        out += [to_markdown(compute_table(metas)), to_markdown(per_cell_table(metas))]
        out += ["### Hardware, versions, data", "", *hardware_lines(metas), ""]
    done = runs[completed(runs)].groupby(["dataset", "model", "variant"]).size()
    low, high = (int(done.min()), int(done.max())) if len(done) else (0, 0)
    n = f"{low}" if low == high else f"{low}-{high}"
    seeds = sorted(int(s) for s in runs["seed"].unique())
    out += ["### Error bars and confidence intervals", "", *statistics_lines(seeds, n), ""]
    return out
