"""The GPU path's settings, run on CPU: bf16 autocast, channels_last, torch.compile, deterministic
kernels, and the refusal of CUDA graphs without CUDA. Each short run must finish with finite
losses and per-epoch metrics close to the fp32 / contiguous / eager run; each tolerance below is
set from the differences measured on this machine (torch 2.14.0 CPU), with a margin."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml

from normdrop.config import ConfigError, run_config
from normdrop.data import load_prepared
from normdrop.models import build_model
from normdrop.train import capture_train_step, main, resolve_execution, train
from normdrop.workflow_config import validate_workflow_config

REPO = Path(__file__).resolve().parents[1]

COLS = ["train_loss_mean", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"]


@pytest.fixture(scope="module")
def run(cpu, tiny_config, quiet):
    def run(data, **settings):
        result = train(tiny_config(**settings), data, cpu, **quiet)
        assert result.status == "completed"
        assert torch.isfinite(torch.tensor(result.steps["loss"].to_numpy())).all()
        return result

    return run


def rel(a: pd.Series, b: pd.Series) -> float:
    return float(((a - b).abs() / b.abs()).max())


def gap(a: pd.Series, b: pd.Series) -> float:
    return float((a - b).abs().max())


CNN = dict(model="cnn", width=4, norm="batch", dropout_rate=0.3)  # 3 epochs of 9 steps, 270 images


def test_bf16_autocast_stays_close_to_fp32(tiny_data, run):
    # bf16 keeps 8 bits of mantissa (~0.4% relative rounding per op); weights, optimizer state
    # and loss stay fp32, and the dropout masks are the same draws. Measured over 3 epochs: mean
    # loss within 0.38% relative, val loss within 0.13%, train accuracy within 2 of 270 images,
    # validation accuracy equal. Trajectories drift apart with every step, so the bounds are a few
    # times that: 2% relative loss, 8 images train accuracy, 3 of 30 images validation accuracy.
    data = load_prepared(tiny_data)
    fp32, bf16 = run(data, precision="fp32", **CNN), run(data, precision="bf16", **CNN)
    a, b = bf16.epochs[COLS], fp32.epochs[COLS]
    assert bf16.execution["precision"] == "bf16" and fp32.execution["precision"] == "fp32"
    assert not a.equals(b)  # autocast really ran in bf16
    assert rel(a.train_loss_mean, b.train_loss_mean) < 0.02
    assert rel(a.val_loss, b.val_loss) < 0.02
    assert gap(a.train_acc, b.train_acc) <= 8 / 270
    assert gap(a.val_acc, b.val_acc) <= 3 / 30


def test_channels_last_gives_the_contiguous_numbers(tiny_data, run):
    # Without dropout only the summation order of the convolutions differs: measured epoch 1
    # equal, then mean loss within 1.6e-4 relative and train accuracy within 1 image. Bounds: 1e-3
    # relative loss, 3 images. With dropout the masks differ as well (bernoulli_ fills the mask
    # in memory order, so a channels_last activation gets other draws from the same seeded
    # stream): a statistically equivalent run, measured 3.6% apart in mean loss and 3 of 30
    # images in validation accuracy; there only the bounds of a different draw (10%, 6 of 30).
    data = load_prepared(tiny_data)
    no_drop = {**CNN, "dropout_rate": 0.0}
    cont = run(data, memory_format="contiguous", **no_drop)
    last = run(data, memory_format="channels_last", **no_drop)
    assert last.execution["memory_format"] == "channels_last"
    assert cont.execution["memory_format"] == "contiguous"
    a, b = last.epochs[COLS], cont.epochs[COLS]
    assert rel(a.train_loss_mean, b.train_loss_mean) < 1e-3
    assert rel(a.val_loss, b.val_loss) < 1e-3
    assert gap(a.train_acc, b.train_acc) <= 3 / 270

    a = run(data, memory_format="channels_last", **CNN).epochs[COLS]
    b = run(data, memory_format="contiguous", **CNN).epochs[COLS]
    assert not a.equals(b)  # the format reached the activations (other dropout masks)
    assert rel(a.train_loss_mean, b.train_loss_mean) < 0.10
    assert gap(a.val_acc, b.val_acc) <= 6 / 30


def test_auto_settings_on_cpu_are_fp32_contiguous_eager(monkeypatch, cpu, tiny_config):
    ex = resolve_execution(tiny_config(), cpu)
    assert ex.describe() == {
        "precision": "fp32",
        "memory_format": "contiguous",
        "cuda_graphs": False,
        "adam": "default",
        "compile": False,
        "deterministic": False,
    }
    # A GPU with bf16 units (compute capability >= 8), faked: resolving touches no GPU otherwise.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    cuda = resolve_execution(tiny_config(), torch.device("cuda"))
    assert (cuda.bf16, cuda.memory_format, cuda.cuda_graphs, cuda.fused_adam) == (
        True,
        torch.channels_last,
        False,  # auto = off until measured on a GPU
        True,
    )


@pytest.mark.slow
def test_compile_gives_the_eager_numbers(tiny_data, run):
    # torch.compile (inductor, CPU) of the MLP with BatchNorm, without dropout (inductor draws
    # its dropout masks with its own Philox generator, seeded from the run's: other masks, as
    # with channels_last). Measured: every epoch's metrics bitwise equal to eager; bound 1e-4
    # relative, as another inductor version may fuse the sums differently. One tiny model: the
    # compilation alone takes 20-35 s on a loaded core.
    data = load_prepared(tiny_data)
    settings = dict(model="mlp", norm="batch", dropout_rate=0.0)
    eager, compiled = run(data, **settings), run(data, compile=True, **settings)
    assert compiled.execution["compile"] is True
    a, b = compiled.epochs[COLS], eager.epochs[COLS]
    assert rel(a.train_loss_mean, b.train_loss_mean) < 1e-4
    assert rel(a.val_loss, b.val_loss) < 1e-4
    assert gap(a.val_acc, b.val_acc) == 0


@pytest.fixture
def restore_determinism():
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1:]


def test_deterministic_runs_are_identical(tiny_data, restore_determinism, monkeypatch, run):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    data = load_prepared(tiny_data)
    a = run(data, deterministic=True, **CNN)
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    b = run(data, deterministic=True, **CNN)
    pd.testing.assert_frame_equal(a.epochs[COLS], b.epochs[COLS])
    pd.testing.assert_frame_equal(a.steps, b.steps)
    # CPU kernels are deterministic already: the setting changes no number here.
    c = run(data, **CNN)
    pd.testing.assert_frame_equal(a.epochs[COLS], c.epochs[COLS])
    assert a.execution["deterministic"] and not c.execution["deterministic"]


def test_cuda_graphs_on_without_cuda_is_refused_in_one_line(
    tiny_data, tmp_path, capsys, cpu, tiny_config, quiet
):
    with pytest.raises(ConfigError, match="'cuda_graphs' = 'on' needs a CUDA device, not cpu"):
        train(tiny_config(cuda_graphs="on"), load_prepared(tiny_data), cpu, **quiet)
    code = main([
        "--data", str(tiny_data), "--dataset", "synthetic", "--model", "mlp", "--width", "8",
        "--out", str(tmp_path / "run"), "--device", "cpu", "--cuda-graphs", "on",
    ])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'cuda_graphs' = 'on' needs a CUDA device" in err[0], err
    assert not (tmp_path / "run").exists()


def test_execution_settings_come_from_the_config():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    x = config["execution"]
    assert (x["memory_format"], x["cuda_graphs"], x["deterministic"]) == ("auto", "auto", False)
    cfg = run_config(config, "cifar10", "cnn", "bn", 42)
    assert (cfg.memory_format, cfg.cuda_graphs, cfg.deterministic) == ("auto", "auto", False)
    # YAML reads a bare `on` as true: both spellings mean on.
    for on in (True, "on"):
        config["execution"]["cuda_graphs"] = on
        validate_workflow_config(config)
        assert run_config(config, "cifar10", "cnn", "bn", 42).cuda_graphs == "on"
    config["execution"]["memory_format"] = "nhwc"
    with pytest.raises(ConfigError, match="execution.memory_format': 'nhwc' is not allowed; allo"):
        validate_workflow_config(config)
    # None of them changes which run it is (same checkpoint, same cached outputs).
    base = run_config(yaml.safe_load((REPO / "config.yaml").read_text()), "cifar10", "cnn", "bn", 4)
    other = dataclasses.replace(
        base, memory_format="channels_last", cuda_graphs="on", deterministic=True
    )
    assert base.settings_hash() == other.settings_hash()


class FakeCuda:
    """torch.cuda's streams, graphs and RNG state, faked on the CPU: 'capture' runs the step once
    like the warm-up does, 'replay' only counts. Enough to test what `capture_train_step` does
    around the capture: warm-up and capture must leave weights, BN statistics, Adam state and RNG
    exactly as they found them."""

    def __init__(self, monkeypatch):
        self.replays = 0
        fake = self

        class Stream:
            def __init__(self, device=None):
                pass

            def wait_stream(self, other):
                pass

        class Graph:
            def replay(self):
                fake.replays += 1

        for name, value in {
            "Stream": Stream,
            "current_stream": lambda device=None: Stream(),
            "stream": lambda s: contextlib.nullcontext(),
            "CUDAGraph": Graph,
            "graph": lambda g: contextlib.nullcontext(),
            "get_rng_state": lambda device=None: torch.get_rng_state(),
            "set_rng_state": lambda state, device=None: torch.set_rng_state(state),
        }.items():
            monkeypatch.setattr(torch.cuda, name, value)


def _small_run(steps_before: int):
    """A BN + dropout CNN, its Adam, a step function like train()'s, `steps_before` steps taken."""
    torch.manual_seed(0)
    model = build_model("cnn", (3, 16, 16), 4, 4, "batch", 0.3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(x, y):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach(), (logits.argmax(1) == y).sum()

    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 4, (8,), generator=g))
               for _ in range(steps_before + 3)]  # fmt: skip
    for x, y in batches[:steps_before]:
        step(x, y)
    return model, optimizer, step, batches[steps_before:]


@pytest.mark.parametrize("steps_before", [0, 2])  # a fresh run; a resumed one with Adam state
def test_graph_capture_leaves_the_run_where_it_was(monkeypatch, steps_before, cpu):
    model, optimizer, step, batches = _small_run(steps_before)
    reference = [step(x, y)[0] for x, y in batches]
    ref_state = {k: v.clone() for k, v in model.state_dict().items()}

    fake = FakeCuda(monkeypatch)
    model, optimizer, step, batches = _small_run(steps_before)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graph_step = capture_train_step(
        step, model, optimizer, (8, 3, 16, 16), torch.contiguous_format, cpu
    )
    for k, v in model.state_dict().items():  # warm-up and capture undone, in place
        assert torch.equal(v, before[k]), k
    got = [step(x, y)[0] for x, y in batches]  # then the same steps, the same dropout masks
    assert torch.equal(torch.stack(got), torch.stack(reference))
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref_state[k]), k

    x, y = batches[0]
    loss, correct = graph_step(x, y)  # copies the batch into the static buffers, replays
    assert fake.replays == 1 and loss.shape == () and correct.dtype == torch.long
