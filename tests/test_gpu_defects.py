"""Issue 16's defects of the GPU path, each tested on CPU with fakes standing in for CUDA: the
lease without nvidia-smi (1), resuming across devices and executions (2), the lr under CUDA
graphs and the torch version (3), `--device cuda:N` with a lease (4), `precision: auto` (5) and
ResNet-20's global pooling under deterministic mode (6). Each test asserts what the run or the
process does (which GPU it leases, what a resumed run computes and records), not which function
was called; each failed on a041c63 (HANDOFF-train.md has the evidence)."""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import CPU, QUIET, tiny_config

import normdrop.train as train_module
from normdrop import gpu_lease
from normdrop.config import ConfigError
from normdrop.data import load_prepared
from normdrop.models import build_model
from normdrop.train import main, resolve_execution, train

CUDA = torch.device("cuda")


class Interrupt(Exception):
    pass


def stop_at(prefix: str, lines: list | None = None):
    """A `log` that raises at the line starting with `prefix`: the run ends there, as if killed,
    after that epoch's record and before its end-of-epoch checkpoint."""

    def log(line):
        if lines is not None:
            lines.append(line)
        if line.startswith(prefix):
            raise Interrupt

    return log


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
    """Raised by the fake train(): where main() would have trained."""


@pytest.fixture
def fake_gpus(monkeypatch, tmp_path):
    """A host with GPUs 0, 1, 2 as far as main() can tell: CUDA counts CUDA_VISIBLE_DEVICES as
    it stands when asked (after the lease), and train() only reports its device."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")

    def count():
        return len(gpu_lease.visible_gpus(os.environ))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: count() > 0)
    monkeypatch.setattr(torch.cuda, "device_count", count)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)

    def fake_train(cfg, data, device, *args, **kwargs):
        raise RunsOn(device, os.environ["CUDA_VISIBLE_DEVICES"])

    monkeypatch.setattr(train_module, "train", fake_train)
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
def test_precision_auto_is_bf16_only_on_gpus_with_bf16(monkeypatch, major, bf16):
    # A GPU of compute capability `major`; before 8 (V100, T4) bf16 is only emulated, which
    # torch.cuda.is_bf16_supported() counts as supported unless told not to.
    props = type("Props", (), {"major": major, "minor": 0, "name": f"sm_{major}0"})()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)
    assert resolve_execution(tiny_config(), CUDA).bf16 is bf16
    assert resolve_execution(tiny_config(precision="fp32"), CUDA).bf16 is False


# --------------------------------------------------------------------------- 3: lr, torch version
def test_cuda_graphs_on_is_refused_below_the_oldest_tested_torch(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.3.1+cu121")
    with pytest.raises(ConfigError, match=r"'cuda_graphs' = 'on' is tested from torch 2\.14"):
        resolve_execution(tiny_config(cuda_graphs="on"), CUDA)
    resolve_execution(tiny_config(cuda_graphs="off"), CUDA)  # eager runs stay allowed


class EmulatedGraphs:
    """CUDA graphs emulated on the CPU, in the two ways that matter here: a replay reads the lr
    tensors that were in the param groups at capture (the addresses a real graph baked in),
    whatever the groups hold now; and the capture runs the step under torch's own capture check
    (Optimizer._accelerator_graph_capture_health_check refuses a non-capturable optimizer),
    then puts weights, Adam state and RNG back, as the real capture does. Capturable Adam is
    allowed on the CPU, which torch only allows on CUDA-like devices."""

    def __init__(self, monkeypatch):
        self.monkeypatch, self.captures = monkeypatch, 0
        adam = importlib.import_module("torch.optim.adam")  # the module, not the class
        supported = adam._get_capturable_supported_devices
        monkeypatch.setattr(
            adam, "_get_capturable_supported_devices",
            lambda supports_xla=True: [*supported(supports_xla), "cpu"],
        )  # fmt: skip
        for name in ("capture_train_step", "_capture_train_step"):  # a041c63's name too
            monkeypatch.setattr(train_module, name, self.capture, raising=False)

    def capture(self, step_fn, model, optimizer, x_shape, memory_format, device, warmup=3):
        self.captures += 1
        saved_model = {k: v.clone() for k, v in model.state_dict().items()}
        saved = {p: {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
        rng = torch.get_rng_state()
        capturing = type("Stream", (), {"is_capturing": lambda self: True})()
        with self.monkeypatch.context() as m:  # what torch sees while a CUDA stream captures
            m.setattr(torch.accelerator, "current_accelerator", lambda check_available=0: CUDA)
            m.setattr(torch.accelerator, "current_stream", lambda device=None: capturing)
            step_fn(torch.zeros(x_shape), torch.zeros(x_shape[0], dtype=torch.long))
        with torch.no_grad():
            for k, v in model.state_dict().items():
                v.copy_(saved_model[k])
            for p, state in optimizer.state.items():
                for k, v in state.items():
                    v.copy_(saved[p][k]) if p in saved else v.zero_()
        torch.set_rng_state(rng)
        captured = [g["lr"] for g in optimizer.param_groups]

        def graph_step(x, y):
            live = [g["lr"] for g in optimizer.param_groups]
            for g, lr in zip(optimizer.param_groups, captured, strict=True):
                g["lr"] = lr
            try:
                return step_fn(x, y)
            finally:
                for g, lr in zip(optimizer.param_groups, live, strict=True):
                    g["lr"] = lr

        return graph_step


def graphs_execution(monkeypatch, graphs=True):
    """Runs on the CPU resolve to an execution with CUDA graphs on (or off)."""
    real = resolve_execution

    def resolve(cfg, device):
        return dataclasses.replace(real(dataclasses.replace(cfg, cuda_graphs="off"), device),
                                   cuda_graphs=graphs)  # fmt: skip

    monkeypatch.setattr(train_module, "resolve_execution", resolve)


def test_lr_reaches_the_graph_when_the_scheduler_replaces_the_tensor(tiny_data, monkeypatch):
    # Torch before 2.14 assigned a new lr tensor to group["lr"] at a milestone instead of
    # filling the old one: emulated here. After the milestone the lr is 1e-33: an Adam step of
    # at most ~1e-33 leaves fp32 weights of magnitude >= 1e-6 as they are, so the model (MLP, no
    # BN, no dropout) must evaluate the same after every later epoch, as the eager run does.
    def assign(group, key, value):
        group[key] = value

    monkeypatch.setattr(torch.optim.lr_scheduler, "_update_param_group_val", assign)
    graphs_execution(monkeypatch)
    fake = EmulatedGraphs(monkeypatch)
    cfg = tiny_config(epochs=3, lr_milestones=(1,), lr_gamma=1e-30, batch_size=30)  # 9 full batches
    result = train(cfg, load_prepared(tiny_data), CPU, **QUIET)
    assert fake.captures == 1 and result.execution["cuda_graphs"] is True
    e = result.epochs
    assert e["lr"].tolist() == pytest.approx([1e-3, 1e-33, 1e-33], rel=1e-6)
    assert e["val_loss"].iloc[0] == e["val_loss"].iloc[1] == e["val_loss"].iloc[2]  # no change
    assert e["train_loss_mean"].iloc[0] != e["train_loss_mean"].iloc[1]  # it did train at 1e-3


# --------------------------------------------------------------------------- 2: resumes
def interrupted_checkpoint(data, cfg, path, prefix="epoch 2/"):
    """A checkpoint as a killed eager CPU run leaves it (after epoch 1)."""
    path.unlink(missing_ok=True)
    with pytest.raises(Interrupt):
        train(cfg, data, CPU, checkpoint=path, log=stop_at(prefix))
    return torch.load(path, weights_only=True)


def test_eager_checkpoint_resumes_under_cuda_graphs(tiny_data, tmp_path, monkeypatch):
    data, ckpt = load_prepared(tiny_data), tmp_path / "run.ckpt"
    cfg = tiny_config(epochs=3, batch_size=30)
    interrupted_checkpoint(data, cfg, ckpt)
    graphs_execution(monkeypatch)
    fake = EmulatedGraphs(monkeypatch)
    lines = []
    resumed = train(cfg, data, CPU, checkpoint=ckpt, log=lines.append)  # no capture error
    assert fake.captures == 1 and len(resumed.epochs) == 3 and resumed.status == "completed"
    (entry,) = resumed.resumes
    assert entry["bitwise"] is False and entry["before"]["cuda_graphs"] is False
    assert any(line.endswith("not bitwise") for line in lines)
    saved = torch.load(ckpt, weights_only=True)  # what the resumed run went on with
    assert all(g["capturable"] for g in saved["optimizer"]["param_groups"])


def cuda_checkpoint(ckpt: dict) -> dict:
    """`ckpt` as a CUDA run would have written it: a CUDA data generator's state (seed and
    Philox offset, 16 bytes), a CUDA RNG state for dropout, fused Adam, bf16 channels_last."""
    philox = torch.arange(16, dtype=torch.uint8)
    groups = [{**g, "fused": True} for g in ckpt["optimizer"]["param_groups"]]
    ran_as = {**ckpt.get("ran_as", {}), "device": "cuda", "precision": "bf16", "adam": "fused"}
    return {
        **ckpt,
        "rng": {**ckpt["rng"], "data": philox, "cuda": philox.clone()},
        "optimizer": {**ckpt["optimizer"], "param_groups": groups},
        "ran_as": ran_as,
    }


def test_cuda_checkpoint_resumes_on_cpu_marked_not_bitwise(tiny_data, tmp_path):
    data, ckpt = load_prepared(tiny_data), tmp_path / "run.ckpt"
    cfg = tiny_config(model="cnn", width=4, norm="batch", dropout_rate=0.3, epochs=3)
    torch.save(cuda_checkpoint(interrupted_checkpoint(data, cfg, ckpt)), ckpt)
    lines = []
    first = train(cfg, data, CPU, checkpoint=ckpt, log=lines.append)
    assert first.status == "completed" and len(first.epochs) == 3
    (entry,) = first.resumes
    assert entry["epoch"] == 1 and entry["bitwise"] is False
    assert entry["before"]["device"] == "cuda" and entry["before"]["adam"] == "fused"
    assert [line for line in lines if "not bitwise" in line]
    assert first.execution["adam"] == "default"  # what meta.json says is what ran:
    saved = torch.load(ckpt, weights_only=True)
    assert not any(g["fused"] for g in saved["optimizer"]["param_groups"])
    assert saved["ran_as"]["device"] == "cpu"
    # Deterministic: the same checkpoint resumes to the same numbers.
    torch.save(cuda_checkpoint(interrupted_checkpoint(data, cfg, ckpt)), ckpt)
    again = train(cfg, data, CPU, checkpoint=ckpt, **QUIET)
    cols = ["train_loss_mean", "val_loss", "test_acc"]
    pd.testing.assert_frame_equal(first.epochs[cols], again.epochs[cols])


class FakeCudaGenerator:
    """A CUDA generator's state API: 16 bytes (seed, Philox offset); other sizes are refused
    with torch's error, as the real one does."""

    def __init__(self, seed=0):
        self.manual_seed(seed)

    def manual_seed(self, seed):
        self.state = torch.tensor(
            list(int(seed).to_bytes(8, "little")) + [0] * 8, dtype=torch.uint8
        )
        return self

    def get_state(self):
        return self.state.clone()

    def set_state(self, state):
        if state.numel() != 16:
            raise RuntimeError("RNG state is wrong size")
        self.state = state.clone()


def test_cpu_rng_states_map_onto_cuda_deterministically(monkeypatch):
    from normdrop.checkpoints import restore_rng

    cuda_rng = FakeCudaGenerator()
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device=None: cuda_rng.get_state())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device=None: cuda_rng.set_state(s))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: cuda_rng.manual_seed(seed))
    cpu_state = {"cpu": torch.get_rng_state(), "data": torch.Generator().manual_seed(3).get_state()}

    def resume_on_cuda():
        gen = FakeCudaGenerator()
        bitwise = restore_rng(cpu_state, CUDA, gen)
        return bitwise, gen.get_state(), cuda_rng.get_state()

    first, again = resume_on_cuda(), resume_on_cuda()
    assert first[0] is False  # a CPU stream cannot continue on CUDA: seeded from it instead
    assert torch.equal(first[1], again[1]) and torch.equal(first[2], again[2])
    assert not torch.equal(first[1], FakeCudaGenerator().get_state())  # not the fresh stream
    # A CUDA checkpoint on CUDA: put back as it was, bitwise.
    cuda_state = {"cpu": torch.get_rng_state(), "data": first[1], "cuda": first[2]}
    gen = FakeCudaGenerator()
    assert restore_rng(cuda_state, CUDA, gen) is True and torch.equal(gen.get_state(), first[1])


def test_checkpoint_that_cannot_be_resumed_is_moved_aside_once(tiny_data, tmp_path):
    data, ckpt = load_prepared(tiny_data), tmp_path / "run.ckpt"
    cfg = tiny_config(epochs=2, lr_milestones=())
    broken = interrupted_checkpoint(data, cfg, ckpt)
    name = next(iter(broken["model"]))
    broken["model"][name] = torch.zeros(3)  # a tensor of the wrong shape: load_state_dict fails
    torch.save(broken, ckpt)
    lines = []
    r = train(cfg, data, CPU, checkpoint=ckpt, log=lines.append)
    assert r.status == "completed" and r.resumes == [] and len(r.epochs) == 2  # started over
    aside = list(tmp_path.glob("run.ckpt.stale-*"))
    assert len(aside) == 1
    assert lines[0].startswith(f"checkpoint {ckpt} cannot be resumed (RuntimeError: ")
    assert lines[0].endswith(f"moved aside to {aside[0]}; starting from epoch 1")
    fresh = train(cfg, data, CPU, **QUIET)
    pd.testing.assert_frame_equal(r.steps, fresh.steps)  # as a run that never had a checkpoint


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


def test_resume_under_another_torch_version_is_marked_not_bitwise(tiny_data, tmp_path, monkeypatch):
    data, ckpt = load_prepared(tiny_data), tmp_path / "run.ckpt"
    cfg = tiny_config(epochs=3)
    interrupted_checkpoint(data, cfg, ckpt)
    monkeypatch.setattr(torch, "__version__", "2.99.0")  # kernels may differ between versions
    (entry,) = train(cfg, data, CPU, checkpoint=ckpt, **QUIET).resumes
    assert entry["bitwise"] is False and entry["before"]["torch"] != "2.99.0"
