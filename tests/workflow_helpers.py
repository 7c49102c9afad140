"""Running the real Snakefile in a temporary directory, as a user would."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from normdrop.workflow_config import deep_merge  # noqa: F401  (tests import it from here)

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "workflow" / "demo.yaml"
RUN_FILES = ("steps.parquet", "epochs.parquet", "meta.json")  # a finished run's outputs

# The demo, made smaller still: 2 seeds, 3 epochs, a 1-epoch search. Same DAG shape.
FAST = {
    "seeds": [42, 43],
    "models": {
        "mlp": {"width": 32, "dropout_rate": 0.5},
        "cnn": {"width": 4, "dropout_rate": 0.3},
        "resnet20": {"width": 4, "dropout_rate": 0.3},
    },
    "data": {
        "synthetic": {
            "n_train": 300,
            "n_test": 100,
            "num_classes": 10,
            "channels": 3,
            "size": 16,
            "noise": 1.0,
            "seed": 0,
        }
    },
    "train": {"epochs": 3, "lr_milestones": [2]},
    "lr_search": {"epochs": 1},
}


def write_config(folder: Path, overrides: dict, name="override.yaml") -> Path:
    path = Path(folder) / name
    path.write_text(yaml.safe_dump(overrides))
    return path


def snakemake_cmd(workdir: Path, *args, configs=()) -> list[str]:
    """`snakemake` on the repo's Snakefile, with --directory `workdir` and demo + extra configs."""
    return [
        sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
        "--directory", str(workdir), "--configfile", str(REPO / "workflow" / "demo.yaml"),
        *map(str, configs), *args,
    ]  # fmt: skip


def snakemake(workdir: Path, *args, configs=(), timeout=900) -> subprocess.CompletedProcess:
    cmd = snakemake_cmd(workdir, *args, configs=configs)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


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
