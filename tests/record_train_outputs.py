"""Record the outputs of fixed CPU training runs, or compare them with an earlier record: the
check that a refactoring of normdrop.train changed no number (issue 15 item 3).

    PYTHONPATH=src python tests/record_train_outputs.py /tmp/before          # on the old commit
    PYTHONPATH=src python tests/record_train_outputs.py /tmp/after /tmp/before  # on the new one

Runs (tiny synthetic data, about 20 s on one core): MLP+BN+dropout, CNN+BN+dropout, ResNet-20,
a GroupNorm CNN with crop_flip, a diverging run, a run stopped after an epoch and resumed, one
stopped at the end of an epoch's last mid-epoch save, one stopped at a real mid-epoch point (the
25th checkpoint write), and the CLI end to end. Every column of epochs.parquet and steps.parquet
but wall_time_s, the log lines (times cut), the resumes and meta.json (times and revision cut)
must be equal, exactly. Results are machine-specific: compare records of one machine only.
Not collected by pytest (no test_ prefix)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures.training import TRAIN_ENV, tiny_config, train_cli  # noqa: E402

from normdrop.data import SyntheticSpec, download, load_prepared, prepare  # noqa: E402
from normdrop.train import train  # noqa: E402

CPU, TIME = torch.device("cpu"), ["wall_time_s"]
RUNS = {
    "mlp": dict(
        model="mlp", width=32, norm="batch", dropout_rate=0.2, epochs=4, lr_milestones=(2,)
    ),
    "cnn": dict(
        model="cnn",
        width=8,
        norm="batch",
        dropout_rate=0.3,
        epochs=4,
        lr_milestones=(3,),
        batch_size=16,
    ),
    "resnet20": dict(
        model="resnet20", width=4, norm="batch", dropout_rate=0.1, epochs=2, lr_milestones=(1,)
    ),
    "cnn_crop": dict(
        model="cnn",
        width=4,
        norm="group",
        dropout_rate=0.3,
        epochs=2,
        lr_milestones=(1,),
        augment="crop_flip",
    ),
    "diverge": dict(lr=1e20),
}


class Interrupt(Exception):
    pass


def save(out: Path, name: str, r, lines: list[str]) -> None:
    r.epochs.drop(columns=TIME).to_parquet(out / f"{name}.epochs.parquet")
    r.steps.to_parquet(out / f"{name}.steps.parquet")
    info = dict(
        status=r.status,
        diverged=r.diverged_epoch,
        train_eval_acc=r.train_eval_acc,
        params=r.param_count,
        resumes=r.resumes,
        execution=r.execution,
        log=[line.split(" [")[0] for line in lines],
    )
    (out / f"{name}.json").write_text(json.dumps(info, indent=1, default=str))


def stopped_then_resumed(out, name, cfg, data, stop) -> None:
    """`cfg` trained with a checkpoint until `stop` raises Interrupt, then resumed to the end."""
    ckpt = out / f"{name}.ckpt"
    ckpt.unlink(missing_ok=True)
    with contextlib.suppress(Interrupt):
        stop(lambda log: train(cfg, data, CPU, checkpoint=ckpt, log=log))
    lines: list[str] = []
    r = train(cfg, data, CPU, checkpoint=ckpt, log=lines.append)
    save(out, name, r, [line.replace(str(ckpt), "CK") for line in lines])
    ckpt.unlink(missing_ok=True)


def at_line(prefix):
    def stop(run):
        def log(line):
            if line.startswith(prefix):
                raise Interrupt

        run(log)

    return stop


def at_checkpoint_write(n):
    """Raise after the n-th checkpoint write (wherever train's writer lives)."""

    def stop(run):
        try:
            import normdrop.checkpoints as module
        except ImportError:  # before the split
            import normdrop.train as module
        real, calls = module.atomic_write_torch, []

        def counting(path, obj):
            real(path, obj)
            calls.append(1)
            if len(calls) == n:
                raise Interrupt

        module.atomic_write_torch = counting
        try:
            run(lambda line: None)
        finally:
            module.atomic_write_torch = real

    return stop


def record(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    root = out / "data"
    spec = SyntheticSpec(n_train=300, n_test=100, num_classes=4, size=16, noise=0.8, seed=1)
    download("synthetic", root / "raw", spec)
    tiny = prepare("synthetic", root / "raw", root / "synthetic.pt", val_fraction=0.1)
    data = load_prepared(tiny)
    for name, settings in RUNS.items():
        lines: list[str] = []
        save(out, name, train(tiny_config(**settings), data, CPU, log=lines.append), lines)
    cnn = tiny_config(**RUNS["cnn"])
    stopped_then_resumed(out, "resume_epoch", cnn, data, at_line("epoch 3/"))
    every_step = dataclasses.replace(cnn, checkpoint_every_s=0.0)
    stopped_then_resumed(out, "resume_mid", every_step, data, at_line("epoch 2/"))
    stopped_then_resumed(out, "resume_mid7", every_step, data, at_checkpoint_write(25))

    cli = out / "cli"
    res = subprocess.run(
        train_cli(tiny, cli, "--epochs", "3", "--lr-milestones", "2"),
        env=TRAIN_ENV,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    meta = json.loads((cli / "meta.json").read_text())
    paths = ["data_file", "tensorboard_dir"]  # under the record's own folder
    for key in ["wall_time_s", "finished_at", "started_at", "git_revision", *paths]:
        meta.pop(key, None)
    (out / "cli.meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    pd.read_parquet(cli / "epochs.parquet").drop(columns=TIME).to_parquet(
        out / "cli.epochs.parquet"
    )
    pd.read_parquet(cli / "steps.parquet").to_parquet(out / "cli.steps.parquet")


def compare(out: Path, ref: Path) -> int:
    differing = 0
    files = sorted(p for p in ref.iterdir() if p.is_file() and p.suffix in (".parquet", ".json"))
    for f in files:
        if f.suffix == ".parquet":
            try:
                pd.testing.assert_frame_equal(
                    pd.read_parquet(f), pd.read_parquet(out / f.name), check_exact=True
                )
            except AssertionError as err:
                differing += 1
                print("DIFF", f.name, err)
        elif f.read_bytes() != (out / f.name).read_bytes():
            differing += 1
            print("DIFF", f.name)
    print(f"files compared: {len(files)}, differing: {differing}")
    return differing


if __name__ == "__main__":
    record(Path(sys.argv[1]))
    if len(sys.argv) > 2:
        raise SystemExit(1 if compare(Path(sys.argv[1]), Path(sys.argv[2])) else 0)
