"""TensorBoard tracking: the event files a run writes, read back with TensorBoard's own reader and
over HTTP from a real `tensorboard` server, equal epochs.parquet, also after a kill and resume."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

from normdrop.config import ConfigError
from normdrop.data import load_prepared
from normdrop.tracking import FINAL, SCALARS, TensorBoardTracker, hparam_value
from normdrop.train import main, train
from normdrop.workflow_config import load_config, validate_workflow_config


def scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] as TensorBoard's reader sees the folder (purges applied)."""
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def logged_hparams(logdir) -> dict:
    """The settings the HParams view shows for the run in `logdir`."""
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")[hparams_metadata.SESSION_START_INFO_TAG]
    start = hparams_metadata.parse_session_start_info_plugin_data(content)
    return {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}


def assert_equals_epochs(logged: dict, epochs: pd.DataFrame) -> None:
    """Every per-epoch tag holds each epoch once, with the record's value (as float32: a
    TensorBoard scalar is a float32)."""
    for column, tag in SCALARS.items():
        steps, values = zip(*logged[tag], strict=True)
        assert list(steps) == epochs["epoch"].tolist(), tag
        np.testing.assert_array_equal(np.float32(values), epochs[column].to_numpy(np.float32))


@pytest.fixture(scope="module")
def run(train_cli, train_env):
    def run(out, tiny_data, *extra):
        res = subprocess.run(
            train_cli(tiny_data, out, *extra), env=train_env, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        return pd.read_parquet(out / "epochs.parquet"), json.loads((out / "meta.json").read_text())

    return run


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_data, run):
    """A CLI run (8 epochs) with its event files in a tree of its own, as the workflow makes."""
    root = tmp_path_factory.mktemp("finished")
    tree = root / "tensorboard"
    logdir = tree / "runs" / "synthetic" / "cnn" / "bn_dropout" / "seed42"
    epochs, meta = run(root / "run", tiny_data, "--tensorboard-dir", str(logdir))
    return tree, logdir, epochs, meta


def test_event_files_equal_epochs_parquet_and_hold_the_settings(finished):
    tree, logdir, epochs, meta = finished
    logged = scalars(logdir)
    assert_equals_epochs(logged, epochs)
    last = epochs.iloc[-1]
    for column, tag in FINAL.items():  # the HParams view's metrics, at the last epoch
        expected = meta["train_eval_acc"] if column == "train_eval_acc" else last[column]
        assert logged[tag] == [(8, pytest.approx(expected, rel=1e-6))]
    expected = {k: hparam_value(v) for k, v in meta["settings"].items()}
    assert logged_hparams(logdir) == pytest.approx(expected)  # every setting, as HParams shows
    assert meta["tensorboard_dir"] == str(logdir)


def test_by_hand_run_writes_under_out_and_no_tensorboard_writes_nothing(
    tmp_path, tiny_data, train_cli
):
    def by_hand(out, *extra):  # the CLI in this process: no interpreter start per run
        assert main(train_cli(tiny_data, out, "--epochs", "2", "--lr-milestones", *extra)[3:]) == 0
        return pd.read_parquet(out / "epochs.parquet"), json.loads((out / "meta.json").read_text())

    epochs, meta = by_hand(tmp_path / "a")
    assert_equals_epochs(scalars(tmp_path / "a" / "tensorboard"), epochs)
    _, off = by_hand(tmp_path / "b", "--no-tensorboard")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "epochs.parquet", "meta.json", "steps.parquet",
    ]  # fmt: skip
    assert off["tensorboard_dir"] is None
    assert off["settings_hash"] == meta["settings_hash"]  # tracking is not a run setting


class Crash(Exception):
    pass


class CrashAfter(TensorBoardTracker):
    """Dies right after writing epoch `epoch`'s points, before that epoch's checkpoint: the points
    a killed session leaves behind beyond its last checkpoint."""

    def __init__(self, logdir, epoch):
        super().__init__(logdir)
        self.crash_epoch = epoch

    def log_epoch(self, row):
        super().log_epoch(row)
        if row["epoch"] == self.crash_epoch:
            self.writer.flush()
            raise Crash


@pytest.fixture(scope="module")
def crashed(tmp_path_factory, tiny_data, tiny_config, cpu, quiet):
    """A run (in-process) that dies after logging epoch 4 of 5, before saving it; then resumed."""
    root = tmp_path_factory.mktemp("crashed")
    data, ckpt, logdir = (
        load_prepared(tiny_data),
        root / "run.ckpt",
        root / "tensorboard" / "crashed",
    )
    cfg = tiny_config(epochs=5, lr_milestones=(3,))
    with pytest.raises(Crash):
        train(cfg, data, cpu, checkpoint=ckpt, tracker=CrashAfter(logdir, 4), **quiet)
    assert torch.load(ckpt, weights_only=False)["epoch"] == 3  # epoch 4 logged, not saved
    logged_before = [s for s, _ in scalars(logdir)["val/acc"]]
    resumed = train(cfg, data, cpu, checkpoint=ckpt, tracker=TensorBoardTracker(logdir), **quiet)
    assert resumed.resumes == [{"epoch": 3, "step": 0}]
    return root / "tensorboard", logdir, resumed.epochs, logged_before


def test_points_written_after_the_last_checkpoint_are_not_duplicated(
    crashed, tmp_path, tiny_data, tiny_config, cpu, quiet
):
    _, logdir, epochs, logged_before = crashed
    assert logged_before == [1, 2, 3, 4]
    assert_equals_epochs(scalars(logdir), epochs)  # epoch 4 once: the resumed session's value

    # A fresh start in the same folder (no checkpoint) replaces everything the folder held.
    again = tmp_path / "again"
    subprocess.run(["cp", "-r", str(logdir), str(again)], check=True)
    cfg = tiny_config(epochs=2, lr_milestones=())
    fresh = train(cfg, load_prepared(tiny_data), cpu, tracker=TensorBoardTracker(again), **quiet)
    assert_equals_epochs(scalars(again), fresh.epochs)
    assert logged_hparams(again)["epochs"] == 2  # the new settings, not the old run's 5


class CrashAtTheEnd(TensorBoardTracker):
    """Dies after writing the final values: killed after training, before meta.json."""

    def finish(self, settings, final):
        super().finish(settings, final)
        raise Crash


def test_a_run_resumed_after_its_last_epoch_logs_its_final_values_once(
    tmp_path, tiny_data, tiny_config, cpu, quiet
):
    data, ckpt, logdir = load_prepared(tiny_data), tmp_path / "run.ckpt", tmp_path / "tb"
    cfg = tiny_config(epochs=3, lr_milestones=(2,))
    with pytest.raises(Crash):
        train(cfg, data, cpu, checkpoint=ckpt, tracker=CrashAtTheEnd(logdir), **quiet)
    again = train(cfg, data, cpu, checkpoint=ckpt, tracker=TensorBoardTracker(logdir), **quiet)
    assert again.resumes == [{"epoch": 3, "step": 0}]  # nothing left to train
    logged = scalars(logdir)
    assert_equals_epochs(logged, again.epochs)
    assert all(len(logged[tag]) == 1 for tag in FINAL.values()), logged


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, tiny_data, train_cli, train_env, run):
    """A CLI run SIGKILLed after its epoch-3 checkpoint (checkpoints every step), then rerun."""
    root = tmp_path_factory.mktemp("resumed")
    out, ckpt = root / "run", root / "run.ckpt"
    logdir = root / "tensorboard" / "runs" / "resumed"
    extra = [
        "--checkpoint",
        str(ckpt),
        "--checkpoint-every-s",
        "0",
        "--tensorboard-dir",
        str(logdir),
    ]
    proc = subprocess.Popen(
        train_cli(tiny_data, out, *extra), env=train_env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while _checkpoint_epoch(ckpt) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_points = [s for s, _ in scalars(logdir)["val/acc"]]
    epochs, meta = run(out, tiny_data, *extra)
    return root / "tensorboard", logdir, epochs, meta, killed_points


def _checkpoint_epoch(path) -> int:
    try:
        return torch.load(path, weights_only=False)["epoch"]
    except Exception:  # not there yet, or being replaced
        return -1


def test_killed_and_resumed_run_logs_each_epoch_once(resumed):
    _, logdir, epochs, meta, killed_points = resumed
    assert meta["resumes"] and meta["resumes"][0]["epoch"] >= 3
    assert killed_points[:3] == [1, 2, 3]  # the killed session had logged (and flushed) these
    assert_equals_epochs(scalars(logdir), epochs)
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 2  # one file per session


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_tensorboard_server_serves_the_scalars_of_a_finished_tree(
    tmp_path, finished, resumed, crashed, train_env
):
    """The real `tensorboard` on loopback over a tree holding a finished run and two resumed ones
    (one with points to supersede): each run's curve over HTTP equals its record."""
    tree = tmp_path / "tensorboard"
    for source in (finished[0], resumed[0], crashed[0]):  # one tree, as <results_dir>/tensorboard
        subprocess.run(["cp", "-r", f"{source}/.", str(tree)], check=True)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(tree), "--host", "127.0.0.1",
         "--port", str(port), "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=train_env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?"
    try:
        for run_name, epochs in (
            ("runs/synthetic/cnn/bn_dropout/seed42", finished[2]),
            ("runs/resumed", resumed[2]),
            ("crashed", crashed[2]),
        ):
            query = urllib.parse.urlencode({"run": run_name, "tag": "val/acc"})
            deadline, points = time.monotonic() + 90, None
            while time.monotonic() < deadline:  # the server loads the tree after it starts
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                try:
                    points = _get_json(base + query)
                    if len(points) >= len(epochs):
                        break
                except (OSError, ValueError):  # not listening yet, or the run not loaded
                    pass
                time.sleep(0.5)
            assert points, f"no scalars for {run_name} within 90 s"
            steps = [step for _, step, _ in points]  # [wall_time, step, value] each
            assert steps == epochs["epoch"].tolist()
            np.testing.assert_array_equal(
                np.float32([v for *_, v in points]), epochs["val_acc"].to_numpy(np.float32)
            )
        # The HParams view: every setting a column, the final metrics to compare runs by.
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/data/plugin/hparams/experiment",
            data=json.dumps({"experimentName": ""}).encode(),
            headers={"Content-Type": "application/json"},
        )
        experiment = _get_json(request)
        assert {h["name"] for h in experiment["hparamInfos"]} == set(finished[3]["settings"])
        assert {m["name"]["tag"] for m in experiment["metricInfos"]} >= set(FINAL.values())
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.mark.slow  # a workflow run
def test_workflow_writes_one_tree_and_turning_it_off_retrains_nothing(
    tmp_path, write_config, fast_config, snakemake
):
    """The grid's jobs write into <results_dir>/tensorboard, mirroring the run paths; with
    `tracking.tensorboard: false` the jobs still to run write none, and finished ones stay done."""
    fast = write_config(tmp_path, fast_config)
    candidate = "synthetic/mlp/bn/lr0.01"
    res = snakemake(
        tmp_path, "--cores", "1", f"results/demo/lr_search/{candidate}/meta.json", configs=[fast]
    )
    assert res.returncode == 0, res.stderr[-2000:]
    logdir = tmp_path / "results" / "demo" / "tensorboard" / "lr_search" / candidate
    epochs = pd.read_parquet(
        tmp_path / "results" / "demo" / "lr_search" / candidate / "epochs.parquet"
    )
    assert_equals_epochs(scalars(logdir), epochs)

    off = write_config(tmp_path, {"tracking": {"tensorboard": False}}, name="off.yaml")
    target = "results/demo/runs/synthetic/mlp/bn/seed42/meta.json"
    res = snakemake(tmp_path, "-n", "-p", "--cores", "1", target, configs=[fast, off])
    assert res.returncode == 0, res.stderr[-2000:]
    commands = [line for line in res.stdout.splitlines() if "-m normdrop.train" in line]
    assert len(commands) == 2  # the other candidate and the run: lr0.01 is not retrained
    assert (
        "--tensorboard-dir results/demo/tensorboard/runs/synthetic/mlp/bn/seed42 " in commands[-1]
    )
    # The switch travels in the environment (NORMDROP_TRACKING), so the jobs run with it off
    # write no event files, and the finished candidate keeps its own.
    finished = (tmp_path / "results" / "demo" / "lr_search" / candidate / "meta.json").stat()
    res = snakemake(tmp_path, "--cores", "1", target, configs=[fast, off])
    assert res.returncode == 0, res.stderr[-2000:]
    tensorboard = tmp_path / "results" / "demo" / "tensorboard"
    assert not (tensorboard / "runs").exists()
    assert sorted(p.name for p in (tensorboard / "lr_search/synthetic/mlp/bn").iterdir()) == [
        "lr0.01"
    ]
    again = (tmp_path / "results" / "demo" / "lr_search" / candidate / "meta.json").stat()
    assert again.st_mtime_ns == finished.st_mtime_ns


def test_tracking_setting_is_checked_by_the_schema():
    config = load_config([])
    assert config["tracking"] == {"tensorboard": True}  # on by default
    config["tracking"]["tensorboard"] = "yes"
    with pytest.raises(ConfigError, match=r"config key 'tracking.tensorboard': 'yes' is not of"):
        validate_workflow_config(config)


def test_seed_averaged_curves_are_runs_of_their_own(tmp_path, make_summary):
    """The aggregate's mean curves (tensorboard/mean/<cell>/{mean,mean+sd,mean-sd}), read back
    with TensorBoard's reader, equal pandas' mean and SD over the seeds at every epoch; a
    diverged seed's non-finite epoch is left out."""
    from normdrop import layout
    from normdrop.tracking import MEAN_STATS, write_mean_curves

    diverged = (("synthetic", "mlp", "none", 43),)
    epochs = make_summary(tmp_path / "summary", ("synthetic",), ("mlp",), diverged=diverged)[
        "epochs"
    ]
    written = write_mean_curves(epochs, tmp_path)
    assert len(written) == 4 * len(MEAN_STATS)  # 4 variants
    for variant in ("none", "bn"):
        sub = epochs[epochs["variant"] == variant].replace([np.inf, -np.inf], np.nan)
        by_epoch = sub.groupby("epoch")["train_loss_mean"]
        expected = {"mean": by_epoch.mean()}
        expected["mean+sd"] = by_epoch.mean() + by_epoch.std()
        expected["mean-sd"] = by_epoch.mean() - by_epoch.std()
        cell = dict(dataset="synthetic", model="mlp", variant=variant)
        for stat, series in expected.items():
            logged = scalars(layout.tensorboard_mean_dir(tmp_path, stat, **cell))
            steps, values = zip(*logged["train/loss_mean"], strict=True)
            assert list(steps) == series.index.tolist()
            np.testing.assert_allclose(values, series.to_numpy(), rtol=1e-6)  # float32
        assert set(logged) == set(SCALARS.values())
    # again: the earlier files are replaced, not added to
    write_mean_curves(epochs, tmp_path)
    mean_dir = layout.tensorboard_mean_dir(tmp_path, "mean", **cell)
    assert len(list(Path(mean_dir).glob("events.out.tfevents.*"))) == 1
