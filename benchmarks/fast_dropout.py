"""Prototype (benchmarks only, not used by src/): a CPU dropout whose mask costs ~10x less.

On CPU, `nn.Dropout` draws one float Bernoulli number per element (aten::bernoulli_, ~14 ns per
element on the benchmark machine's 2 cores) and then multiplies twice; that RNG dominates. This
version draws one 64-bit random number per FOUR elements (torch's CPU generator, so the seed still
fixes it), splits it into four 16-bit uniforms, keeps an element when its uniform is at or above
round(p * 65536) (so the rate is p to within 2**-17; 0.3 -> 0.300003), writes the mask straight
into a float tensor (torch.ge(..., out=float)) scaled by 1/(1-p), and multiplies: the same
forward and backward products as F.dropout, with a cheaper draw.
"""

from __future__ import annotations

import torch
from torch import nn


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    if not training or p == 0:
        return x
    n = x.numel()
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        x = x.contiguous()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)
    # Four int16 uniforms per draw, laid out in x's own memory order (contiguous/channels_last).
    u = bits.view(torch.int16)[:n].as_strided(x.shape, x.stride())
    noise = torch.empty_like(x)  # 1/(1-p) where kept, else 0 (what F.dropout multiplies by)
    torch.ge(u, round(p * 65536) - 32768, out=noise)
    noise.mul_(1.0 / (1.0 - p))
    return x * noise  # autograd: grad * noise


class FastDropout(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        return fast_dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


def replace_dropout(model: nn.Module) -> nn.Module:
    """Swap every nn.Dropout of `model` for a FastDropout of the same rate (in place)."""
    for name, child in model.named_children():
        if isinstance(child, nn.Dropout):
            setattr(model, name, FastDropout(child.p))
        else:
            replace_dropout(child)
    return model


if __name__ == "__main__":  # a quick check of rate, scale, gradient and determinism
    torch.manual_seed(0)
    x = torch.randn(128, 32, 32, 32, requires_grad=True)
    for fmt in (torch.contiguous_format, torch.channels_last):
        xi = x.detach().contiguous(memory_format=fmt).requires_grad_()
        torch.manual_seed(1)
        y = fast_dropout(xi, 0.3)
        y.sum().backward()
        kept = (y != 0).float().mean().item()
        torch.manual_seed(1)
        y2 = fast_dropout(xi.detach(), 0.3)
        same_grad = torch.equal(xi.grad != 0, y != 0) and torch.allclose(
            xi.grad[y != 0], torch.full_like(xi.grad[y != 0], 1 / 0.7)
        )
        print(f"{fmt}: kept {kept:.5f} (expect 0.70000), deterministic {torch.equal(y, y2)}, "
              f"grad = mask/(1-p): {same_grad}, output channels_last "
              f"{y.is_contiguous(memory_format=torch.channels_last)}")  # fmt: skip
