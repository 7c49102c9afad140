"""`python -m normdrop.status` on constructed results trees: every state, the time left, and that
it changes no file and takes no lock."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import yaml

from normdrop.checkpoints import CheckpointSummary, read_checkpoint_summary
from normdrop.data import load_prepared
from normdrop.status import main
from normdrop.train import train

REPO = Path(__file__).resolve().parents[1]

DEMO = REPO / "workflow" / "demo.yaml"  # results_dir results/demo, 6 epochs, a 2-epoch search
SEEDS = {"seeds": [42, 43, 44]}


class _StopAfter(Exception):
    pass


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory, tiny_data, cpu, tiny_config) -> dict:
    """A checkpoint as `train` writes it, after 3 of 6 epochs (read back safely)."""
    path = tmp_path_factory.mktemp("ckpt") / "run.ckpt"

    def stop(line):
        if line.startswith("epoch 4/"):  # the checkpoint of epoch 3's end is on disk
            raise _StopAfter

    with pytest.raises(_StopAfter):
        train(tiny_config(epochs=6), load_prepared(tiny_data), cpu, checkpoint=path, log=stop)
    return torch.load(path, weights_only=True)


def write_run(folder: Path, status: str, wall: list[float], diverged_epoch=None, epochs=6):
    """meta.json + epochs.parquet of a run that ended; `wall` is wall_time_s per epoch."""
    folder.mkdir(parents=True)
    pd.DataFrame({"epoch": range(1, len(wall) + 1), "wall_time_s": wall}).to_parquet(
        folder / "epochs.parquet"
    )
    meta = {"status": status, "diverged_epoch": diverged_epoch, "settings": {"epochs": epochs}}
    (folder / "meta.json").write_text(json.dumps(meta))


def write_checkpoint(path: Path, real: dict, epoch: int, elapsed: float, age_s: float = 0.0):
    """The real checkpoint's format with chosen progress and elapsed time, `age_s` old."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**real, "epoch": epoch, "elapsed": elapsed}, path)
    os.utime(path, (time.time() - age_s,) * 2)


def write_log(path: Path, lines: list[str], age_s: float = 0.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    os.utime(path, (time.time() - age_s,) * 2)


def epoch_line(k, n=6):
    return f"epoch {k}/{n} lr 1.00e-03 loss 2.1000 (sd 0.1000) train 0.3 val 0.3 test 0.3 [1.0s]"


TRACEBACK = [
    "Traceback (most recent call last):",
    '  File "train.py", line 1, in <module>',
    "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB",
]


@pytest.fixture()
def tree(tmp_path, real_checkpoint) -> Path:
    """results/demo with one run in each state (synthetic dataset; mlp 2 s/epoch, cnn 10 s/epoch):

    search mlp/none/lr0.003   finished, 2 epochs in 4 s
    train  mlp/none/seed42    finished, 6 epochs in 12 s
    train  mlp/none/seed43    running: checkpoint after epoch 3 (6 s), written just now
    train  mlp/none/seed44    failed: log with epoch 1, then a traceback; no checkpoint
    train  mlp/bn/seed42      diverged in epoch 2 (4 s)
    train  cnn/none/seed42    stopped: checkpoint after epoch 2 (20 s), last written 2 h ago
    train  resnet20/none/seed42  running: log at epoch 1, no checkpoint yet, no timing
    """
    res = tmp_path / "results" / "demo"
    s = "synthetic"
    write_run(res / f"lr_search/{s}/mlp/none/lr0.003", "completed", [2.0, 4.0], epochs=2)
    write_run(res / f"runs/{s}/mlp/none/seed42", "completed", [2.0 * k for k in range(1, 7)])
    write_checkpoint(res / f"scratch/runs/{s}/mlp/none/seed43.ckpt", real_checkpoint, 3, 6.0)
    write_log(res / f"logs/train/{s}/mlp/none/seed43.log", ["start", *map(epoch_line, (1, 2, 3))])
    write_log(res / f"logs/train/{s}/mlp/none/seed44.log", ["start", epoch_line(1), *TRACEBACK])
    write_run(res / f"runs/{s}/mlp/bn/seed42", "diverged", [2.0, 4.0], diverged_epoch=2)
    write_checkpoint(res / f"scratch/runs/{s}/cnn/none/seed42.ckpt", real_checkpoint, 2, 20.0,
                     age_s=7200)  # fmt: skip
    write_log(res / f"logs/train/{s}/cnn/none/seed42.log", ["start", epoch_line(2)], age_s=7200)
    write_log(res / f"logs/train/{s}/resnet20/none/seed42.log", ["start", epoch_line(1)])
    (tmp_path / "seeds.yaml").write_text(yaml.safe_dump(SEEDS))
    return tmp_path


@pytest.fixture(scope="module")
def status_cli(train_env):
    def status_cli(*args, cwd) -> subprocess.CompletedProcess:
        """The command as a user runs it."""
        cmd = [sys.executable, "-m", "normdrop.status", *map(str, args)]
        return subprocess.run(
            cmd, cwd=cwd, env=train_env, capture_output=True, text=True, timeout=300
        )

    return status_cli


def status(*args, cwd) -> SimpleNamespace:
    """The same in this process (torch is imported once): returncode, stdout, stderr."""
    out, err, old = io.StringIO(), io.StringIO(), os.getcwd()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exit:  # argparse's errors
                code = exit.code
    finally:
        os.chdir(old)
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def status_json(*args, cwd) -> dict:
    res = status(*args, "--json", cwd=cwd)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def states(report) -> dict[str, str]:
    return {
        f"{r['kind']} {r['model']}/{r['variant']}/{r['key']}": r["state"] for r in report["runs"]
    }


def snapshot(folder: Path) -> dict:
    return {
        p: (p.stat().st_mtime_ns, p.stat().st_size, p.is_dir()) for p in sorted(folder.rglob("*"))
    }


def test_every_state_from_the_files_of_a_config_grid(tree):
    report = status_json("--configfile", DEMO, tree / "seeds.yaml", "--directory", tree, cwd=REPO)
    got = states(report)
    assert len(got) == 3 * 4 * (2 + 3)  # models x variants x (candidates + seeds)
    expected = {
        "lr_search mlp/none/lr0.003": "finished",
        "train mlp/none/seed42": "finished",
        "train mlp/none/seed43": "running",
        "train mlp/none/seed44": "failed",
        "train mlp/bn/seed42": "diverged",
        "train cnn/none/seed42": "stopped",
        "train resnet20/none/seed42": "running",
    }
    assert {k: got[k] for k in expected} == expected
    assert {v for k, v in got.items() if k not in expected} == {"not started"}
    assert report["counts"]["train"] == {
        "finished": 1, "diverged": 1, "running": 2, "stopped": 1, "failed": 1, "not started": 30
    }  # fmt: skip
    runs = {f"{r['model']}/{r['variant']}/{r['key']}": r for r in report["runs"]}
    assert runs["mlp/none/seed43"]["done"] == 3 and runs["mlp/none/seed43"]["epochs"] == 6
    assert runs["cnn/none/seed42"]["done"] == 2
    assert runs["mlp/bn/seed42"]["diverged_epoch"] == 2
    assert runs["mlp/none/seed44"]["last_line"] == TRACEBACK[-1]

    text = status("--configfile", DEMO, tree / "seeds.yaml", "-d", tree, cwd=REPO).stdout
    training = text[text.index("Training runs:") :]
    row = next(line for line in training.splitlines() if line.startswith("synthetic mlp      none"))
    assert "1/3 done, 1 running (ep 3/6), 1 failed (ep 1/6)" in row, text
    assert "1/3 done (1 diverged), 2 not started" in training
    assert "1 stopped (ep 2/6)" in text
    log = tree / "results/demo/logs/train/synthetic/mlp/none/seed44.log"
    assert f"train synthetic/mlp/none/seed44 (ep 1/6): {TRACEBACK[-1]}\n    {log}" in text
    last = text.strip().splitlines()[-1]
    assert last.startswith("Total: 2/36 training runs done (1 diverged), 2 running, 1 stopped, ")
    assert "1/24 search runs done, 23 not started" in last


def test_time_left_from_measured_epoch_times(tree):
    """Without a config only the runs with files count, so the expected numbers are simple."""
    results = tree / "results" / "demo"
    report = status_json("--results", results, cwd=tree)
    assert len(report["runs"]) == 7 and report["counts"]["train"]["not started"] == 0
    est = report["estimate"]
    # mlp: (4 + 12 + 6 + 4) s / (2 + 6 + 3 + 2) epochs; cnn: 20 s / 2 epochs.
    assert est["seconds_per_epoch"] == {"synthetic/cnn": 10.0, "synthetic/mlp": 2.0}
    overall = (4 + 12 + 6 + 4 + 20) / (2 + 6 + 3 + 2 + 2)
    assert est["overall_seconds_per_epoch"] == pytest.approx(overall)
    # Left: mlp seed43 3 epochs, mlp seed44 5 (failed after epoch 1, counted from its log),
    # cnn 4 epochs, resnet20 5 epochs at the overall mean (no resnet20 timing).
    work = 3 * 2.0 + 5 * 2.0 + 4 * 10.0 + 5 * overall
    assert est["runs_left"] == 4 and est["runs_from_overall_mean"] == 1
    assert est["work_s"] == pytest.approx(work)
    # Two runs are running now (written in the last minutes): work / 2 = 35.7 s < the cnn run's
    # own 40 s, which no parallelism shortens.
    assert est["concurrency"] == 2 and est["wall_s"] == pytest.approx(40.0)
    one = status_json("--results", results, "--resources", "gpu=1", cwd=tree)["estimate"]
    assert one["concurrency"] == 1 and one["wall_s"] == pytest.approx(work)
    text = status("--results", results, "--resources", "gpu=1", cwd=tree).stdout
    assert "Time left: about 1 min (4 runs left, 1 min of work, 1 at once)" in text, text
    assert "synthetic/cnn 10 s, synthetic/mlp 2 s (runs of other models: the mean, 3.07 s)" in text


def test_time_left_is_unknown_without_any_timing_and_zero_when_done(tmp_path):
    res = tmp_path / "results"
    write_log(res / "logs/train/synthetic/mlp/none/seed42.log", ["start", epoch_line(1)])
    est = status_json("--results", res, cwd=tmp_path)["estimate"]
    assert est["wall_s"] is None and est["runs_unknown"] == 1
    text = status("--results", res, cwd=tmp_path).stdout
    assert "Time left: unknown (1 of 1 runs left have no timing)" in text

    done = tmp_path / "done"
    write_run(done / "runs/synthetic/mlp/none/seed42", "completed", [1.0] * 6)
    text = status("--results", done, cwd=tmp_path).stdout
    # Without a config the grid is not known: nothing claims that every run is done.
    assert "every run is done" not in text
    assert "Time left: 0 s for the runs found (without --configfile runs not started" in text
    last = text.strip().splitlines()[-1]
    assert last.startswith("Total: 1/1 training runs found done;") and last.endswith("; 0 s left")
    assert status_json("--results", done, cwd=tmp_path)["grid_known"] is False


def test_config_values_as_snakemake_takes_them(tree):
    # `--config` is its own option (not an abbreviation of --configfile), KEY=VALUE as Snakemake.
    one = status_json("--configfile", DEMO, "--config", "seeds=[42]", "-d", tree, cwd=REPO)
    assert len([r for r in one["runs"] if r["kind"] == "train"]) == 3 * 4  # one seed per cell
    assert one["grid_known"] is True
    res = status("--config", "seeds", "-d", tree, cwd=REPO)
    assert res.returncode == 2 and "--config 'seeds': give KEY=VALUE" in res.stderr


def test_a_finished_run_that_snakemake_marks_incomplete_is_not_done(tree):
    # Killed after writing its outputs: Snakemake reruns it, so status must not count it done.
    from base64 import urlsafe_b64encode

    meta = "results/demo/runs/synthetic/mlp/none/seed42/meta.json"  # as the rule names it
    marker = tree / ".snakemake" / "incomplete" / urlsafe_b64encode(meta.encode()).decode()
    marker.parent.mkdir(parents=True)
    marker.write_text("{}")
    report = status_json("--configfile", DEMO, tree / "seeds.yaml", "-d", tree, cwd=REPO)
    assert states(report)["train mlp/none/seed42"] == "stopped"
    assert states(report)["lr_search mlp/none/lr0.003"] == "finished"  # not marked


def test_a_failed_run_that_was_rerun_counts_as_running(tree):
    log = tree / "results/demo/logs/train/synthetic/mlp/none/seed44.log"
    write_log(log, [*log.read_text().splitlines(), "start", "resuming from x: epoch 2, step 0"])
    got = states(status_json("--results", tree / "results/demo", cwd=tree))
    assert got["train mlp/none/seed44"] == "running"


def test_status_changes_no_file_takes_no_lock_and_runs_no_checkpoint_code(
    tree, real_checkpoint, status_cli
):
    # A checkpoint that would run code if loaded unsafely (pickle calls Path.touch on load).
    marker = tree / "code-ran"

    class Payload:
        def __reduce__(self):
            return pathlib.Path.touch, (marker,)

    ckpt = tree / "results/demo/scratch/runs/synthetic/cnn/bn/seed42.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({**real_checkpoint, "extra": Payload()}, ckpt)
    write_log(ckpt.parents[4] / "logs/train/synthetic/cnn/bn/seed42.log", ["start", epoch_line(4)])
    before = snapshot(tree)
    for args in (["--configfile", DEMO, tree / "seeds.yaml", "-d", tree, "--all"],
                 ["--results", tree / "results/demo", "--json"]):  # fmt: skip
        res = status_cli(*args, cwd=tree)
        assert res.returncode == 0, res.stderr
    assert snapshot(tree) == before  # no file added, removed or touched
    assert not marker.exists() and not (tree / ".snakemake").exists()
    got = states(status_json("--results", tree / "results/demo", cwd=tree))
    assert got["train cnn/bn/seed42"] == "running"  # from its log: ep 4, the checkpoint is unread


def test_mistakes_are_one_line_errors(tmp_path):
    res = status("--results", tmp_path / "nowhere", cwd=tmp_path)
    assert res.returncode == 2 and "results folder" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("seeds: [1, 1]\n")
    res = status("--configfile", bad, cwd=tmp_path)
    assert res.returncode == 2 and "config key 'seeds'" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = status("--results", tmp_path, "--resources", "gpu=x", cwd=tmp_path)
    assert res.returncode == 2 and "gpu=N" in res.stderr


def test_checkpoint_mid_epoch_counts_the_steps_done(tmp_path, real_checkpoint):
    path = tmp_path / "run.ckpt"
    mid = {"step": 3, "tensors": [torch.arange(270), torch.zeros(9), torch.tensor(0)]}
    torch.save({**real_checkpoint, "epoch": 1, "mid_epoch": mid, "elapsed": 8.0}, path)
    got = read_checkpoint_summary(path)
    assert got.done == pytest.approx(1 + 3 / 9) and got.elapsed_s == 8.0 and got.problem is None
    assert got.settings["epochs"] == 6
    path.write_bytes(path.read_bytes()[:1000])  # truncated: said so, not a crash
    got = read_checkpoint_summary(path)
    assert got.done is None and got.problem.startswith("unreadable ("), got
    assert read_checkpoint_summary(tmp_path / "absent.ckpt") is None


def test_a_checkpoint_of_another_format_is_reported_as_such(tree, real_checkpoint):
    ckpt = tree / "results/demo/scratch/runs/synthetic/cnn/none/seed42.ckpt"
    torch.save({**real_checkpoint, "format": 1}, ckpt)  # the one before fused jobs shared it
    assert read_checkpoint_summary(ckpt) == CheckpointSummary(problem="format 1, not 2")
    report = status_json("--results", tree / "results/demo", cwd=tree)
    run = next(r for r in report["runs"] if r["name"] == "synthetic/cnn/none/seed42")
    assert run["checkpoint_problem"] == "format 1, not 2" and run["done"] == 2  # from its log
    text = status("--results", tree / "results/demo", cwd=tree).stdout
    assert "Checkpoints not read, progress from the log (1):" in text
    assert "  train synthetic/cnn/none/seed42: format 1, not 2" in text


# `python -m normdrop.status` with every import of torch refused, as on a login node without it.
WITHOUT_TORCH = """
import runpy, sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"no module named {name!r} (blocked by the test)")

sys.meta_path.insert(0, NoTorch())
sys.argv[0] = "normdrop.status"
try:
    runpy.run_module("normdrop.status", run_name="__main__", alter_sys=True)
except SystemExit as done:
    assert "torch" not in sys.modules
    raise
"""


def test_status_runs_where_torch_cannot_be_imported(tree, train_env):
    results = tree / "results" / "demo"
    cmd = [sys.executable, "-c", WITHOUT_TORCH]
    run = dict(env=train_env, capture_output=True, text=True, timeout=300)
    res = subprocess.run([*cmd, "--results", results, "--json"], cwd=tree, **run)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    got = states(report)
    assert got["train mlp/none/seed43"] == "running" and got["train cnn/none/seed42"] == "stopped"
    runs = {r["name"]: r for r in report["runs"]}
    # The checkpoints are not read: progress from the logs' epoch lines, and the summary says why.
    assert runs["synthetic/mlp/none/seed43"]["done"] == 3
    no_torch = "torch is not installed here: checkpoint not read"
    assert runs["synthetic/cnn/none/seed42"]["checkpoint_problem"] == no_torch
    grid = ["--configfile", DEMO, tree / "seeds.yaml", "-d", tree]
    res = subprocess.run([*cmd, *grid], cwd=REPO, **run)
    assert res.returncode == 0, res.stderr
    assert "1/3 done, 1 running (ep 3/6), 1 failed (ep 1/6)" in res.stdout


@pytest.mark.parametrize("study,train,search", [("batch_size", 60, 80), ("depth", 48, 64)])
def test_a_study_config_lists_its_swept_runs(study, train, search):
    # The same grid as the workflow's dry run (tests/test_studies.py): select and sweep applied.
    from normdrop.status import grid_runs, load_config

    runs = grid_runs(load_config([REPO / "studies" / f"{study}.yaml"]))
    kinds = pd.Series([r.kind for r in runs]).value_counts().to_dict()
    assert kinds == {"train": train, "lr_search": search}
    if study == "batch_size":
        assert {r.variant for r in runs} >= {"bn_bs8", "gn_bs128", "none_bs16"}


def test_a_fused_jobs_members_show_its_progress_from_its_checkpoint(
    tmp_path, tiny_data, tiny_config, cpu
):
    # A real fused job (seeds 42 and 43 of one cell, 43 diverging at once) stopped after its
    # 2nd of 4 epochs, its checkpoint and logs where the workflow puts them (layout).
    from normdrop import layout
    from normdrop.train import train_members

    results, cell = tmp_path / "results", dict(dataset="synthetic", model="mlp", variant="bn")
    ckpt = Path(layout.fused_checkpoint(results, "train", **cell))
    logs = [Path(layout.run_log(results, "train", **cell, seed=s)) for s in (42, 43)]

    def member_log(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        return lambda line: path.open("a").write(line + "\n")

    def stop(line):
        if "epoch 3/" in line:  # the checkpoint of epoch 2's end is on disk
            raise _StopAfter

    cfgs = [tiny_config(epochs=4, seed=42), tiny_config(epochs=4, seed=43, lr=1e20)]
    with pytest.raises(_StopAfter):
        train_members(cfgs, load_prepared(tiny_data), cpu, ckpt, stop, None, None,
                      [member_log(p) for p in logs])  # fmt: skip
    summary = read_checkpoint_summary(ckpt)
    assert summary.done == 2 and [m.diverged_epoch for m in summary.members] == [None, 1]
    assert [m.settings["seed"] for m in summary.members] == [42, 43]

    runs = {r["key"]: r for r in status_json("--results", results, cwd=tmp_path)["runs"]}
    assert runs["seed42"]["state"] == "running" and runs["seed42"]["done"] == 2
    assert runs["seed42"]["epochs"] == 4 and runs["seed42"]["measured_s"] > 0
    assert runs["seed43"]["state"] == "diverged" and runs["seed43"]["diverged_epoch"] == 1
    old = time.time() - 3 * 3600  # killed 3 h ago: stopped, resumable
    for path in (ckpt, *logs):
        os.utime(path, (old, old))
    runs = {r["key"]: r for r in status_json("--results", results, cwd=tmp_path)["runs"]}
    assert runs["seed42"]["state"] == "stopped" and runs["seed42"]["done"] == 2
    job_log = Path(layout.fused_log(results, "train", **cell))  # the job's traceback lands here
    job_log.parent.mkdir(parents=True)
    job_log.write_text("RuntimeError: CUDA error: an illegal memory access\n")
    runs = {r["key"]: r for r in status_json("--results", results, cwd=tmp_path)["runs"]}
    assert runs["seed42"]["state"] == "failed" and runs["seed42"]["last_line"].startswith("Runt")
    text = status("--results", results, cwd=tmp_path).stdout
    assert "1/2 done (1 diverged), 1 failed (ep 2/4)" in text
