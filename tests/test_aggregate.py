"""The aggregate (`normdrop.aggregate.collect_runs` and the workflow's `aggregate` rule) refuses
results of other settings, of mixed code revisions, and a hand-edited run; on copies of the shared
faulty grid (`grid`, fixtures/fault_grid.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from normdrop.aggregate import StaleResultsError, collect_runs
from normdrop.workflow_config import deep_merge


# --------------------------------------------------------------------------- stale results
@pytest.fixture
def results_copy(grid, tmp_path):
    """The grid's run and search folders, copied (tests edit them)."""
    dst = tmp_path / "results"
    for sub in ["runs", "lr_search"]:
        shutil.copytree(grid.results / sub, dst / sub)
    return dst


def _set_revisions(results: Path, revision: str) -> None:
    for meta in (results / "runs").rglob("meta.json"):
        doc = json.loads(meta.read_text())
        meta.write_text(json.dumps({**doc, "git_revision": revision}))


@pytest.mark.slow
@pytest.mark.parametrize(
    "change,key_message,stale_folders",  # stale_folders: of the grid (fixture `grid`)
    [
        (
            {"train": {"epochs": 3}},
            "epochs: 2 on disk vs 3 in config",
            lambda grid: [f"runs/synthetic/{m}/{v}/seed{s}" for m, v, s in grid.run_keys],
        ),
        (
            {"models": {"mlp": {"dropout_rate": 0.4}}},
            "dropout_rate: 0.5 on disk vs 0.4 in config",
            lambda grid: [
                *(f"runs/synthetic/mlp/{v}/seed{s}" for v in ["dropout", "bn_dropout"]
                  for s in grid.seeds),
                *(f"lr_search/synthetic/mlp/{v}/lr{lr}" for v in ["dropout", "bn_dropout"]
                  for lr in ["0.001", "1e+20"]),
            ],
        ),
    ],
    ids=["epochs", "dropout_rate"],
)  # fmt: skip
def test_collect_runs_refuses_results_of_other_settings(
    results_copy, change, key_message, stale_folders, merged_config, grid_config, grid
):
    stale_folders = stale_folders(grid)
    config = merged_config(grid_config, {"results_dir": str(results_copy)})
    runs, epochs, candidates = collect_runs(config)  # the exact config: accepted
    assert len(runs) == len(grid.run_keys)

    with pytest.raises(StaleResultsError) as err:
        collect_runs(deep_merge(config, change))
    message = str(err.value)
    assert message.startswith(f"{len(stale_folders)} result(s) disagree with the current config")
    listed = [line.strip() for line in message.splitlines()[1:]]
    assert len(listed) == min(20, len(stale_folders))
    for line in listed:
        folder, _, diff = line.partition(": ")
        assert any(folder == f"{results_copy}/{s}" for s in stale_folders), line
        assert diff == key_message, line  # that key, and only that key


@pytest.mark.slow
def test_collect_runs_refuses_mixed_code_revisions_unless_allowed(
    results_copy, merged_config, grid_config, grid
):
    config = merged_config(
        grid_config, {"results_dir": str(results_copy), "metrics": {"allow_mixed_revisions": False}}
    )
    _set_revisions(results_copy, "aaaa111")
    collect_runs(config)
    odd = results_copy / "runs" / "synthetic" / "cnn" / "bn" / "seed43" / "meta.json"
    odd.write_text(json.dumps({**json.loads(odd.read_text()), "git_revision": "bbbb222-dirty"}))
    with pytest.raises(StaleResultsError) as err:
        collect_runs(config)
    message = str(err.value)
    assert "runs come from 2 code revisions" in message
    assert (
        f"aaaa111 ({len(grid.run_keys) - 1} runs)" in message
        and "bbbb222-dirty (1 runs)" in message
    )
    assert "allow_mixed_revisions" in message
    runs, _, _ = collect_runs(deep_merge(config, {"metrics": {"allow_mixed_revisions": True}}))
    assert set(runs["git_revision"]) == {"aaaa111", "bbbb222-dirty"}


@pytest.mark.slow
def test_workflow_aggregate_fails_on_a_hand_edited_run(
    grid, tmp_path, run, snakemake_cmd, tail, output, job_counts
):
    workdir = tmp_path / "copy"
    shutil.copytree(grid.workdir, workdir, symlinks=True)  # copy2: mtimes kept
    meta = workdir / "results" / "demo" / "runs" / "synthetic" / "cnn" / "bn" / "seed42"
    meta = meta / "meta.json"
    doc = json.loads(meta.read_text())
    doc["settings"]["epochs"] = 5
    meta.write_text(json.dumps(doc))
    # (--rerun-triggers takes several values: the target goes before it.)
    res = run(
        snakemake_cmd(
            workdir, "--cores", "1", "aggregate", "--rerun-triggers", "mtime",
            configs=[grid.override],
        )
    )  # fmt: skip
    assert res.returncode != 0, tail(output(res))
    assert job_counts(output(res)) == {"aggregate": 1, "total": 1}, tail(output(res))
    log = (workdir / "results" / "demo" / "logs" / "aggregate.log").read_text()
    assert "1 result(s) disagree with the current config" in log, log
    assert "cnn/bn/seed42: epochs: 5 on disk vs 2 in config" in log, log
    assert not (workdir / "results" / "demo" / "summary" / "runs.parquet").exists()


def test_settings_recorded_before_a_setting_existed_are_not_stale():
    # A meta.json written before warmup_epochs, grad_clip_norm, lstm_input and permutation_seed
    # lacks them: it ran with their defaults (its settings hash is unchanged), so it matches a
    # config at the defaults and is stale against one that sets them.
    from normdrop.aggregate import _diff, _normalised, _semantic
    from normdrop.config import RUN_DEFAULTS, RunConfig

    expected = RunConfig(dataset="mnist", model="lstm", width=8).to_dict()
    old = {k: v for k, v in expected.items() if k not in RUN_DEFAULTS}
    assert _semantic(_normalised(old)) == _semantic(_normalised(expected))
    clipped = {**expected, "grad_clip_norm": 1.0}
    assert _diff(old, clipped) == "grad_clip_norm: 0.0 on disk vs 1.0 in config"
