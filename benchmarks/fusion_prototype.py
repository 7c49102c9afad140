"""PROTOTYPE, for speed only, not wired into the workflow: the seeds of one cell as one model.

Parameters and BatchNorm buffers of the k seeds' models are stacked on a leading seed axis and
the forward pass is vmapped over it (`torch.func.stack_module_state` + `vmap` over
`functional_call`, dropout masks different per seed); one Adam steps the stacked parameters
(elementwise, so it equals k separate Adams). Each seed keeps its own data order. Whether the
workflow should train a cell's seeds this way is for a GPU to decide: gpu_check.py's `fusion`
section sets its images/s against k separate processes. Until then it lives here, alone.
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F

from normdrop.config import RunConfig
from normdrop.data import Prepared, normalize, standardization
from normdrop.models import build_model


def fused_images_per_s(cfg: RunConfig, data: Prepared, device: torch.device, seeds) -> float:
    """Aggregate training images/s of len(seeds) copies of cfg's model trained as one, over one
    epoch of data (after a one-step warm-up); bf16 autocast on CUDA as the workflow does."""
    from torch.func import functional_call, stack_module_state, vmap

    k, batch, data = len(seeds), cfg.batch_size, data.to(device)
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        m = build_model(
            cfg.model, data.in_shape, data.num_classes, cfg.width, cfg.norm, cfg.dropout_rate
        )
        models.append(m.to(device))
    params, buffers = stack_module_state(models)  # (k, ...) each
    params = {n: p.detach().requires_grad_() for n, p in params.items()}
    skeleton = copy.deepcopy(models[0]).to("meta")

    def one_model(p, b, x):
        return functional_call(skeleton, (p, b), (x,))

    forward = vmap(one_model, randomness="different")
    optimizer = torch.optim.Adam(params.values(), lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps)
    scale, shift = standardization(data.mean, data.std)  # (1, C, 1, 1): broadcasts over k too
    gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    n_steps = len(data.train_y) // batch

    def epoch(steps: int) -> None:
        perms = torch.stack(
            [torch.randperm(len(data.train_y), device=device, generator=g) for g in gens]
        )
        for step in range(steps):
            idx = perms[:, step * batch : (step + 1) * batch]  # (k, B): each seed's own order
            x = normalize(data.train_x[idx], scale, shift)  # (k, B, C, H, W)
            y = data.train_y[idx]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = forward(params, buffers, x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())  # mean over k*B
            optimizer.zero_grad(set_to_none=True)
            (loss * k).backward()  # each seed's gradient is that of its own mean loss
            optimizer.step()

    epoch(1)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    epoch(n_steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return k * n_steps * batch / (time.perf_counter() - t0)
