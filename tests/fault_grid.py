"""The shared faulty grid (session fixture `grid`) of the workflow-fault and aggregate tests.

It is run once as a user would meet these faults: the learning-rate search runs (one candidate,
1e20, diverges everywhere), one cell's selected rate is then overwritten with 1e20 (its training
runs diverge), the full workflow is started and SIGKILLed (whole process group) once the first
training run has finished, and then rerun after `--unlock` to completion. The merge of
--configfile into config.yaml is recursive, so the grid keeps all three models and four variants
(dict keys cannot be removed by an override): they are made tiny instead, with 2 seeds and 2
epochs. conftest.py imports `grid`, so that test_workflow_faults and test_aggregate share one run.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from workflow_helpers import (
    FAST,
    RUN_FILES,
    deep_merge,
    kill_group,
    output,
    run,
    snakemake_cmd,
    tail,
    write_config,
)

MODELS = ["mlp", "cnn", "resnet20"]
VARIANTS = ["none", "bn", "dropout", "bn_dropout"]
SEEDS = [42, 43]
DIVERGED = ("synthetic", "mlp", "none")  # the cell whose selected rate is set to 1e20
BIG_LR = 1e20

# The workflow tests' fast demo grid, smaller still: 200 images, 2 epochs, one search epoch whose
# only candidates are a sane rate and one that diverges everywhere.
GRID = deep_merge(
    FAST,
    {
        "models": {"mlp": {"width": 16}},
        "data": {"synthetic": {"n_train": 200}},
        "train": {"epochs": 2, "lr_milestones": [1]},
        "lr_search": {"candidates": [1e-3, BIG_LR]},
        # Other engineers may commit while the grid runs: the revision check is tested in-process.
        "metrics": {"allow_mixed_revisions": True},
    },
)
RUN_KEYS = [(m, v, s) for m in MODELS for v in VARIANTS for s in SEEDS]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fingerprint(paths) -> dict[Path, tuple[str, int]]:
    return {Path(p): (sha256(p), Path(p).stat().st_mtime_ns) for p in paths}


def incomplete_keys(workdir: Path) -> set[str]:
    """Output files Snakemake has marked incomplete (started, completion not yet recorded).

    Snakemake's file persistence keeps one marker per output in .snakemake/incomplete, named by
    the url-safe base64 of the output path."""
    keys = set()
    folder = Path(workdir) / ".snakemake" / "incomplete"
    for p in folder.rglob("*") if folder.exists() else ():
        if p.is_file() and p.name != "migration_underway":
            name = "".join(part.lstrip("@") for part in p.relative_to(folder).parts)
            try:
                keys.add(base64.urlsafe_b64decode(name).decode())
            except ValueError:
                continue
    return keys


def job_counts(text: str) -> dict[str, int]:
    if "Job stats:" not in text:
        return {}
    table = text[text.index("Job stats:") :]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


# --------------------------------------------------------------------------- the shared grid
@pytest.fixture(scope="session")
def grid(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("grid")
    override = write_config(workdir, GRID)
    results = workdir / "results" / "demo"
    run_dir = {k: results / "runs" / "synthetic" / k[0] / k[1] / f"seed{k[2]}" for k in RUN_KEYS}
    g = SimpleNamespace(workdir=workdir, override=override, results=results, run_dir=run_dir)

    # 1. Up to the learning-rate choice.
    res = run(snakemake_cmd(workdir, "--cores", "2", "--until", "select_lr", configs=[override]))
    assert res.returncode == 0, tail(output(res))
    g.selected_before = {
        (m, v): json.loads(
            (results / "lr_search" / "synthetic" / m / v / "selected.json").read_text()
        )
        for m in MODELS
        for v in VARIANTS
    }
    # 2. A rate that makes one cell's training runs diverge (the other keys stay).
    selected = results / "lr_search" / "/".join(DIVERGED) / "selected.json"
    doc = json.loads(selected.read_text())
    selected.write_text(json.dumps({**doc, "lr": BIG_LR}, indent=2))

    # 3. The whole workflow, SIGKILLed with its jobs once a training run has finished.
    full = snakemake_cmd(workdir, "--cores", "2", configs=[override])
    log_b = workdir / "killed-snakemake.log"
    with open(log_b, "w") as log:
        proc = subprocess.Popen(full, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            t0 = time.monotonic()
            while True:
                assert proc.poll() is None, (
                    f"workflow ended before the kill: {tail(log_b.read_text())}"
                )
                assert time.monotonic() - t0 < 900, "no training run finished in 900 s"
                incomplete = incomplete_keys(workdir)
                finished = [
                    k
                    for k, d in run_dir.items()
                    if (d / "meta.json").exists()
                    and not any(key.endswith(str((d / "meta.json").relative_to(workdir)))
                                for key in incomplete)
                ]  # fmt: skip
                if finished:
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.05)
        finally:
            kill_group(proc)
    g.killed_returncode = proc.returncode
    g.finished_at_kill = finished
    g.pending_at_kill = [k for k, d in run_dir.items() if not (d / "meta.json").exists()]
    g.incomplete_at_kill = incomplete_keys(workdir)
    g.finished_files = fingerprint(run_dir[k] / f for k in finished for f in RUN_FILES)
    # Every parquet visible right after the kill is whole.
    g.unreadable_after_kill = []
    for p in results.rglob("*.parquet"):
        try:
            pd.read_parquet(p)
        except Exception as err:  # noqa: BLE001 - any failure to read is the finding
            g.unreadable_after_kill.append(f"{p}: {err}")

    # 4. Rerun: the kill left Snakemake's lock behind; then the normal command.
    g.unlock = run(snakemake_cmd(workdir, "--unlock", configs=[override]))
    g.rerun = run([*full, "--rerun-incomplete"])
    assert g.rerun.returncode == 0, tail(output(g.rerun))
    return g
