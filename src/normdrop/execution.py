"""How a training run executes on its device: the device and the settings' `auto`s resolved
(`resolve_device`, `resolve_execution` -> `Execution`), deterministic kernels, the eager training
step, and the CUDA-graph path (capture of that step; the lr as captured device tensors).

Speed, not numbers: none of this is in a run's settings hash. The CUDA-only parts are small and
named, off by default, and exercised on CPU with fakes in the tests; `benchmarks/gpu_check.py`
runs them on a GPU (its `graphs` section uses `make_train_step`, `capture_train_step`,
`lr_to_device` and `copy_lr_into`, as `train()` does, and normdrop.fusion's
`capture_fused_step`, over the same `capture_step`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from normdrop.config import ConfigError, RunConfig

# cuda_graphs: on is refused below it. 2.11: the oldest torch this project supports (the loaned
# GPU machine's); the lr a graph reads follows the schedule whether the scheduler fills
# group["lr"] in place (2.14) or puts a new tensor or a float there (before): copy_lr_into, and
# tests/test_gpu_resume_and_graphs.py emulates both older behaviours (docs/gpu.md, "The
# cuda_graphs gate").
OLDEST_TESTED_TORCH = (2, 11)


def cuda_index(name: str) -> int | None:
    """N of a device name `cuda:N`, else None (read before torch may touch CUDA)."""
    kind, _, index = name.partition(":")
    return int(index) if kind == "cuda" and index.isdigit() else None


def resolve_device(name: str, leased: bool = False) -> torch.device:
    """`name` (auto | cpu | cuda | cuda:N) as a device of this process. With a GPU lease the
    process sees one GPU, the leased one, as cuda:0: `cuda:N` named it before the lease
    (gpu_lease.setup_device_env(device_index=N) leased GPU N), so it maps to cuda:0."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    if device.type == "cuda" and leased:
        return torch.device("cuda", 0)
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"device {name!r} does not exist: this process sees {torch.cuda.device_count()} "
            f"GPU(s) (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})"
        )
    return device


@dataclass(frozen=True)
class Execution:
    """How a run executes on its device, resolved once from its settings (speed, not numbers)."""

    bf16: bool  # bf16 autocast for the forward pass (fp32 weights, optimizer state, BN stats)
    memory_format: torch.memory_format
    cuda_graphs: bool  # the training step captured once and replayed (capture_train_step)
    fused_adam: bool
    compile: bool
    deterministic: bool

    def describe(self) -> dict:
        """What ran, for meta.json and the log."""
        return {
            "precision": "bf16" if self.bf16 else "fp32",
            "memory_format": "channels_last"
            if self.memory_format == torch.channels_last
            else "contiguous",
            "cuda_graphs": self.cuda_graphs,
            "adam": "fused" if self.fused_adam else "default",  # default: for-loop on CPU
            "compile": self.compile,
            "deterministic": self.deterministic,
        }


def resolve_execution(cfg: RunConfig, device: torch.device) -> Execution:
    """The settings' `auto`s made concrete for `device`; ConfigError for what it cannot do."""
    cuda = device.type == "cuda"
    if cfg.cuda_graphs == "on" and not cuda:
        raise ConfigError(
            f"setting 'cuda_graphs' = 'on' needs a CUDA device, not {device}; use auto or off"
        )
    if cfg.cuda_graphs == "on" and _torch_version() < OLDEST_TESTED_TORCH:
        oldest = ".".join(map(str, OLDEST_TESTED_TORCH))
        raise ConfigError(
            f"setting 'cuda_graphs' = 'on' is tested from torch {oldest} on, not with "
            f"{torch.__version__}; use off or upgrade torch"
        )
    refusal = graphs_refusal(cfg)
    if cfg.cuda_graphs == "on" and refusal:
        raise ConfigError(f"setting 'cuda_graphs' = 'on' {refusal}; use off")
    # channels_last makes cuDNN's bf16 convolutions use tensor cores without transposes.
    channels_last = cfg.memory_format == "channels_last" or (cfg.memory_format == "auto" and cuda)
    return Execution(
        # auto: bf16 where the GPU has bf16 units (compute capability >= 8); emulation excluded,
        # as it is slower than fp32. is_bf16_supported initializes CUDA: only for a CUDA device.
        bf16=cfg.precision == "bf16"
        or (
            cfg.precision == "auto"
            and cuda
            and torch.cuda.is_bf16_supported(including_emulation=False)
        ),
        memory_format=torch.channels_last if channels_last else torch.contiguous_format,
        # auto stays off until a run on a real GPU shows the same metrics, faster (docs/gpu.md).
        cuda_graphs=cfg.cuda_graphs == "on",
        # CPU has a fused Adam too, but the CPU runs are the reference numbers: kept as they are.
        fused_adam=cuda,
        compile=cfg.compile,
        deterministic=cfg.deterministic,
    )


def graphs_refusal(cfg: RunConfig) -> str | None:
    """Why `cfg`'s model cannot train under CUDA graphs, or None. nn.LSTM (the LSTM without a
    norm) with dropout draws its masks through cuDNN's cached dropout state, not the graph-safe
    generator: restoring the RNG state after capture clears the generator's reset flag, the next
    eager step (an epoch's short last batch) replaces that cached buffer and the graph goes on
    reading the freed block. The hand-written cells (norm layer, batch) use nn.Dropout: safe."""
    if cfg.model == "lstm" and cfg.norm == "none" and cfg.dropout_rate > 0:
        return (
            "cannot run lstm with norm none and dropout (nn.LSTM's cuDNN dropout state "
            "is not graph-safe)"
        )
    return None


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def use_deterministic_algorithms() -> None:
    """Deterministic kernels, process-wide (the CLI trains one run per process): bitwise-equal
    reruns and resumes on one GPU model. cuBLAS reads CUBLAS_WORKSPACE_CONFIG when it makes its
    first handle, at the run's first matmul: train() calls this before building its model.
    An op with no deterministic CUDA kernel warns instead of stopping the run. (ResNet-20's
    global pooling is not one: adaptive_avg_pool2d to a 1x1 output dispatches to `mean` in
    aten's AdaptiveAveragePooling.cpp, so its backward is MeanBackward, with no atomics and no
    warning; tests/test_gpu_device_settings.py checks the autograd node.)"""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def make_train_step(forward, optimizer, device: torch.device, bf16: bool, clip: float = 0.0):
    """One eager training step: `step(x, y) -> (loss, correct count)`, both on the device.
    `clip` > 0: the gradients' global L2 norm is clipped to it between backward and the step
    (settings' grad_clip_norm; numbers, unlike the rest of this module). clip_grad_norm_ syncs
    nothing with the host and, on CUDA, takes its foreach path: it can be captured in a graph."""
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def step(x, y):
        # No autocast cache: it must be off under CUDA graph capture, and each weight is cast
        # once per forward here, so it saved nothing.
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
            logits = forward(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        return loss.detach(), (logits.argmax(1) == y).sum()

    return step


# --------------------------------------------------------------------------- CUDA graphs
def named_tensors(state: dict, prefix: str = ""):
    """(name, tensor) of a state dict, nested dicts flattened ("params.fc.weight")."""
    for key, value in state.items():
        if isinstance(value, dict):
            yield from named_tensors(value, f"{prefix}{key}.")
        elif isinstance(value, torch.Tensor):
            yield f"{prefix}{key}", value


def snapshot_train_state(model, optimizer):
    """Clones of everything a training step writes in place: the model's weights and buffers
    (`model.state_dict()`: an nn.Module's, or normdrop.fusion.FusedModel's stacked params and
    buffers) and the optimizer's per-parameter state (`optimizer.state`: torch's Adam, or
    StackedAdam's moments and device step count). Returns `restore()`, which copies them back
    into the very tensors (same memory: a CUDA graph captured in between reads and writes those
    addresses); optimizer state that did not exist yet (torch's Adam makes it at its first
    step) is zeroed, as a fresh run has none. The RNG is the caller's (it is per device)."""
    saved_model = {k: v.detach().clone() for k, v in named_tensors(model.state_dict())}
    saved_state = {p: {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}

    @torch.no_grad()
    def restore() -> None:
        for k, v in named_tensors(model.state_dict()):
            v.copy_(saved_model[k])
        for p, state in optimizer.state.items():
            for k, v in state.items():  # state a fresh run did not have yet starts at zero
                v.copy_(saved_state[p][k]) if p in saved_state else v.zero_()

    return restore


def capture_step(step_fn, static_inputs: tuple, model, optimizer, device, warmup=3):
    """The training step `step_fn(*static_inputs) -> outputs` (forward, backward, optimizer
    step) as one CUDA graph: returns `graph_step(*inputs)`, which copies the inputs into the
    static ones (their shapes, dtypes and layouts: train's (x, y), the fused step's (x, y,
    active)) and replays the graph. CUDA only; see torch.cuda.graphs, "Whole-network capture".
    The optimizer must be capturable, its lr device tensors (`lr_to_device`; StackedAdam's
    fixed (K,) tensor).

    Capture needs a few warm-up steps on a side stream first; they change the weights, BN
    statistics, optimizer state and CUDA RNG, so all of these are put back in place
    (`snapshot_train_state`, same memory: the graph reads and writes those addresses) and the
    run goes on exactly where it was. Dropout in the graph draws from the default CUDA
    generator (graph-safe Philox): each replay advances its offset, so every step gets fresh
    masks from the run's seeded stream."""
    restore = snapshot_train_state(model, optimizer)
    saved_rng = torch.cuda.get_rng_state(device)

    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step_fn(*static_inputs)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)  # grads are then allocated inside the graph's pool
    with torch.cuda.graph(graph):
        static_outputs = step_fn(*static_inputs)

    restore()
    torch.cuda.set_rng_state(saved_rng, device)

    def graph_step(*inputs):
        for static, given in zip(static_inputs, inputs, strict=True):
            static.copy_(given)
        graph.replay()
        return static_outputs  # overwritten by the next replay: use before then

    return graph_step


def capture_train_step(step_fn, model, optimizer, x_shape, memory_format, device, warmup=3):
    """`make_train_step`'s step `(x, y) -> (loss, correct)` as one CUDA graph for batches of
    shape x_shape (`capture_step`, static x in `memory_format`): `graph_step(x, y)`."""
    static_x = torch.zeros(x_shape, device=device).contiguous(memory_format=memory_format)
    static_y = torch.zeros(x_shape[0], dtype=torch.long, device=device)
    return capture_step(step_fn, (static_x, static_y), model, optimizer, device, warmup)


def lr_to_device(optimizer, device: torch.device) -> list[torch.Tensor]:
    """Each param group's lr as a 0-d tensor on `device` (capturable Adam reads it there): the
    tensors a graph captured after this call reads on every replay. Returns them, in group order,
    for `copy_lr_into`."""
    for group in optimizer.param_groups:
        group["lr"] = torch.tensor(float(group["lr"]), device=device)
    return [group["lr"] for group in optimizer.param_groups]


def copy_lr_into(captured: list[torch.Tensor], optimizer) -> None:
    """The scheduler's current lr copied into the captured tensors, which go back in the groups.
    Torch 2.14 fills group["lr"] in place; older schedulers put a new tensor (or float) there, and
    the graph would go on reading the first rate: copying makes either way right. No host sync."""
    for tensor, group in zip(captured, optimizer.param_groups, strict=True):
        if group["lr"] is not tensor:
            tensor.copy_(torch.as_tensor(group["lr"]))
            group["lr"] = tensor
