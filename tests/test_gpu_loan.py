"""Issue 21's defects of the GPU path, for the loaned GPU machine (torch 2.11), each tested on CPU:
the cuda_graphs gate and the lr a graph reads under older schedulers, Adam's restored state laid
out as its channels_last params, nn.LSTM's dropout refused under CUDA graphs, and the LSTM's
recurrence at one precision for every norm. Each test but the gate's failed on the code before
(the gate's asserts the new version)."""

from __future__ import annotations

import pytest
import torch
from test_gpu_resume_and_graphs import CUDA, EmulatedGraphs, Interrupt, graphs_execution, stop_at

import normdrop.train as train_module
from normdrop.config import ConfigError
from normdrop.data import load_prepared
from normdrop.execution import resolve_execution
from normdrop.models import build_model


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
    cfg = tiny_config(epochs=3, lr_milestones=(1, 2), gamma=0.1, batch_size=32)  # 8 full + 1 short
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
    run, history = train_module._start_or_resume(cfg_cl, data, cpu, ex, ckpt, print)
    assert history.resumes, "the checkpoint was not resumed"
    state = run.optimizer.state
    conv = [p for p in state if p.dim() == 4]
    assert conv and all(not p.is_contiguous() for p in conv)  # channels_last weights
    for p, s in state.items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert s[key].stride() == p.stride(), (key, tuple(p.shape))
    steps = [s["step"] for s in state.values()]
    assert all(float(t) > 0 for t in steps)  # the checkpoint's state, not a fresh one


# --------------------------------------------------------------------------- LSTM
@pytest.mark.parametrize(
    ("norm", "dropout", "refused"),
    [("none", 0.3, True), ("none", 0.0, False), ("layer", 0.3, False), ("batch", 0.3, False)],
)
def test_cuda_graphs_refuse_nn_lstm_with_dropout(norm, dropout, refused, tiny_config):
    cfg = tiny_config(model="lstm", norm=norm, dropout=dropout, cuda_graphs="on", precision="fp32")
    if not refused:
        assert resolve_execution(cfg, CUDA).cuda_graphs is True
        return
    with pytest.raises(ConfigError) as err:
        resolve_execution(cfg, CUDA)
    message = str(err.value)
    assert "\n" not in message and "lstm with norm none and dropout" in message
    assert message.endswith("use off")
    off = tiny_config(model="lstm", norm=norm, dropout=dropout, cuda_graphs="off")
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
