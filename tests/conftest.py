"""Shared fixtures: a small synthetic dataset prepared through the real code path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
# Tests run on CPU, single-threaded per process, so that two processes can run side by side. Set
# before torch is first imported (below): its OpenMP runtime reads the variable when it loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

# The faulty workflow grid, built once per session for test_workflow_faults and test_aggregate.
from fault_grid import grid  # noqa: E402, F401

from normdrop.config import RunConfig  # noqa: E402
from normdrop.data import SyntheticSpec, download, prepare  # noqa: E402


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A prepared synthetic dataset: 300 train (270 after the split), 100 test, 3x16x16."""
    root = tmp_path_factory.mktemp("data")
    spec = SyntheticSpec(n_train=300, n_test=100, num_classes=4, size=16, noise=0.8, seed=1)
    download("synthetic", root / "raw", spec)
    return prepare("synthetic", root / "raw", root / "synthetic.pt", val_fraction=0.1)


# The training CLI as a subprocess: the package on the path, one thread so two run side by side.
TRAIN_ENV = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}


def train_cli(data: Path, out: Path, *extra) -> list[str]:
    """`python -m normdrop.train` for a small CNN with BN and dropout on `tiny_data`: 8 epochs of
    17 steps (about 1 s of training on one core), LR drop after epoch 6; `extra` overrides."""
    return [
        sys.executable, "-m", "normdrop.train", "--data", str(data),
        "--dataset", "synthetic", "--model", "cnn", "--width", "8", "--norm", "batch",
        "--dropout-rate", "0.3", "--epochs", "8", "--lr-milestones", "6", "--batch-size", "16",
        "--out", str(out), "--device", "cpu", *extra,
    ]  # fmt: skip


def run_cli(tmp_path, tiny_data, out, *extra, wait=True):
    cmd = train_cli(tiny_data, out, *extra)
    env = TRAIN_ENV
    if wait:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def train_args(data, out, ckpt) -> list[str]:
    """`normdrop.train.main`'s arguments: a 2-epoch MLP of width 8 on `data`, checkpoint `ckpt`."""
    return [
        "--data", str(data), "--dataset", "synthetic", "--model", "mlp", "--width", "8",
        "--epochs", "2", "--lr-milestones", "1", "--batch-size", "64", "--device", "cpu",
        "--out", str(out), "--checkpoint", str(ckpt),
    ]  # fmt: skip


def tiny_config(**overrides) -> RunConfig:
    settings = dict(
        dataset="synthetic", model="mlp", width=32, epochs=3, lr_milestones=(2,), batch_size=32
    )
    return RunConfig(**{**settings, **overrides})


# In-process training runs: on the CPU, without log lines; `curves` drops the timing column, so
# two runs' epoch records compare exactly.
CPU = torch.device("cpu")
QUIET = dict(log=lambda line: None)
TIMING = ["wall_time_s"]


def curves(result):
    return result.epochs.drop(columns=TIMING)
