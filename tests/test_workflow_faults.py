"""Workflow faults on the shared faulty grid (fixture `grid`): diverged runs and search
candidates, Snakemake SIGKILLed mid-grid and rerun, and two workflows on one folder."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from normdrop.catalog import figure_paths, hypothesis_paths, table_paths


# --------------------------------------------------------------------------- divergence
@pytest.mark.slow
def test_diverged_training_runs_are_recorded_and_the_grid_finishes(grid):
    assert grid.rerun.returncode == 0
    for key, folder in grid.run_dir.items():
        meta = json.loads((folder / "meta.json").read_text())
        epochs = pd.read_parquet(folder / "epochs.parquet")
        if key[:2] == grid.diverged[1:]:
            assert meta["status"] == "diverged" and meta["diverged_epoch"] == 1, (key, meta)
            assert meta["lr"] == grid.big_lr
            assert len(epochs) == 1 and epochs[["val_acc", "test_acc"]].isna().all().all()
        else:
            assert meta["status"] == "completed" and meta["diverged_epoch"] is None, (key, meta)
            assert len(epochs) == 2 and epochs["test_acc"].between(0, 1).all()

    runs = pd.read_parquet(grid.results / "summary" / "runs.parquet")
    assert len(runs) == len(grid.run_keys)
    div = runs[runs["status"] == "diverged"]
    assert set(zip(div["model"], div["variant"], div["seed"], strict=True)) == {
        (*grid.diverged[1:], s) for s in grid.seeds
    }
    assert div["diverged_epoch"].eq(1).all() and div["final_test_acc"].isna().all()
    done = runs[runs["status"] == "completed"]
    assert len(done) == len(grid.run_keys) - len(grid.seeds)
    assert done["final_test_acc"].between(0, 1).all()

    table = (grid.results / "tables" / "synthetic" / "mlp" / "table2.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("|")}
    assert "diverged (2/2 seeds)" in rows["none"], table
    assert all("diverged" not in rows[v] for v in ["bn", "dropout", "bn_dropout"]), table
    for model in (m for m in grid.models if m != "mlp"):
        other = (grid.results / "tables" / "synthetic" / model / "table2.md").read_text()
        assert "diverged" not in other.replace("Diverged runs are left out", "")

    # The rest of the grid: every table, hypothesis file, figure and the report.
    expected = [
        *table_paths(grid.results / "tables", ["synthetic"], grid.models),
        *hypothesis_paths(grid.results / "tables"),
        *figure_paths(grid.results / "figures", ["synthetic"], grid.models),
        grid.results / "summary" / "report.md",
    ]
    missing = [str(p) for p in expected if not (Path(p).is_file() and Path(p).stat().st_size)]
    assert not missing


@pytest.mark.slow
def test_diverged_lr_candidate_is_recorded_and_loses_the_search(grid):
    for (model, variant), selected in grid.selected_before.items():
        cell = grid.results / "lr_search" / "synthetic" / model / variant
        big = json.loads((cell / "lr1e+20" / "meta.json").read_text())
        assert big["status"] == "diverged" and big["diverged_epoch"] == 1, (model, variant)
        small = json.loads((cell / "lr0.001" / "meta.json").read_text())
        assert small["status"] == "completed"
        assert selected["lr"] == 1e-3, (model, variant, selected)
        statuses = {c["lr"]: c["status"] for c in selected["candidates"]}
        assert statuses == {1e-3: "completed", grid.big_lr: "diverged"}
    search = pd.read_parquet(grid.results / "summary" / "lr_search.parquet")
    big = search[search["lr"] == grid.big_lr]
    assert len(big) == len(grid.models) * len(grid.variants)
    assert big["status"].eq("diverged").all() and big["best_val_acc"].isna().all()
    # Not selected anywhere, except in the cell whose selected.json the fixture overwrote.
    chosen = big[big["selected"]]
    assert list(zip(chosen["model"], chosen["variant"], strict=True)) == [grid.diverged[1:]]


# --------------------------------------------------------------------------- Snakemake killed
@pytest.mark.slow
def test_snakemake_killed_mid_grid_reruns_only_the_unfinished_runs(
    grid, tail, output, fingerprint, job_counts, incomplete_keys
):
    assert grid.killed_returncode == -signal.SIGKILL
    assert grid.finished_at_kill and grid.pending_at_kill, "kill was not mid-grid"
    assert not grid.unreadable_after_kill  # no partial parquet was ever visible
    assert grid.unlock.returncode == 0, tail(output(grid.unlock))
    # Finished runs were not touched: same bytes, same modification times.
    assert fingerprint(grid.finished_files) == grid.finished_files
    # Every other run was trained by the rerun, and only those.
    for key in grid.pending_at_kill:
        assert (grid.run_dir[key] / "meta.json").exists(), key
    trained = job_counts(output(grid.rerun)).get("train")
    assert trained == len(grid.run_keys) - len(grid.finished_at_kill), tail(output(grid.rerun))
    assert not incomplete_keys(grid.workdir)
    assert not list((grid.workdir / ".snakemake" / "locks").glob("*"))
    assert not list(grid.results.rglob("*.ckpt"))  # resumed runs cleaned their checkpoints


# --------------------------------------------------------------------------- two workflows
@pytest.mark.slow
def test_second_workflow_on_the_same_folder_is_refused_by_the_lock(
    grid, snakemake_cmd, run, kill_group, tail, output
):
    # The first redoes the summary from every run folder; the second would retrain one of those
    # runs meanwhile, and is refused. (A second that plans the whole grid can instead stop on a
    # summary file the first deletes while the second plans: Snakemake plans before it locks.)
    locks = grid.workdir / ".snakemake" / "locks"
    cmd = snakemake_cmd(grid.workdir, "--cores", "1", "--forcerun", "aggregate",
                        configs=[grid.override])  # fmt: skip
    run_meta = grid.run_dir[grid.run_keys[-1]] / "meta.json"
    retrain = snakemake_cmd(grid.workdir, "--cores", "1", "--forcerun", "train",
                            str(run_meta.relative_to(grid.workdir)),
                            configs=[grid.override])  # fmt: skip
    run_before = run_meta.stat().st_mtime_ns
    summary = grid.results / "summary" / "runs.parquet"
    before = summary.stat().st_mtime_ns
    first = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        t0 = time.monotonic()
        while not list(locks.glob("*.lock")):
            assert first.poll() is None, first.stdout.read()[-3000:]
            assert time.monotonic() - t0 < 300, "the first workflow never took its lock"
            time.sleep(0.05)
        second = run(retrain, timeout=300)
        still_running = first.poll() is None
        first_out, _ = first.communicate(timeout=600)
    finally:
        kill_group(first)
    assert still_running, "the first workflow ended before the second checked the lock"
    assert second.returncode != 0, tail(output(second))
    assert "LockException" in output(second) or "cannot be locked" in output(second)
    assert "Job stats" not in second.stdout  # it planned nothing, ran nothing
    assert run_meta.stat().st_mtime_ns == run_before  # the run it would retrain is untouched
    assert first.returncode == 0, first_out[-3000:]
    assert summary.stat().st_mtime_ns > before  # the first one did redo the summary
    runs = pd.read_parquet(summary)
    assert len(runs) == len(grid.run_keys)
    for name in ["epochs", "lr_search"]:
        assert len(pd.read_parquet(grid.results / "summary" / f"{name}.parquet"))
    assert not list(locks.glob("*"))
