"""Fused runs: K runs of one architecture (a cell's seeds, or a search's candidates) trained as
one model in one process, each member the run it replaces.

The K members' models are built each from its own seed (the same initial weights as its unfused
run), then their parameters and buffers are stacked on a leading member axis
(`torch.func.stack_module_state`) and the forward pass is `vmap`ped over it (PyTorch's "model
ensembling" recipe; HFTA, Wang et al. 2021, fuses the same way). BatchNorm running statistics are
stacked buffers, updated per member inside the vmap; dropout masks are drawn independently per
member (randomness="different"). The loss is the SUM of the members' mean losses, so that each
member's gradient is exactly the gradient of its own run. Adam is `StackedAdam`, below.

channels_last: each member's 4-d slice (B, C, H, W) of a stacked (K, B, C, H, W) tensor is laid
out channels_last, i.e. the stack is (K, B, H, W, C) in memory (`members_in_format`), and so are
the stacked conv weights; StackedConv2d's per-member calls then get channels_last tensors, as the
unfused channels_last run's convolutions do. Under CUDA graphs the fused step is captured whole
(`capture_fused_step`, over execution.capture_step), with StackedAdam in its capturable mode.

This module holds the fused model and optimizer; `normdrop.train` runs them in its one training
loop (`train_members`, K > 1) and writes each member's outputs as an unfused run's.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from normdrop.config import RunConfig
from normdrop.execution import capture_step
from normdrop.models import build_model


class FusedModel:
    """K models of one architecture as stacked tensors: `params` and `buffers` map each name of
    the model's state to a (K, ...) tensor; `forward(x)` maps a (K, B, ...) batch to (K, B,
    classes) logits. `models` are the K ordinary modules they were built from: `member(k)` copies
    member k's slice into its module, for evaluation with the unfused code.

    `memory_format` (the job's, as its Execution resolved it): channels_last lays each member's
    4-d conv weight out channels_last (the stack (K, O, kh, kw, I) in memory), and the member
    modules as the unfused run's."""

    def __init__(
        self,
        cfgs: list[RunConfig],
        in_shape,
        num_classes: int,
        device,
        memory_format=torch.contiguous_format,
    ):
        self.memory_format = memory_format
        self.models = []
        for cfg in cfgs:
            torch.manual_seed(cfg.seed)  # as train.build_objects: the same initial weights
            model = build_model(
                cfg.model, in_shape, num_classes, cfg.width, cfg.norm, cfg.dropout_rate, cfg.init
            )
            self.models.append(model.to(device, memory_format=memory_format))
        params, buffers = stack_module_state(self.models)
        # Module.to(memory_format=...) converts the 4-d tensors: here the stacked 5-d ones.
        self.params = {
            n: members_in_format(p.detach(), memory_format).requires_grad_()
            for n, p in params.items()
        }
        self.buffers = {n: members_in_format(b, memory_format) for n, b in buffers.items()}
        self.skeleton = copy.deepcopy(self.models[0]).to("meta")  # holds the train/eval flag
        channels_last = memory_format == torch.channels_last
        for module in self.skeleton.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.__class__ = FoldedBatchNorm  # same state, the exact batching rule
                module.channels_last = channels_last  # how it folds the members (a 4-d input)
            elif type(module) in PER_MEMBER:
                module.__class__ = PER_MEMBER[type(module)]
                if isinstance(module, StackedConv2d):
                    module.channels_last = channels_last  # each member's input as its weight

        def one(p, b, x):
            return functional_call(self.skeleton, (p, b), (x,))

        self._forward = vmap(one, randomness="different")  # own dropout masks per member

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(self.params, self.buffers, x)

    def train(self) -> None:
        self.skeleton.train()

    @torch.no_grad()
    def member(self, k: int) -> torch.nn.Module:
        model = self.models[k]
        for name, t in model.named_parameters():
            t.copy_(self.params[name][k])
        for name, t in model.named_buffers():
            t.copy_(self.buffers[name][k])
        return model

    def state_dict(self) -> dict:
        return {"params": self.params, "buffers": self.buffers}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        for part in ("params", "buffers"):
            for name, t in getattr(self, part).items():
                t.copy_(state[part][name])


def members_in_format(x: torch.Tensor, memory_format) -> torch.Tensor:
    """A stacked (K, B, C, H, W) tensor (a batch, or conv weights (K, O, I, kh, kw)) with each
    member's 4-d slice in `memory_format`: for channels_last, (K, B, H, W, C) in memory,
    permuted back (one copy, none if it is so already). Anything else is returned as it is:
    the contiguous stack as built, a tensor that is not 5-d (not 4-d per member)."""
    if memory_format != torch.channels_last or x.dim() != 5:
        return x
    if x.permute(0, 1, 3, 4, 2).is_contiguous():
        return x
    return x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def _stack_members(outs: list[torch.Tensor]) -> torch.Tensor:
    """The members' outputs (each (B, ...)) stacked on dim 0; channels_last 4-d outputs (a
    StackedConv2d's, in channels_last) into a stack that keeps each member channels_last."""
    first = outs[0]
    if (
        first.dim() == 4
        and not first.is_contiguous()
        and first.is_contiguous(memory_format=torch.channels_last)
    ):
        b, c, h, w = first.shape
        out = first.new_empty((len(outs), b, h, w, c)).permute(0, 1, 4, 2, 3)
        for k, member in enumerate(outs):
            out[k].copy_(member)
        return out
    return torch.stack(outs)


class _VmapOnlyFn(torch.autograd.Function):
    """An autograd.Function used only under vmap, for its batching rule (`vmap`): autograd
    records the native ops the rule calls, so `backward` never runs."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError("only used under vmap, where autograd records the native ops")


class _FoldedBatchNormFn(_VmapOnlyFn):
    """F.batch_norm with a batching rule that folds the member axis into the channels: K
    members' (B, C, ...) inputs become one (B, K*C, ...) input and one native batch_norm call,
    per channel the very kernel of the unfused run (bitwise, on CPU). vmap's own rule
    normalizes without the affine and applies weight and bias in separate kernels: an ulp off,
    which Adam, fed BatchNorm's tiny gradients, amplified to a relative 1e-2 in the losses of
    a CNN within an epoch."""

    @staticmethod
    def forward(x, weight, bias, running_mean, running_var, training, momentum, eps, cl):
        # cl (channels_last): how vmap's rule folds a 4-d input; no meaning here
        return F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)

    @staticmethod
    def vmap(
        info, in_dims, x, weight, bias, running_mean, running_var, training, momentum, eps, cl
    ):
        state = (weight, bias, running_mean, running_var)
        if any(d != 0 for t, d in zip(state, in_dims[1:5], strict=True) if t is not None):
            raise ValueError(f"BatchNorm state must be stacked on dim 0, not {in_dims[1:5]}")

        def flat(t):  # (K, C) -> (K*C,): a view where contiguous, updated in place
            return None if t is None else t.reshape(-1)

        xs = x.movedim(in_dims[0], 1)  # (B, K, C, ...)
        b, k, c = xs.shape[:3]
        mean, var = flat(running_mean), flat(running_var)
        cl = cl and xs.dim() == 5  # channels_last: fold into a channels_last (B, K*C, H, W)
        if cl:  # (B, H, W, K*C) in memory, as the unfused channels_last run's BatchNorm input
            h, w = xs.shape[3:]
            folded = xs.permute(0, 3, 4, 1, 2).reshape(b, h, w, k * c).permute(0, 3, 1, 2)
        else:
            folded = xs.reshape(b, k * c, *xs.shape[3:])
        out = F.batch_norm(folded, mean, var, flat(weight), flat(bias), training, momentum, eps)
        for new, stacked in ((mean, running_mean), (var, running_var)):
            if stacked is not None and new.data_ptr() != stacked.data_ptr():
                stacked.copy_(new.view_as(stacked))  # a copy (a step's slice): written back
        if cl:  # back to (B, K, C, H, W), (B, H, W, K, C) in memory
            return out.permute(0, 2, 3, 1).reshape(b, h, w, k, c).permute(0, 3, 4, 1, 2), 1
        return out.view(xs.shape), 1


class FoldedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """nn.BatchNorm1d/2d's training-and-eval forward (affine, running statistics, momentum as
    set: the models' own) through `_FoldedBatchNormFn`: the fused skeleton's BatchNorms.
    `channels_last` (set by FusedModel): a 4-d input is folded channels_last."""

    channels_last = False  # the class default; FusedModel sets it on each instance

    def forward(self, x):
        if self.training:
            self.num_batches_tracked.add_(1)
        use_batch = self.training or self.running_mean is None
        return _FoldedBatchNormFn.apply(
            x, self.weight, self.bias, self.running_mean, self.running_var,
            use_batch, self.momentum, self.eps, self.channels_last,
        )  # fmt: skip


class _PerMemberFn(_VmapOnlyFn):
    """`fn(x, weight, bias, *args)` (F.conv2d, F.linear) with stacked weights, one call per
    member under vmap: the very call of the unfused run. vmap's own rules (a grouped
    convolution, a batched matmul) sum the weight gradients of some layers in another order
    on CPU (relative 1e-7 to 2e-6), which Adam, fed tiny gradients, amplified to a relative
    1e-2 in a CNN's losses within an epoch (tests/test_fusion.py). K calls instead of one."""

    @staticmethod
    def forward(fn, x, weight, bias, *args):
        return fn(x, weight, bias, *args)

    @staticmethod
    def vmap(info, in_dims, fn, x, weight, bias, *args):
        def member(t, d, k):
            return t if t is None or d is None else t.select(d, k)

        dims = in_dims[1:4]
        out = [
            fn(*(member(t, d, k) for t, d in zip((x, weight, bias), dims, strict=True)), *args)
            for k in range(info.batch_size)
        ]
        return _stack_members(out), 0


def _conv2d_channels_last(x, weight, bias, *args):
    """F.conv2d on a channels_last copy of a member's input slice (none if it is one already):
    what the unfused channels_last run's convolution gets (after a folded BatchNorm a member's
    slice is strided across the members)."""
    return F.conv2d(x.contiguous(memory_format=torch.channels_last), weight, bias, *args)


class StackedConv2d(nn.Conv2d):
    """nn.Conv2d (zero padding, as every model here), one call per member (`_PerMemberFn`).
    `channels_last` (set by FusedModel): each member's input made channels_last, as its weight."""

    channels_last = False

    def forward(self, x):
        args = (self.stride, self.padding, self.dilation, self.groups)
        conv = _conv2d_channels_last if self.channels_last else F.conv2d
        return _PerMemberFn.apply(conv, x, self.weight, self.bias, *args)


class StackedLinear(nn.Linear):
    """nn.Linear, one call per member (`_PerMemberFn`)."""

    def forward(self, x):
        return _PerMemberFn.apply(F.linear, x, self.weight, self.bias)


def _layer_norm(x, weight, bias, shape, eps):
    return F.layer_norm(x, shape, weight, bias, eps)


def _group_norm(x, weight, bias, groups, eps):
    return F.group_norm(x, groups, weight, bias, eps)


def _rms_norm(x, weight, bias, shape, eps):
    return F.rms_norm(x, shape, weight, eps)


class StackedLayerNorm(nn.LayerNorm):
    def forward(self, x):
        args = (self.normalized_shape, self.eps)
        return _PerMemberFn.apply(_layer_norm, x, self.weight, self.bias, *args)


class StackedGroupNorm(nn.GroupNorm):
    def forward(self, x):
        args = (self.num_groups, self.eps)
        return _PerMemberFn.apply(_group_norm, x, self.weight, self.bias, *args)


class StackedRMSNorm(nn.RMSNorm):
    def forward(self, x):
        return _PerMemberFn.apply(_rms_norm, x, self.weight, None, self.normalized_shape, self.eps)


# The fused skeleton's layers that run one call per member (same state, same init).
PER_MEMBER = {
    nn.Conv2d: StackedConv2d,
    nn.Linear: StackedLinear,
    nn.LayerNorm: StackedLayerNorm,
    nn.GroupNorm: StackedGroupNorm,
    nn.RMSNorm: StackedRMSNorm,
}


class StackedAdam:
    """Adam (torch.optim.Adam's arithmetic, single-tensor path, L2 weight decay) over stacked
    (K, ...) parameters, with one learning rate per member.

    Why not torch.optim.Adam: it takes one lr per param group, and a group holds whole tensors;
    a member is a slice of every stacked tensor, so K members cannot be K groups. Here the rate
    is a (K,) tensor broadcast over each parameter's trailing dims. The rates themselves come
    from `schedule_groups`: one torch param group per member (a dummy parameter each), stepped
    by the run's own scheduler (train.make_scheduler), so each member's rate follows exactly
    the arithmetic of its unfused run. `active` (K,) masks the update of a frozen (diverged)
    member: its weights stay as they were.

    `capturable` (for CUDA graphs, `capture_fused_step`): nothing a step reads may be a host
    number that changes between steps. The step count is then a float64 device tensor and the
    bias corrections are computed from it on the device (torch's capturable Adam does the
    same, in float32), where the default mode computes them as Python floats on the host. The
    (K,) lr tensor is one fixed tensor in both modes, filled in place by `read_lrs`. On CPU
    both modes give bitwise the same parameters (tests/test_fusion.py); on CUDA the device's
    float64 pow may differ from the host's libm by an ulp of the bias correction, far below
    what its float32 cast keeps."""

    def __init__(self, params: dict, cfgs: list[RunConfig], device, capturable: bool = False):
        cfg = cfgs[0]
        self.params = params
        self.betas, self.eps, self.weight_decay = cfg.adam_betas, cfg.adam_eps, cfg.weight_decay
        self.capturable = capturable
        self.step_count = 0  # the default mode's; capturable: step_t
        self.step_t = torch.zeros((), dtype=torch.float64, device=device) if capturable else None
        self.exp_avg = {n: torch.zeros_like(p) for n, p in params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in params.items()}
        dummies = [{"params": [torch.zeros(())], "lr": c.lr} for c in cfgs]
        self.schedule_groups = torch.optim.SGD(dummies, lr=cfg.lr)  # lr holder, never stepped
        # What torch's step wrapper sets: the scheduler's "step before optimizer.step" warning
        # does not apply to a holder that is never stepped.
        self.schedule_groups._opt_called = True
        self.device = device
        self.lr = torch.zeros(len(cfgs), dtype=torch.float64, device=device)  # (K,), fixed
        self.read_lrs()

    def read_lrs(self) -> torch.Tensor:
        """The members' current rates copied into the (K,) float64 tensor `lr` on the device
        (a graph captured before reads the new rates): after each scheduler step (once per
        epoch, one small copy)."""
        lrs = [float(g["lr"]) for g in self.schedule_groups.param_groups]
        self.lr.copy_(torch.tensor(lrs, dtype=torch.float64))
        return self.lr

    @property
    def steps_taken(self) -> int:
        """Adam steps so far (capturable: reads the device count, a host sync)."""
        return int(self.step_t.item()) if self.capturable else self.step_count

    @property
    def state(self) -> dict:
        """Per stacked parameter, the tensors a step writes in place, laid out as torch
        optimizers' `state` (parameter -> {name: tensor}): what a capture saves and puts back
        (execution.snapshot_train_state). The default mode's step count is a host int: not here
        (it cannot be captured either)."""
        step = {"step": self.step_t} if self.capturable else {}
        return {
            p: {"exp_avg": self.exp_avg[n], "exp_avg_sq": self.exp_avg_sq[n], **step}
            for n, p in self.params.items()
        }

    def zero_grad(self, set_to_none: bool = True) -> None:
        """The gradients set to None (the only way here: `set_to_none` as torch's signature)."""
        for p in self.params.values():
            p.grad = None

    def _bias_corrections(self) -> tuple:
        """(1 - beta1^t, sqrt(1 - beta2^t)) after counting this step, in float64: Python floats
        on the host, or (capturable) 0-d tensors on the device, the same arithmetic."""
        beta1, beta2 = self.betas
        if not self.capturable:
            self.step_count += 1
            return 1 - beta1**self.step_count, (1 - beta2**self.step_count) ** 0.5
        self.step_t.add_(1)
        return 1 - torch.pow(beta1, self.step_t), (1 - torch.pow(beta2, self.step_t)).sqrt()

    @torch.no_grad()
    def step(self, active: torch.Tensor) -> None:
        beta1, beta2 = self.betas
        bias_correction1, bias_correction2_sqrt = self._bias_corrections()
        # lr / bias_correction1 in float64, then float32: torch computes the python float so
        # and its kernel casts it to the parameter's dtype.
        step_size = (self.lr / bias_correction1).float()
        for name, param in self.params.items():
            grad = param.grad
            if self.weight_decay != 0:
                grad = grad.add(param, alpha=self.weight_decay)
            exp_avg, exp_avg_sq = self.exp_avg[name], self.exp_avg_sq[name]
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            # capturable: a float64 0-d device tensor, cast to float32 by the division, as the
            # Python float is by the kernel
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
            shape = (-1,) + (1,) * (param.dim() - 1)  # (K, 1, ...): broadcasts per member
            # addcdiv's kernel: param + (value * exp_avg) / denom, value = -step_size
            update = exp_avg * step_size.view(shape) / denom
            param.copy_(torch.where(active.view(shape), param - update, param))

    def state_dict(self) -> dict:
        return {
            "step": self.steps_taken,  # an int in either mode: a checkpoint resumes in both
            "exp_avg": self.exp_avg,
            "exp_avg_sq": self.exp_avg_sq,
            "lr_groups": self.schedule_groups.state_dict(),
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step"])
        if self.capturable:
            self.step_t.fill_(self.step_count)
        for part in ("exp_avg", "exp_avg_sq"):
            for name, t in getattr(self, part).items():
                t.copy_(state[part][name])
        self.schedule_groups.load_state_dict(state["lr_groups"])
        for group in self.schedule_groups.param_groups:
            group["lr"] = float(group["lr"])
        self.read_lrs()


def clip_per_member(params: dict, max_norm: float) -> None:
    """torch.nn.utils.clip_grad_norm_ for each member alone: a member's global L2 norm is taken
    over its slices of every stacked (K, ...) gradient, and only its slices are scaled. By hand:
    torch's function sees one norm over all K members' gradients."""
    grads = [p.grad for p in params.values() if p.grad is not None]
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads], 1).norm(dim=1)  # (K,)
    coef = torch.clamp(max_norm / (norms + 1e-6), max=1.0)  # clip_grad_norm_'s arithmetic
    for g in grads:
        g.mul_(coef.view(-1, *(1,) * (g.dim() - 1)))


def make_fused_step(model: FusedModel, optimizer: StackedAdam, device, bf16: bool, clip=0.0):
    """One fused training step: `step(x (K, B, ...), y (K, B), active (K,)) -> (losses (K,),
    correct counts (K,))` on the device. The members' mean losses are summed before backward,
    so each member's gradient is that of its own mean loss (the members share no parameter).
    `clip` > 0: each member's gradients clipped to that global norm (settings' grad_clip_norm).
    x is laid out in the model's memory format first (`members_in_format`: a copy unless it is
    so already, as a captured graph's static batch is)."""

    def step(x, y, active):
        x = members_in_format(x, model.memory_format)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
            logits = model.forward(x)  # (K, B, classes)
        # Each member's mean loss by the unfused call, one per member: a per-sample loss
        # averaged per member (one kernel) differs from cross_entropy's own mean by an ulp.
        losses = torch.stack(
            [F.cross_entropy(lg.float(), t) for lg, t in zip(logits, y, strict=True)]
        )
        optimizer.zero_grad()
        losses.sum().backward()
        if clip > 0:
            clip_per_member(optimizer.params, clip)
        optimizer.step(active)
        return losses.detach(), (logits.argmax(2) == y).sum(1)

    return step


def capture_fused_step(step_fn, model: FusedModel, optimizer: StackedAdam, x_shape, device,
                       warmup: int = 3):  # fmt: skip
    """`make_fused_step`'s step as one CUDA graph for batches of x_shape (K, B, ...)
    (execution.capture_step, as train's K = 1 step): returns `graph_step(x, y, active)`. The
    static batch is laid out in the model's memory format, so the copy into it converts; the
    optimizer must be capturable (device step count, fixed lr tensor). CUDA only."""
    if not optimizer.capturable:
        raise ValueError("capture_fused_step needs StackedAdam(..., capturable=True)")
    static_x = members_in_format(torch.zeros(x_shape, device=device), model.memory_format)
    static_y = torch.zeros(x_shape[:2], dtype=torch.long, device=device)
    static_active = torch.ones(x_shape[0], dtype=torch.bool, device=device)
    static = (static_x, static_y, static_active)
    return capture_step(step_fn, static, model, optimizer, device, warmup)
