"""Resuming across devices, executions and torch versions, and the lr under CUDA graphs (issue
16's defects 2 and 3), each tested on CPU with fakes standing in for CUDA. Each test asserts what
a resumed or graph-captured run computes and records, not which function was called; each failed
on a041c63 (HANDOFF-train.md has the evidence)."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib

import pandas as pd
import pytest
import torch

import normdrop.train as train_module
from normdrop.data import load_prepared
from normdrop.train import resolve_execution, train

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


# --------------------------------------------------------------------------- 3: lr under graphs
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


def test_lr_reaches_the_graph_when_the_scheduler_replaces_the_tensor(
    tiny_data, monkeypatch, tiny_config, cpu, quiet
):
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
    result = train(cfg, load_prepared(tiny_data), cpu, **quiet)
    assert fake.captures == 1 and result.execution["cuda_graphs"] is True
    e = result.epochs
    assert e["lr"].tolist() == pytest.approx([1e-3, 1e-33, 1e-33], rel=1e-6)
    assert e["val_loss"].iloc[0] == e["val_loss"].iloc[1] == e["val_loss"].iloc[2]  # no change
    assert e["train_loss_mean"].iloc[0] != e["train_loss_mean"].iloc[1]  # it did train at 1e-3


# --------------------------------------------------------------------------- 2: resumes
@pytest.fixture(scope="module")
def interrupted_checkpoint(cpu):
    def interrupted_checkpoint(data, cfg, path, prefix="epoch 2/"):
        """A checkpoint as a killed eager CPU run leaves it (after epoch 1)."""
        path.unlink(missing_ok=True)
        with pytest.raises(Interrupt):
            train(cfg, data, cpu, checkpoint=path, log=stop_at(prefix))
        return torch.load(path, weights_only=True)

    return interrupted_checkpoint


def test_eager_checkpoint_resumes_under_cuda_graphs(
    tiny_data, tmp_path, monkeypatch, tiny_config, cpu, interrupted_checkpoint
):
    data, ckpt = load_prepared(tiny_data), tmp_path / "run.ckpt"
    cfg = tiny_config(epochs=3, batch_size=30)
    interrupted_checkpoint(data, cfg, ckpt)
    graphs_execution(monkeypatch)
    fake = EmulatedGraphs(monkeypatch)
    lines = []
    resumed = train(cfg, data, cpu, checkpoint=ckpt, log=lines.append)  # no capture error
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
        "rng": {**ckpt["rng"], "data": [philox], "cuda": philox.clone()},  # one member
        "optimizer": {**ckpt["optimizer"], "param_groups": groups},
        "ran_as": ran_as,
    }


def test_cuda_checkpoint_resumes_on_cpu_marked_not_bitwise(
    tiny_data, tmp_path, tiny_config, cpu, quiet, interrupted_checkpoint
):
    data, ckpt = load_prepared(tiny_data), tmp_path / "run.ckpt"
    cfg = tiny_config(model="cnn", width=4, norm="batch", dropout_rate=0.3, epochs=3)
    torch.save(cuda_checkpoint(interrupted_checkpoint(data, cfg, ckpt)), ckpt)
    lines = []
    first = train(cfg, data, cpu, checkpoint=ckpt, log=lines.append)
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
    again = train(cfg, data, cpu, checkpoint=ckpt, **quiet)
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
    data_state = torch.Generator().manual_seed(3).get_state()
    cpu_state = {"cpu": torch.get_rng_state(), "data": [data_state]}

    def resume_on_cuda():
        gen = FakeCudaGenerator()
        bitwise = restore_rng(cpu_state, CUDA, [gen])
        return bitwise, gen.get_state(), cuda_rng.get_state()

    first, again = resume_on_cuda(), resume_on_cuda()
    assert first[0] is False  # a CPU stream cannot continue on CUDA: seeded from it instead
    assert torch.equal(first[1], again[1]) and torch.equal(first[2], again[2])
    assert not torch.equal(first[1], FakeCudaGenerator().get_state())  # not the fresh stream
    # A CUDA checkpoint on CUDA: put back as it was, bitwise.
    cuda_state = {"cpu": torch.get_rng_state(), "data": [first[1]], "cuda": first[2]}
    gen = FakeCudaGenerator()
    assert restore_rng(cuda_state, CUDA, [gen]) is True and torch.equal(gen.get_state(), first[1])


def test_checkpoint_that_cannot_be_resumed_is_moved_aside_once(
    tiny_data, tmp_path, tiny_config, cpu, quiet, interrupted_checkpoint
):
    data, ckpt = load_prepared(tiny_data), tmp_path / "run.ckpt"
    cfg = tiny_config(epochs=2, lr_milestones=())
    broken = interrupted_checkpoint(data, cfg, ckpt)
    name = next(iter(broken["model"]))
    broken["model"][name] = torch.zeros(3)  # a tensor of the wrong shape: load_state_dict fails
    torch.save(broken, ckpt)
    lines = []
    r = train(cfg, data, cpu, checkpoint=ckpt, log=lines.append)
    assert r.status == "completed" and r.resumes == [] and len(r.epochs) == 2  # started over
    aside = list(tmp_path.glob("run.ckpt.stale-*"))
    assert len(aside) == 1
    assert lines[0].startswith(f"checkpoint {ckpt} cannot be resumed (RuntimeError: ")
    assert lines[0].endswith(f"moved aside to {aside[0]}; starting from epoch 1")
    fresh = train(cfg, data, cpu, **quiet)
    pd.testing.assert_frame_equal(r.steps, fresh.steps)  # as a run that never had a checkpoint


def test_resume_under_another_torch_version_is_marked_not_bitwise(
    tiny_data, tmp_path, monkeypatch, tiny_config, cpu, quiet, interrupted_checkpoint
):
    data, ckpt = load_prepared(tiny_data), tmp_path / "run.ckpt"
    cfg = tiny_config(epochs=3)
    interrupted_checkpoint(data, cfg, ckpt)
    monkeypatch.setattr(torch, "__version__", "2.99.0")  # kernels may differ between versions
    (entry,) = train(cfg, data, cpu, checkpoint=ckpt, **quiet).resumes
    assert entry["bitwise"] is False and entry["before"]["torch"] != "2.99.0"


# ---------------------------------------------- older schedulers (lr replaced), Adam state layout
def older_scheduler(monkeypatch, kind: str) -> None:
    """The schedulers before torch 2.14: group["lr"] replaced, by a new tensor or by a float,
    where 2.14 fills the tensor in place."""

    def replace(group, key, value):
        group[key] = torch.tensor(float(value)) if kind == "new tensor" else float(value)

    monkeypatch.setattr(torch.optim.lr_scheduler, "_update_param_group_val", replace)


class RecordingGraphs(EmulatedGraphs):
    """EmulatedGraphs recording the lr every replay's Adam step reads."""

    def capture(self, step_fn, model, optimizer, *args, **kwargs):
        graph_step = super().capture(step_fn, model, optimizer, *args, **kwargs)
        self.replay_lrs, replaying = [], []
        optimizer.register_step_pre_hook(
            lambda opt, a, k: (
                self.replay_lrs.append(float(opt.param_groups[0]["lr"])) if replaying else None
            )
        )

        def replay(x, y):
            replaying.append(True)
            try:
                return graph_step(x, y)
            finally:
                replaying.clear()

        return replay


@pytest.mark.parametrize("kind", ["new tensor", "float"])
def test_captured_lr_follows_the_milestones_under_older_schedulers(
    tiny_data, monkeypatch, kind, tiny_config, cpu
):
    older_scheduler(monkeypatch, kind)
    graphs_execution(monkeypatch)
    # 8 full batches + 1 short one
    cfg = tiny_config(epochs=3, lr_milestones=(1, 2), lr_gamma=0.1, batch_size=32)
    data = load_prepared(tiny_data)
    fake = RecordingGraphs(monkeypatch)
    result = train_module.train(cfg, data, cpu, log=lambda line: None)
    assert fake.captures == 1 and result.epochs["lr"].tolist() == pytest.approx([1e-3, 1e-4, 1e-5])
    assert fake.replay_lrs == pytest.approx([1e-3] * 8 + [1e-4] * 8 + [1e-5] * 8, rel=1e-6)
    # the emulation is real: without copy_lr_into every replay reads the first rate
    monkeypatch.setattr(train_module, "copy_lr_into", lambda captured, optimizer: None)
    train_module.train(cfg, data, cpu, log=lambda line: None)
    assert fake.replay_lrs == pytest.approx([1e-3] * 24)


# --------------------------------------------------------------------------- Adam state strides
def test_restored_adam_state_is_laid_out_as_channels_last_params(
    tiny_data, tmp_path, tiny_config, cpu
):
    # A contiguous CPU run's checkpoint resumed with channels_last weights (as on CUDA): CUDA's
    # fused Adam needs every moment in its param's layout, CPU's does not check.
    data, ckpt = load_prepared(tiny_data), tmp_path / "run.ckpt"
    cfg = tiny_config(model="cnn", width=4, norm="batch", dropout_rate=0.3, epochs=3, batch_size=30)
    with pytest.raises(Interrupt):
        train_module.train(cfg, data, cpu, checkpoint=ckpt, log=stop_at("epoch 2/"))
    cfg_cl = tiny_config(**{**cfg.to_dict(), "memory_format": "channels_last"})
    ex = resolve_execution(cfg_cl, cpu)
    run, history = train_module._start_or_resume([cfg_cl], data, cpu, ex, ckpt, print)
    assert history.resumes, "the checkpoint was not resumed"
    state = run.optimizer.state
    conv = [p for p in state if p.dim() == 4]
    assert conv and all(not p.is_contiguous() for p in conv)  # channels_last weights
    for p, s in state.items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert s[key].stride() == p.stride(), (key, tuple(p.shape))
    steps = [s["step"] for s in state.values()]
    assert all(float(t) > 0 for t in steps)  # the checkpoint's state, not a fresh one


# --------------------------------------------------------------------------- capture (K >= 1)
class CudaOnCpu:
    """What execution.capture_step calls of torch.cuda, on the CPU: streams that do nothing, the
    capture's `with torch.cuda.graph(...)` running the step eagerly (a real capture records it
    without running it: here it changes the state too, which the restore must undo as well), a
    replay that counts and runs `replay_fn` if one is set, and the CPU generator as the CUDA RNG.
    What this cannot show (a real replay's numbers) is gpu_check's `fused graph == fused eager`
    row."""

    def __init__(self, monkeypatch):
        self.replays, self.replay_fn = 0, None
        stream = type("Stream", (), {"wait_stream": lambda self, other: None})
        outer = self

        class Graph:
            def replay(self):
                outer.replays += 1
                if outer.replay_fn:
                    outer.replay_fn()

        m = monkeypatch
        m.setattr(torch.cuda, "Stream", lambda device=None: stream())
        m.setattr(torch.cuda, "current_stream", lambda device=None: stream())
        m.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
        m.setattr(torch.cuda, "CUDAGraph", Graph)
        m.setattr(torch.cuda, "graph", lambda graph: contextlib.nullcontext())
        m.setattr(torch.cuda, "get_rng_state", lambda device=None: torch.get_rng_state())
        m.setattr(
            torch.cuda, "set_rng_state", lambda state, device=None: torch.set_rng_state(state)
        )


def _batch(data, k, batch=32):
    """k members' first batches, normalized: x (k, B, C, H, W), y (k, B)."""
    from normdrop.data import normalize, standardization

    x = normalize(data.train_x[: k * batch], *standardization(data.mean, data.std))
    return x.view(k, batch, *data.in_shape), data.train_y[: k * batch].view(k, batch)


def test_fused_capture_puts_model_adam_and_rng_back_in_the_same_memory(
    tiny_data, monkeypatch, tiny_config, cpu
):
    from normdrop.execution import named_tensors
    from normdrop.fusion import FusedModel, StackedAdam, capture_fused_step, make_fused_step

    # BatchNorm (statistics, counters), dropout (the RNG), channels_last (the static batch)
    base = dict(model="cnn", width=4, norm="batch", dropout_rate=0.3)
    cfgs = [tiny_config(**base, seed=s, memory_format="channels_last") for s in (42, 43)]
    data = load_prepared(tiny_data)
    model = FusedModel(cfgs, data.in_shape, data.num_classes, cpu, torch.channels_last)
    adam = StackedAdam(model.params, cfgs, cpu, capturable=True)
    step = make_fused_step(model, adam, cpu, bf16=False)
    model.train()
    x, y = _batch(data, 2)
    active = torch.tensor([True, True])
    step(x, y, active)  # Adam's state exists, non-zero, before capture: restoring it is tested
    with pytest.raises(ValueError, match="capturable"):
        capture_fused_step(step, model, StackedAdam(model.params, cfgs, cpu), x.shape, cpu)

    def state():
        named = dict(named_tensors(model.state_dict()))
        for i, s in enumerate(adam.state.values()):
            named |= {f"adam {i} {k}": v for k, v in s.items()}
        return named

    before = {k: v.detach().clone() for k, v in state().items()}
    addresses = {k: v.data_ptr() for k, v in state().items()}
    rng = torch.get_rng_state()
    seen = []

    def recording_step(*static):
        seen.append((adam.steps_taken, *static))
        return step(*static)

    fake = CudaOnCpu(monkeypatch)
    graph_step = capture_fused_step(recording_step, model, adam, x.shape, cpu)
    assert [s[0] for s in seen] == [1, 2, 3, 4]  # 3 warm-up steps and the capture ran
    after = state()
    assert {k: v.data_ptr() for k, v in after.items()} == addresses  # the graph's addresses
    for k, v in after.items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(torch.get_rng_state(), rng)
    static_x, static_y, static_active = seen[0][1:]
    assert static_x.shape == x.shape and static_x.permute(0, 1, 3, 4, 2).is_contiguous()
    assert static_y.shape == y.shape and static_active.dtype == torch.bool
    graph_step(x, y, active)
    assert fake.replays == 1 and torch.equal(static_x, x)  # the batch copied into the graph's


def test_k1_capture_leaves_a_fresh_run_as_it_was(tiny_data, monkeypatch, tiny_config, cpu):
    # capture_train_step (train's K = 1 path, now over capture_step): torch's Adam makes its
    # state in the warm-up; zeroed, the next eager step is a fresh run's first, bitwise.
    from normdrop.execution import capture_train_step, make_train_step
    from normdrop.models import build_model

    cfg = tiny_config(model="cnn", width=4, norm="batch")
    data = load_prepared(tiny_data)
    x, y = (t[0] for t in _batch(data, 1))

    def fresh():
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, data.in_shape, data.num_classes, 4, "batch").train()
        adam = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        return model, adam, make_train_step(model, adam, cpu, bf16=False)

    model, adam, step = fresh()
    CudaOnCpu(monkeypatch)
    capture_train_step(step, model, adam, x.shape, torch.contiguous_format, cpu)
    assert adam.state and all(float(s["step"]) == 0 for s in adam.state.values())
    twin_model, _, twin_step = fresh()
    assert torch.equal(step(x, y)[0], twin_step(x, y)[0])
    twin = twin_model.state_dict()
    for name, p in model.state_dict().items():
        assert torch.equal(p, twin[name]), name


class FusedGraphsOnCpu(CudaOnCpu):
    """train_members' fused capture (the real capture_fused_step and capture_step, torch.cuda
    stubbed as in CudaOnCpu) with a replay that runs the captured step again on the static
    inputs, into the static outputs, reading the (K,) lr tensor StackedAdam held at capture: what
    a real graph reads, whatever `optimizer.lr` is now."""

    def __init__(self, monkeypatch):
        super().__init__(monkeypatch)
        self.captures = 0
        real = train_module.capture_fused_step

        def capture(step_fn, model, optimizer, x_shape, device, warmup=3):
            self.captures += 1
            calls = []

            def recording(*static):
                out = step_fn(*static)
                calls.append((static, out, optimizer.lr))
                return out

            graph_step = real(recording, model, optimizer, x_shape, device, warmup)
            static, outputs, captured_lr = calls[-1]  # the capture's call

            def replay():
                live, optimizer.lr = optimizer.lr, captured_lr
                try:
                    for out, new in zip(outputs, step_fn(*static), strict=True):
                        out.copy_(new)
                finally:
                    optimizer.lr = live

            self.replay_fn = replay
            return graph_step

        monkeypatch.setattr(train_module, "capture_fused_step", capture)


def test_fused_members_under_emulated_graphs_equal_the_eager_fused_run(
    tiny_data, monkeypatch, tiny_config, cpu, quiet
):
    # BatchNorm, dropout (the RNG put back after capture), crop_flip, two milestones (the lr the
    # graph reads), members of other seeds and rates; 270 images: 8 full batches replay the
    # graph, the 9th (14 images) runs eagerly. Capturable StackedAdam under graphs, the default
    # one eager: bitwise on CPU (test_fusion.py).
    settings = dict(model="cnn", width=4, norm="batch", dropout_rate=0.3, augment="crop_flip",
                    epochs=3, lr_milestones=(1, 2), batch_size=32)  # fmt: skip
    cfgs = [tiny_config(**settings, seed=s, lr=lr) for s, lr in ((42, 1e-3), (43, 3e-3))]
    data = load_prepared(tiny_data)
    eager = train_module.train_members(cfgs, data, cpu, **quiet)
    graphs_execution(monkeypatch)
    fake = FusedGraphsOnCpu(monkeypatch)
    graphed = train_module.train_members(cfgs, data, cpu, **quiet)
    assert fake.captures == 1 and fake.replays == 3 * 8
    assert graphed[1].execution["cuda_graphs"] is True and graphed[1].execution["fused"] == 2
    for a, b in zip(eager, graphed, strict=True):
        pd.testing.assert_frame_equal(a.steps, b.steps)
        pd.testing.assert_frame_equal(
            a.epochs.drop(columns="wall_time_s"), b.epochs.drop(columns="wall_time_s")
        )
    # The emulation is real: rates put into a new tensor, not the captured one, are not read.
    from normdrop.fusion import StackedAdam

    def new_tensor(self):
        lrs = [float(g["lr"]) for g in self.schedule_groups.param_groups]
        self.lr = torch.tensor(lrs, dtype=torch.float64)
        return self.lr

    monkeypatch.setattr(StackedAdam, "read_lrs", new_tensor)
    stale = train_module.train_members(cfgs, data, cpu, **quiet)
    assert stale[0].epochs.train_loss_mean.iloc[1] != eager[0].epochs.train_loss_mean.iloc[1]


def test_fused_cuda_graphs_auto_stays_off_on_cpu_and_on_is_refused_there(
    tiny_data, monkeypatch, tiny_config, cpu, quiet
):
    from normdrop.config import ConfigError
    from normdrop.grid import fusion_refusal

    def never(*args, **kwargs):
        raise AssertionError("captured on CPU")

    monkeypatch.setattr(train_module, "capture_fused_step", never)
    cfgs = [tiny_config(epochs=1, lr_milestones=(), seed=s, cuda_graphs="auto") for s in (42, 43)]
    result = train_module.train_members(cfgs, load_prepared(tiny_data), cpu, **quiet)
    assert result[0].execution["cuda_graphs"] is False and result[0].execution["fused"] == 2
    on = [dataclasses.replace(c, cuda_graphs="on") for c in cfgs]
    assert fusion_refusal(on) is None  # fused runs may capture: on CUDA
    with pytest.raises(ConfigError, match="'cuda_graphs' = 'on' needs a CUDA device"):
        train_module.train_members(on, load_prepared(tiny_data), cpu, **quiet)
