"""Faults: divergence, SIGKILLs (of a run and of Snakemake), a full disk, stale results, two
workflows on one folder, bad configs and a corrupt prepared file.

Most workflow tests share one small grid (`grid`, module scope), run once as a user would meet
these faults: the learning-rate search runs (one candidate, 1e20, diverges everywhere), one
cell's selected rate is then overwritten with 1e20 (its training runs diverge), the full workflow
is started and SIGKILLed (whole process group) once the first training run has finished, and then
rerun after `--unlock` to completion. The merge of --configfile into config.yaml is recursive, so
the grid keeps all three models and four variants (dict keys cannot be removed by an override):
they are made tiny instead, with 2 seeds and 2 epochs.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import glob
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, TRAIN_ENV, train_cli
from workflow_helpers import FAST, deep_merge, snakemake_cmd, write_config

import normdrop.train as train_module
from normdrop import storage
from normdrop.aggregate import StaleResultsError, summarize
from normdrop.config import ConfigError, validate_workflow_config
from normdrop.hypotheses import hypothesis_paths
from normdrop.plots import figure_paths
from normdrop.tables import table_paths

DEMO = REPO / "workflow" / "demo.yaml"
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
RUN_FILES = ("steps.parquet", "epochs.parquet", "meta.json")


# --------------------------------------------------------------------------- helpers
def run(cmd, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def output(res) -> str:
    return (res.stdout or "") + (res.stderr or "")


def tail(text: str, n=4000) -> str:
    return text[-n:]


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of a child started with start_new_session=True."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def merged_config(*overrides: dict) -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config = deep_merge(config, yaml.safe_load(DEMO.read_text()))
    for o in overrides:
        config = deep_merge(config, o)
    return config


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
@pytest.fixture(scope="module")
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


# --------------------------------------------------------------------------- 1. divergence
@pytest.mark.slow
def test_diverged_training_runs_are_recorded_and_the_grid_finishes(grid):
    assert grid.rerun.returncode == 0
    for key, folder in grid.run_dir.items():
        meta = json.loads((folder / "meta.json").read_text())
        epochs = pd.read_parquet(folder / "epochs.parquet")
        if key[:2] == DIVERGED[1:]:
            assert meta["status"] == "diverged" and meta["diverged_epoch"] == 1, (key, meta)
            assert meta["lr"] == BIG_LR
            assert len(epochs) == 1 and epochs[["val_acc", "test_acc"]].isna().all().all()
        else:
            assert meta["status"] == "completed" and meta["diverged_epoch"] is None, (key, meta)
            assert len(epochs) == 2 and epochs["test_acc"].between(0, 1).all()

    runs = pd.read_parquet(grid.results / "summary" / "runs.parquet")
    assert len(runs) == len(RUN_KEYS)
    div = runs[runs["status"] == "diverged"]
    assert set(zip(div["model"], div["variant"], div["seed"], strict=True)) == {
        (*DIVERGED[1:], s) for s in SEEDS
    }
    assert div["diverged_epoch"].eq(1).all() and div["final_test_acc"].isna().all()
    done = runs[runs["status"] == "completed"]
    assert len(done) == len(RUN_KEYS) - len(SEEDS)
    assert done["final_test_acc"].between(0, 1).all()

    table = (grid.results / "tables" / "synthetic" / "mlp" / "table2.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("|")}
    assert "diverged (2/2 seeds)" in rows["none"], table
    assert all("diverged" not in rows[v] for v in ["bn", "dropout", "bn_dropout"]), table
    for model in ["cnn", "resnet20"]:
        other = (grid.results / "tables" / "synthetic" / model / "table2.md").read_text()
        assert "diverged" not in other.replace("Diverged runs are left out", "")

    # The rest of the grid: every table, hypothesis file, figure and the report.
    expected = [
        *table_paths(grid.results / "tables", ["synthetic"], MODELS),
        *hypothesis_paths(grid.results / "tables"),
        *figure_paths(grid.results / "figures", ["synthetic"], MODELS),
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
        assert statuses == {1e-3: "completed", BIG_LR: "diverged"}
    search = pd.read_parquet(grid.results / "summary" / "lr_search.parquet")
    big = search[search["lr"] == BIG_LR]
    assert len(big) == len(MODELS) * len(VARIANTS)
    assert big["status"].eq("diverged").all() and big["best_val_acc"].isna().all()
    # Not selected anywhere, except in the cell whose selected.json the fixture overwrote.
    chosen = big[big["selected"]]
    assert list(zip(chosen["model"], chosen["variant"], strict=True)) == [DIVERGED[1:]]


# --------------------------------------------------------------------------- 3. Snakemake killed
@pytest.mark.slow
def test_snakemake_killed_mid_grid_reruns_only_the_unfinished_runs(grid):
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
    assert trained == len(RUN_KEYS) - len(grid.finished_at_kill), tail(output(grid.rerun))
    assert not incomplete_keys(grid.workdir)
    assert not list((grid.workdir / ".snakemake" / "locks").glob("*"))
    assert not list(grid.results.rglob("*.ckpt"))  # resumed runs cleaned their checkpoints


def test_workflow_profile_is_used_when_run_from_elsewhere(tmp_path):
    """README: 'The workflow profile workflow/profiles/default (used automatically) sets
    --keep-going and --rerun-incomplete'. Run as the tests (and a cluster wrapper) run it."""
    res = run(snakemake_cmd(tmp_path, "-n", "--cores", "1"), timeout=300)
    assert res.returncode == 0, tail(output(res))
    assert "workflow specific profile" in res.stderr, tail(res.stderr, 1500)


# --------------------------------------------------------------------------- 5. stale results
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
    "change,key_message,stale_folders",
    [
        (
            {"train": {"epochs": 3}},
            "epochs: 2 on disk vs 3 in config",
            [f"runs/synthetic/{m}/{v}/seed{s}" for m, v, s in RUN_KEYS],
        ),
        (
            {"models": {"mlp": {"dropout_rate": 0.4}}},
            "dropout: 0.5 on disk vs 0.4 in config",
            [
                *(f"runs/synthetic/mlp/{v}/seed{s}" for v in ["dropout", "bn_dropout"]
                  for s in SEEDS),
                *(f"lr_search/synthetic/mlp/{v}/lr{lr}" for v in ["dropout", "bn_dropout"]
                  for lr in ["0.001", "1e+20"]),
            ],
        ),
    ],
    ids=["epochs", "dropout_rate"],
)  # fmt: skip
def test_summarize_refuses_results_of_other_settings(
    results_copy, change, key_message, stale_folders
):
    config = merged_config(GRID, {"results_dir": str(results_copy)})
    runs, epochs, candidates = summarize(config)  # the exact config: accepted
    assert len(runs) == len(RUN_KEYS)

    with pytest.raises(StaleResultsError) as err:
        summarize(deep_merge(config, change))
    message = str(err.value)
    assert message.startswith(f"{len(stale_folders)} result(s) disagree with the current config")
    listed = [line.strip() for line in message.splitlines()[1:]]
    assert len(listed) == min(20, len(stale_folders))
    for line in listed:
        folder, _, diff = line.partition(": ")
        assert any(folder == f"{results_copy}/{s}" for s in stale_folders), line
        assert diff == key_message, line  # that key, and only that key


@pytest.mark.slow
def test_summarize_refuses_mixed_code_revisions_unless_allowed(results_copy):
    config = merged_config(
        GRID, {"results_dir": str(results_copy), "metrics": {"allow_mixed_revisions": False}}
    )
    _set_revisions(results_copy, "aaaa111")
    summarize(config)
    odd = results_copy / "runs" / "synthetic" / "cnn" / "bn" / "seed43" / "meta.json"
    odd.write_text(json.dumps({**json.loads(odd.read_text()), "git_revision": "bbbb222-dirty"}))
    with pytest.raises(StaleResultsError) as err:
        summarize(config)
    message = str(err.value)
    assert "runs come from 2 code revisions" in message
    assert f"aaaa111 ({len(RUN_KEYS) - 1} runs)" in message and "bbbb222-dirty (1 runs)" in message
    assert "allow_mixed_revisions" in message
    runs, _, _ = summarize(deep_merge(config, {"metrics": {"allow_mixed_revisions": True}}))
    assert set(runs["git_revision"]) == {"aaaa111", "bbbb222-dirty"}


@pytest.mark.slow
def test_workflow_aggregate_fails_on_a_hand_edited_run(grid, tmp_path):
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


# --------------------------------------------------------------------------- 6. two workflows
@pytest.mark.slow
def test_second_workflow_on_the_same_folder_is_refused_by_the_lock(grid):
    locks = grid.workdir / ".snakemake" / "locks"
    cmd = snakemake_cmd(grid.workdir, "--cores", "1", "--forcerun", "aggregate",
                        configs=[grid.override])  # fmt: skip
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
        second = run(cmd, timeout=300)
        still_running = first.poll() is None
        first_out, _ = first.communicate(timeout=600)
    finally:
        kill_group(first)
    assert still_running, "the first workflow ended before the second checked the lock"
    assert second.returncode != 0, tail(output(second))
    assert "LockException" in output(second) or "cannot be locked" in output(second)
    assert "Job stats" not in second.stdout  # it planned nothing, ran nothing
    assert first.returncode == 0, first_out[-3000:]
    assert summary.stat().st_mtime_ns > before  # the first one did redo the summary
    runs = pd.read_parquet(summary)
    assert len(runs) == len(RUN_KEYS)
    for name in ["epochs", "lr_search"]:
        assert len(pd.read_parquet(grid.results / "summary" / f"{name}.parquet"))
    assert not list(locks.glob("*"))


# --------------------------------------------------------------------------- 2. random SIGKILLs
def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def _kill_at_random_points(
    cmd, out: Path, ckpt: Path, max_delay: float, rng: random.Random, why: str
) -> list:
    """Runs `cmd` until it completes, SIGKILLing it at random points on its first 3 tries; returns
    the delays of the kills that landed (after the try's first checkpoint save)."""
    kills = []
    for attempt in range(4):
        before = _mtime(ckpt)
        proc = subprocess.Popen(cmd, env=TRAIN_ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
        try:
            if attempt == 3:  # the last try runs to the end
                assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
                break
            # "Start" is this process's first checkpoint save: torch's import and the optimizer's
            # lazy imports take seconds on a loaded machine, and a kill there proves nothing.
            t0 = time.monotonic()
            while _mtime(ckpt) == before and proc.poll() is None:
                assert time.monotonic() - t0 < 180, f"no checkpoint written in 180 s ({why})"
                time.sleep(0.01)
            delay = rng.uniform(0.02, max_delay)
            time.sleep(delay)
        finally:
            kill_group(proc)
        if proc.returncode == 0:  # it finished before the kill: nothing left to interrupt
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
        kills.append(round(delay, 3))
        if not ckpt.exists():
            # Killed after its last step: the outputs were complete and the checkpoint, which
            # they supersede, already removed. That is a finished run.
            assert json.loads((out / "meta.json").read_text())["status"] == "completed"
            break
        # The checkpoint is always whole; nothing final is visible before the run has finished.
        saved = torch.load(ckpt, weights_only=False)
        visible = [*glob.glob(str(out / "*.parquet")), *glob.glob(str(out / "meta.json"))]
        if saved["epoch"] < 8:
            assert not visible, f"after kill {attempt + 1} at +{delay:.2f}s: {visible} ({why})"
        else:  # killed while writing the outputs: each visible file is complete
            for p in glob.glob(str(out / "*.parquet")):
                pd.read_parquet(p)
    return kills


def test_training_sigkilled_at_random_points_resumes_to_identical_metrics(tmp_path, tiny_data):
    seed = random.SystemRandom().randrange(1 << 30)
    rng, why = random.Random(seed), f"random seed {seed}"
    # The uninterrupted reference first: its training time (s) scales the kill delays, so the
    # first kill lands before the end on a fast machine as on a slow one.
    ref = subprocess.run(train_cli(tiny_data, tmp_path / "ref"), env=TRAIN_ENV,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert ref.returncode == 0, ref.stderr
    ref_wall = json.loads((tmp_path / "ref" / "meta.json").read_text())["wall_time_s"]
    out, ckpt = tmp_path / "killed", tmp_path / "scratch" / "run.ckpt"
    # A timed save every 0.2 s (the reference has none): kills land mid-epoch, in evaluation and
    # in checkpoint writes, and must not change a single number.
    cmd = train_cli(tiny_data, out, "--checkpoint", str(ckpt), "--checkpoint-every-s", "0.2")
    kills = _kill_at_random_points(cmd, out, ckpt, 0.6 * ref_wall, rng, why)
    assert kills, f"no kill landed while training ({why})"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "completed"
    assert meta["resumes"], f"the run never resumed from a checkpoint ({why}, kills {kills})"
    ref_epochs = pd.read_parquet(tmp_path / "ref" / "epochs.parquet").drop(columns="wall_time_s")
    got_epochs = pd.read_parquet(out / "epochs.parquet").drop(columns="wall_time_s")
    pd.testing.assert_frame_equal(ref_epochs, got_epochs, obj=f"epochs ({why}, kills {kills})")
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "ref" / "steps.parquet"), pd.read_parquet(out / "steps.parquet")
    )
    assert not ckpt.exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(RUN_FILES)  # no temp file left


# --------------------------------------------------------------------------- 4. disk full
def _args(data, out, ckpt) -> list[str]:
    return [
        "--data", str(data), "--dataset", "synthetic", "--model", "mlp", "--width", "8",
        "--epochs", "2", "--milestones", "1", "--batch-size", "64", "--device", "cpu",
        "--out", str(out), "--checkpoint", str(ckpt),
    ]  # fmt: skip


def _disk_full_writer(f):
    f.write(b"PAR1" + b"\0" * 4096)  # some bytes reach the disk, then it is full
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("failing", ["steps.parquet", "epochs.parquet", "meta.json"])
def test_disk_full_while_writing_outputs_keeps_previous_outputs(
    tmp_path, tiny_data, monkeypatch, capsys, failing
):
    out, ckpt = tmp_path / "run", tmp_path / "scratch" / "run.ckpt"
    out.mkdir()
    previous = {
        "steps.parquet": pd.DataFrame({"epoch": [1], "step": [1], "loss": [9.0]}),
        "epochs.parquet": pd.DataFrame({"epoch": [1], "test_acc": [0.125]}),
    }
    for name, frame in previous.items():
        frame.to_parquet(out / name, index=False)
    (out / "meta.json").write_text('{"status": "completed", "note": "the previous run"}\n')
    old = {p.name: p.read_bytes() for p in out.iterdir()}

    real_group = train_module.atomic_write_group

    def group(writes):  # the disk fills up while one of the three files is being written
        return real_group(
            {p: _disk_full_writer if Path(p).name == failing else w for p, w in writes.items()}
        )

    monkeypatch.setattr(train_module, "atomic_write_group", group)
    assert train_module.main(_args(tiny_data, out, ckpt)) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and len(err.strip().splitlines()) == 1, err
    assert "No space left on device" in errors[0] and str(ckpt) in errors[0], err
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]  # no temp file left
    assert ckpt.exists()  # a rerun resumes instead of training again
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old, (
        f"disk full while writing {failing}: the previous outputs were partly replaced"
    )

    monkeypatch.undo()
    assert train_module.main(_args(tiny_data, out, ckpt)) == 0
    assert "resuming from" in capsys.readouterr().out
    assert json.loads((out / "meta.json").read_text())["status"] == "completed"
    assert not ckpt.exists()


def test_atomic_write_with_a_failing_writer_keeps_the_old_file(tmp_path):
    target = tmp_path / "epochs.parquet"
    target.write_bytes(b"old complete file")
    with pytest.raises(OSError, match="No space left on device"):
        storage.atomic_write(target, _disk_full_writer)
    assert target.read_bytes() == b"old complete file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epochs.parquet"]

    def interrupted(f):
        f.write(b"{")
        raise KeyboardInterrupt  # Ctrl-C mid-write: not an Exception, still cleaned up

    fresh = tmp_path / "sub" / "meta.json"  # no previous file: none appears
    with pytest.raises(KeyboardInterrupt):
        storage.atomic_write(fresh, interrupted)
    assert list(fresh.parent.iterdir()) == []


def test_next_write_removes_temp_files_of_killed_writers_only(tmp_path):
    target = tmp_path / "steps.parquet"
    # A writer SIGKILLed mid-write (a real process, so its pid is really gone) ...
    code = (
        "import os, sys, time; from normdrop import storage; "
        "storage.atomic_write(sys.argv[1], lambda f: (f.write(b'half'), f.flush(), "
        "print('writing', flush=True), time.sleep(60)))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], env=env,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        assert proc.stdout.readline() == "writing\n"
    finally:
        kill_group(proc)
    dead = tmp_path / f".steps.parquet.tmp-{proc.pid}"
    assert dead.read_bytes() == b"half" and not target.exists()
    # ... and a live one (this test's parent process, standing in for a concurrent writer).
    live = tmp_path / f".steps.parquet.tmp-{os.getppid()}"
    live.write_bytes(b"in progress")

    storage.atomic_write_group({target: lambda f: f.write(b"whole")})
    assert target.read_bytes() == b"whole"
    assert not dead.exists()  # the killed writer's litter is gone
    assert live.read_bytes() == b"in progress"  # a running writer's file is not touched


# --------------------------------------------------------------------------- 7. config faults
CONFIG_FAULTS = {
    "unknown_key": ({"bogus": 1}, "bogus", "allowed keys: results_dir, resources_dir"),
    "unknown_nested_key": (
        {"train": {"epoch": 3}}, "train.epoch",
        "unknown key (did you mean 'epochs'?); allowed keys: epochs, batch_size",
    ),
    "wrong_type": ({"train": {"epochs": "ten"}}, "train.epochs", "'ten' is not of type 'integer'"),
    "unknown_dataset": (
        {"datasets": ["imagenet"]}, "datasets.0",
        "'imagenet' is not allowed; allowed: mnist, cifar10, cifar100, synthetic",
    ),
    "unknown_model": (
        {"models": {"vgg": {"width": 4, "dropout_rate": 0.3}}}, "models.vgg",
        "'vgg' is not allowed; allowed: mlp, cnn, resnet20",
    ),
    "unknown_norm": (
        {"variants": {"gn": {"norm": "instance", "dropout": False}}}, "variants.gn.norm",
        "'instance' is not allowed; allowed: none, batch, group, layer",
    ),
    "unknown_init": (
        {"models": {"mlp": {"init": "xavier"}}}, "models.mlp.init",
        "'xavier' is not allowed; allowed: stable, he",
    ),
    "empty_grid": ({"datasets": []}, "datasets", "[] should be non-empty"),
    "duplicate_seeds": ({"seeds": [42, 43, 42]}, "seeds", "duplicate seed(s) [42]"),
    "milestone_beyond_last_epoch": (
        {"train": {"epochs": 6, "lr_milestones": [4, 6]}}, "train.lr_milestones",
        "[6] at or beyond the last epoch (train.epochs = 6); allowed: 1 .. 5",
    ),
}  # fmt: skip
DRY_RUN_FAULTS = [k for k in CONFIG_FAULTS if k != "unknown_nested_key"]


@pytest.fixture(scope="module")
def config_dry_runs(tmp_path_factory):
    """`snakemake -n` with each faulty override, two at a time (each is a few seconds)."""
    root = tmp_path_factory.mktemp("config-faults")

    def dry_run(name):
        folder = root / name
        folder.mkdir()
        override = write_config(folder, CONFIG_FAULTS[name][0])
        return name, run(snakemake_cmd(folder, "-n", "--cores", "1", configs=[override]), 300)

    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(dry_run, DRY_RUN_FAULTS))


@pytest.mark.parametrize("name", DRY_RUN_FAULTS)
def test_config_fault_stops_the_workflow_before_any_job(config_dry_runs, name):
    _, key, allowed = CONFIG_FAULTS[name]
    res = config_dry_runs[name]
    text = output(res)
    assert res.returncode != 0, tail(text)
    lines = [line for line in text.splitlines() if "invalid config:" in line]
    assert len(lines) == 1, text
    assert f"invalid config: config key '{key}': " in lines[0] and allowed in lines[0], text
    assert "Job stats" not in text and "localrule" not in text


@pytest.mark.parametrize("name", list(CONFIG_FAULTS))
def test_config_fault_in_process(name):
    override, key, allowed = CONFIG_FAULTS[name]
    with pytest.raises(ConfigError) as err:
        validate_workflow_config(merged_config(override))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"config key '{key}': ") and allowed in message, message


def test_milestones_out_of_order_name_the_config_key():
    """Caught only by RunConfig (the schema checks uniqueness, not order): the message should
    still name the workflow's config key, as every other config fault does."""
    with pytest.raises(ConfigError) as err:
        validate_workflow_config(merged_config({"train": {"epochs": 6, "lr_milestones": [4, 2]}}))
    assert str(err.value).startswith("config key 'train.lr_milestones'"), str(err.value)


def test_merged_demo_and_grid_configs_are_valid():
    validate_workflow_config(merged_config())
    validate_workflow_config(merged_config(GRID))


# --------------------------------------------------------------------------- 8. corrupt data
@pytest.mark.parametrize("keep", [0.0, 0.5, 0.999])
def test_truncated_prepared_file_is_refused_with_one_line(tmp_path, tiny_data, capsys, keep):
    data = tiny_data.read_bytes()
    bad = tmp_path / "synthetic.pt"
    bad.write_bytes(data[: int(len(data) * keep)])
    out = tmp_path / "run"
    rc = train_module.main(_args(bad, out, tmp_path / "run.ckpt"))
    assert rc != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    assert str(bad) in err[0] and "prepare" in err[0], err
    assert not out.exists() and not (tmp_path / "run.ckpt").exists()
