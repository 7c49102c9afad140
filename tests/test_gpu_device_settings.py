"""Which GPU a run leases and the settings it gets there, each tested on CPU with fakes standing
in for CUDA (issue 16's defects 1, 3, 4, 5 and 6): the lease without nvidia-smi, `--device
cuda:N` with a lease, `precision: auto`, CUDA graphs below the oldest tested torch, and ResNet-20's
global pooling under deterministic mode. Each test asserts what the run or the process does (which
GPU it leases, which settings it resolves), not which function was called; each failed on a041c63
(HANDOFF-train.md has the evidence)."""

from __future__ import annotations

import logging
import os

import pytest
import torch
import torch.nn.functional as F

import normdrop.train as train_module
from normdrop import gpu_lease
from normdrop.config import ConfigError
from normdrop.models import build_model
from normdrop.train import main, resolve_execution

CUDA = torch.device("cuda")


# --------------------------------------------------------------------------- 1: leases
class FakeNVML:
    """libnvidia-ml's three calls, for a driver that sees `count` GPUs."""

    def __init__(self, count: int):
        self.count = count

    def nvmlInit_v2(self):
        return 0

    def nvmlDeviceGetCount_v2(self, ref):
        ref._obj.value = self.count
        return 0

    def nvmlShutdown(self):
        return 0


@pytest.fixture
def no_nvidia_smi(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    return {"PATH": str(empty)}  # CUDA_VISIBLE_DEVICES unset, nvidia-smi not on PATH


def test_lease_without_nvidia_smi_counts_the_gpus_with_nvml(tmp_path, monkeypatch, no_nvidia_smi):
    monkeypatch.setattr(gpu_lease, "_load_nvml", lambda: FakeNVML(2), raising=False)
    env_a, env_b = dict(no_nvidia_smi), dict(no_nvidia_smi)
    a = gpu_lease.setup_device_env(tmp_path / "locks", 1, env=env_a)
    b = gpu_lease.setup_device_env(tmp_path / "locks", 1, env=env_b)
    try:
        assert a is not None and b is not None  # two processes, two leases, not both on GPU 0
        assert {env_a["CUDA_VISIBLE_DEVICES"], env_b["CUDA_VISIBLE_DEVICES"]} == {"0", "1"}
        assert env_a["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"  # NVML's order is the PCI bus order
    finally:
        for lease in (a, b):
            if lease is not None:
                lease.release()


def test_lease_that_cannot_count_the_gpus_hides_cuda(tmp_path, monkeypatch, caplog, no_nvidia_smi):
    driver = tmp_path / "nvidia-version"
    driver.write_text("NVRM version: fake\n")  # a driver is installed, NVML is not loadable
    monkeypatch.setattr(gpu_lease, "_load_nvml", lambda: None, raising=False)
    monkeypatch.setattr(gpu_lease, "NVIDIA_DRIVER_FILES", (str(driver),), raising=False)
    env = dict(no_nvidia_smi)
    with caplog.at_level(logging.INFO, logger=gpu_lease.__name__):
        assert gpu_lease.setup_device_env(tmp_path / "locks", 1, env=env) is None
    # CUDA sees no device: --device auto runs on the CPU, not unleased on GPU 0.
    assert env.get("CUDA_VISIBLE_DEVICES") == ""
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "cannot count the GPUs" in warnings[0].getMessage()


def test_machine_without_a_driver_is_a_cpu_run_without_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(gpu_lease, "_load_nvml", lambda: None)
    monkeypatch.setattr(gpu_lease, "NVIDIA_DRIVER_FILES", (str(tmp_path / "absent"),))
    env = {"PATH": str(tmp_path)}
    with caplog.at_level(logging.INFO, logger=gpu_lease.__name__):
        assert gpu_lease.setup_device_env(tmp_path / "locks", 1, env=env) is None
    assert "CUDA_VISIBLE_DEVICES" not in env
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# --------------------------------------------------------------------------- 4: --device cuda:N
class RunsOn(Exception):
    """Raised by the fake train_members(): where main() would have trained."""


@pytest.fixture
def fake_gpus(monkeypatch, tmp_path):
    """A host with GPUs 0, 1, 2 as far as main() can tell: CUDA counts CUDA_VISIBLE_DEVICES as
    it stands when asked (after the lease), and train_members() only reports its device."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")

    def count():
        return len(gpu_lease.visible_gpus(os.environ))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: count() > 0)
    monkeypatch.setattr(torch.cuda, "device_count", count)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)

    def fake_train(cfgs, data, device, *args, **kwargs):
        raise RunsOn(device, os.environ["CUDA_VISIBLE_DEVICES"])

    monkeypatch.setattr(train_module, "train_members", fake_train)  # main's one training call
    yield tmp_path
    for lease in list(gpu_lease._HELD):
        lease.release()


def cli_args(data, out, *extra):
    return [
        "--data", str(data), "--dataset", "synthetic", "--model", "mlp", "--width", "8",
        "--out", str(out), "--gpu-lock-dir", str(out.parent / "locks"), *extra,
    ]  # fmt: skip


def test_device_cuda_n_with_a_lease_trains_on_gpu_n(tiny_data, fake_gpus):
    with pytest.raises(RunsOn) as ran:
        main(cli_args(tiny_data, fake_gpus / "run", "--device", "cuda:1"))
    device, visible = ran.value.args
    assert visible == "1"  # the lease is on GPU 1, the one asked for
    assert device.type == "cuda" and device.index < torch.cuda.device_count()  # it exists


def test_device_cuda_n_beyond_the_gpus_is_refused_in_one_line(tiny_data, fake_gpus, capsys):
    with pytest.raises(SystemExit) as ended:
        main(cli_args(tiny_data, fake_gpus / "run", "--device", "cuda:5"))
    assert ended.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cuda:5" in err[0] and "3 visible GPU(s)" in err[0], err


# --------------------------------------------------------------------------- 5: precision auto
@pytest.mark.parametrize(("major", "bf16"), [(7, False), (8, True), (9, True)])
def test_precision_auto_is_bf16_only_on_gpus_with_bf16(monkeypatch, major, bf16, tiny_config):
    # A GPU of compute capability `major`; before 8 (V100, T4) bf16 is only emulated, which
    # torch.cuda.is_bf16_supported() counts as supported unless told not to.
    props = type("Props", (), {"major": major, "minor": 0, "name": f"sm_{major}0"})()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)
    assert resolve_execution(tiny_config(), CUDA).bf16 is bf16
    assert resolve_execution(tiny_config(precision="fp32"), CUDA).bf16 is False


# --------------------------------------------------------------------------- 3: torch version
def test_cuda_graphs_on_is_refused_below_the_oldest_tested_torch(monkeypatch, tiny_config):
    monkeypatch.setattr(torch, "__version__", "2.3.1+cu121")
    with pytest.raises(ConfigError, match=r"'cuda_graphs' = 'on' is tested from torch 2\.11"):
        resolve_execution(tiny_config(cuda_graphs="on"), CUDA)
    resolve_execution(tiny_config(cuda_graphs="off"), CUDA)  # eager runs stay allowed


# --------------------------------------------------------------------------- 6: ResNet-20's pool
def test_resnet20_global_pool_backward_is_mean_backward():
    # adaptive_avg_pool2d to 1x1 dispatches to mean() in aten (AdaptiveAveragePooling.cpp),
    # before any backend kernel: its backward is MeanBackward, which has a deterministic CUDA
    # implementation (no atomics), so deterministic mode raises no alert for it.
    model = build_model("resnet20", (3, 16, 16), 4, 4, "batch", 0.0)
    loss = F.cross_entropy(model(torch.randn(2, 3, 16, 16)), torch.tensor([0, 1]))
    names, todo, seen = set(), [loss.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(node.name())
        todo.extend(next_fn for next_fn, _ in node.next_functions)
    assert "MeanBackward1" in names
    assert not [n for n in names if "AdaptiveAvgPool" in n], names


# --------------------------------------------------------------------------- the gate, the lr
@pytest.mark.parametrize(("version", "allowed"), [("2.10.1+cu128", False), ("2.11.0+cu130", True)])
def test_cuda_graphs_gate_is_torch_2_11(monkeypatch, version, allowed, tiny_config):
    monkeypatch.setattr(torch, "__version__", version)
    cfg = tiny_config(cuda_graphs="on", precision="fp32")
    if allowed:
        assert resolve_execution(cfg, CUDA).cuda_graphs is True
    else:
        with pytest.raises(ConfigError, match=r"tested from torch 2\.11 on, not with 2\.10"):
            resolve_execution(cfg, CUDA)


# --------------------------------------------------------------------------- LSTM
@pytest.mark.parametrize(
    ("norm", "dropout", "refused"),
    [("none", 0.3, True), ("none", 0.0, False), ("layer", 0.3, False), ("batch", 0.3, False)],
)
def test_cuda_graphs_refuse_nn_lstm_with_dropout(norm, dropout, refused, tiny_config):
    cfg = tiny_config(
        model="lstm", norm=norm, dropout_rate=dropout, cuda_graphs="on", precision="fp32"
    )
    if not refused:
        assert resolve_execution(cfg, CUDA).cuda_graphs is True
        return
    with pytest.raises(ConfigError) as err:
        resolve_execution(cfg, CUDA)
    message = str(err.value)
    assert "\n" not in message and "lstm with norm none and dropout" in message
    assert message.endswith("use off")
    off = tiny_config(model="lstm", norm=norm, dropout_rate=dropout, cuda_graphs="off")
    assert resolve_execution(off, CUDA).cuda_graphs is False  # eager stays allowed


@pytest.mark.parametrize("norm", ["none", "layer", "batch"])
def test_lstm_recurrence_is_fp32_under_bf16_autocast_for_every_norm(norm):
    torch.manual_seed(0)
    model = build_model("lstm", (1, 16, 16), 4, 8, norm, 0.3).eval()
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen[name] = (output[0] if isinstance(output, tuple) else output).detach()

        return hook

    for name, module in model.named_modules():
        if name == "rnn" or name.endswith("w_h"):  # the recurrence, and its recurrent matmuls
            module.register_forward_hook(record(name))
    x = torch.randn(5, 1, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    autocast = dict(seen)
    model(x)
    assert logits.dtype == torch.bfloat16  # the head runs under autocast
    assert autocast and all(t.dtype == torch.float32 for t in autocast.values()), {
        k: t.dtype for k, t in autocast.items()
    }
    assert all(torch.equal(autocast[k], seen[k]) for k in seen)  # the fp32 recurrence itself
