"""The workflow: the paper's grid plans the right jobs, the workflow profile is used; the demo DAG
runs end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from normdrop.catalog import figure_paths, hypothesis_paths, table_paths

REPO = Path(__file__).resolve().parents[1]

MODELS = ["mlp", "cnn", "resnet20"]


@pytest.mark.slow
def test_dry_run_of_the_paper_grid_plans_108_runs_and_144_searches(tmp_path, job_counts):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n",
           "--directory", str(tmp_path), "--cores", "4"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout)
    assert counts["train"] == 108  # 3 datasets x 3 models x 4 variants x 3 seeds
    assert counts["lr_search"] == 144  # 3 x 3 x 4 cells x 4 candidates
    assert counts["select_lr"] == 36 and counts["download"] == 3 and counts["prepare"] == 3
    assert "results/runs/cifar100/resnet20/bn_dropout/seed44/meta.json" in res.stdout


def test_workflow_profile_is_used_when_run_from_elsewhere(
    tmp_path, run, snakemake_cmd, tail, output
):
    """README: 'The workflow profile workflow/profiles/default (used automatically) sets
    --keep-going and --rerun-incomplete'. Run as the tests (and a cluster wrapper) run it."""
    res = run(snakemake_cmd(tmp_path, "-n", "--cores", "1"), timeout=300)
    assert res.returncode == 0, tail(output(res))
    assert "workflow specific profile" in res.stderr, tail(res.stderr, 1500)


@pytest.mark.slow
def test_demo_runs_end_to_end_and_a_second_run_has_nothing_to_do(tmp_path, snakemake):
    # The README's demo itself (workflow/demo.yaml, nothing overridden): 3 models x 4 variants x
    # 3 seeds of 6 epochs, a 2-candidate search of 2 epochs (about 4 minutes on 2 quiet cores).
    res = snakemake(tmp_path, "--cores", "2", timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    results = tmp_path / "results" / "demo"
    runs = pd.read_parquet(results / "summary" / "runs.parquet")
    assert len(runs) == 3 * 4 * 3  # models x variants x seeds
    assert set(runs["status"]) == {"completed"}
    assert runs["final_test_acc"].between(0, 1).all() and runs["loss_sd"].gt(0).all()
    # Every variant learns (docs/protocol.md, "The offline demo"): each of the 12 cells ends at
    # twice chance or better (10 classes: 0.2), so the report compares networks that trained.
    cell_acc = runs.groupby(["model", "variant"])["final_test_acc"].mean()
    assert len(cell_acc) == 12 and cell_acc.ge(2 * 0.1).all(), cell_acc.round(3).to_dict()
    epochs = pd.read_parquet(results / "summary" / "epochs.parquet")
    assert len(epochs) == len(runs) * 6
    search = pd.read_parquet(results / "summary" / "lr_search.parquet")
    assert (
        len(search) == 3 * 4 * 2
        and search.groupby(["model", "variant"])["selected"].sum().eq(1).all()
    )
    # Each run used the rate its search selected, and says where it came from.
    merged = runs.merge(search[search.selected], on=["dataset", "model", "variant"])
    assert (merged["lr_x"] == merged["lr_y"]).all()
    expected = [
        *table_paths(results / "tables", ["synthetic"], MODELS),
        *hypothesis_paths(results / "tables"),
        *figure_paths(results / "figures", ["synthetic"], MODELS),
        results / "summary" / "report.md",
    ]
    assert len(expected) > 40
    for path in expected:
        assert Path(path).is_file() and Path(path).stat().st_size > 0, path
    report = tmp_path / "report.html"
    res = snakemake(tmp_path, "--cores", "1", "--report", str(report))
    assert res.returncode == 0, res.stderr[-3000:]
    html = report.read_text()
    assert "<html" in html and "Learning curves" in html and "Hypothesis tests" in html
    # Each result carries its labels: the report lists them as a table (Snakemake's browser).
    labels = '"labels": {"result": "Learning curves", "dataset": "Synthetic", "model": "MLP"'
    assert labels in html
    # The aggregate wrote the seed-averaged TensorBoard curves of every cell.
    mean = results / "tensorboard" / "mean" / "synthetic"
    assert len(list(mean.glob("*/*/mean/events.out.tfevents.*"))) == 12
    assert not list(results.rglob("*.ckpt"))  # checkpoints removed once a run is complete

    # The status command on the finished grid: every run and candidate finished, nothing left.
    demo = REPO / "workflow" / "demo.yaml"
    status = [sys.executable, "-m", "normdrop.status", "--configfile", str(demo),
              "--directory", str(tmp_path)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    shown = subprocess.run([*status, "--json"], capture_output=True, text=True, env=env)
    assert shown.returncode == 0, shown.stderr
    state = json.loads(shown.stdout)
    assert state["counts"]["train"]["finished"] == 36 and state["estimate"]["runs_left"] == 0
    assert state["counts"]["lr_search"]["finished"] == 24 and state["estimate"]["wall_s"] == 0
    text = subprocess.run(status, capture_output=True, text=True, env=env).stdout
    assert "Time left: 0 s (every run is done)" in text, text
    assert text.strip().splitlines()[-1] == (
        "Total: 36/36 training runs done; 24/24 search runs done; 0 s left"
    )

    mtimes = {p: p.stat().st_mtime_ns for p in results.rglob("*.parquet")}
    again = snakemake(tmp_path, "--cores", "2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Nothing to be done" in again.stdout + again.stderr
    assert mtimes == {p: p.stat().st_mtime_ns for p in results.rglob("*.parquet")}


@pytest.mark.slow
def test_a_fused_grid_writes_each_run_as_the_unfused_grid_does(
    tmp_path, write_config, snakemake, fast_config
):
    # The MLP's four cells, 2 seeds, a 2-candidate search: unfused, then with `fuse` on (one job
    # per cell for the seeds, one per search). Every run folder is written either way, the status
    # counts each member, and a run without dropout computes the same numbers fused (on CPU).
    grid = {
        **fast_config,
        "select": {"models": ["mlp"]},
        "train": {"epochs": 2, "lr_milestones": [1]},
        "lr_search": {"epochs": 1, "candidates": [1.0e-3, 3.0e-3]},
    }
    folders, outputs = {}, {}
    for fused in (False, True):
        workdir = tmp_path / ("fused" if fused else "unfused")
        workdir.mkdir()
        override = write_config(workdir, {**grid, "fuse": {"train": fused, "lr_search": fused}})
        res = snakemake(workdir, "--cores", "2", configs=[override])
        assert res.returncode == 0, res.stderr[-3000:]
        folders[fused], outputs[fused] = workdir / "results" / "demo", res.stdout + res.stderr
        status = [sys.executable, "-m", "normdrop.status", "--configfile",
                  str(REPO / "workflow" / "demo.yaml"), str(override), "--directory",
                  str(workdir), "--json"]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        shown = subprocess.run(status, capture_output=True, text=True, env=env)
        counts = json.loads(shown.stdout)["counts"]
        assert counts["train"]["finished"] == 8 and counts["lr_search"]["finished"] == 8, counts
    assert "train_fused" in outputs[True] and "lr_search_fused" in outputs[True]
    assert "train_fused" not in outputs[False]

    runs = {f: pd.read_parquet(folders[f] / "summary" / "runs.parquet") for f in folders}
    assert list(runs[True].columns) == list(runs[False].columns) and len(runs[True]) == 8
    files = {
        f: sorted(p.relative_to(folders[f]) for p in folders[f].rglob("*.parquet")) for f in folders
    }
    assert files[True] == files[False]  # every run's and candidate's files, and the summaries
    for variant in ("none", "bn"):  # no dropout: the same numbers, to the bit
        for seed in (42, 43):
            run = Path("runs", "synthetic", "mlp", variant, f"seed{seed}")
            a, b = (pd.read_parquet(folders[f] / run / "epochs.parquet") for f in (False, True))
            pd.testing.assert_frame_equal(
                a.drop(columns="wall_time_s"), b.drop(columns="wall_time_s")
            )
            meta = json.loads((folders[True] / run / "meta.json").read_text())
            other = [Path(p).parts[-2:] for p in meta["fused_with"]]  # the cell's other seed
            assert other == [(variant, f"seed{85 - seed}")], meta["fused_with"]
