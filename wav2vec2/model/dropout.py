"""Dropout whose CPU mask costs a fifth of `bernoulli_` (issue #11).

On a CPU, torch draws a dropout mask with `bernoulli_`, about 6-17 ns per element on this
machine: in a BASE update at 2 x 15.6 s the 25 dropouts of the residual stream took 0.5 s,
4 % of the step (`python scripts/bench.py profile --profile-seconds 15.6`). Here the mask comes
from `random_()` on int32, split into two 16-bit halves that each decide one unit, and is kept
as one byte per element for the backward. A unit is dropped with probability
round(p * 32768) / 32768, at most 1.5e-5 away from p. The draws come from torch's global RNG,
as `nn.Dropout`'s do, so seeding and activation checkpointing's RNG replay work unchanged. On
other devices this is `nn.Dropout`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def draw_keep_mask_(keep: Tensor, p: float) -> Tensor:
    """Fill `keep` (uint8, last dim even and contiguous) with 1 = keep, 0 = drop (P = p).

    One int32 `random_()` draw is 31 uniform bits: its low int16 half is uniform over
    [-2^15, 2^15), its high half over [0, 2^15). Each half decides one unit.
    """
    if keep.shape[-1] % 2:
        raise ValueError(f"keep mask needs an even last dim, got {tuple(keep.shape)}")
    threshold = round(p * 32768)  # drop when a 15-bit uniform draw < threshold
    draws = torch.empty(keep.shape[:-1] + (keep.shape[-1] // 2,), dtype=torch.int32,
                        device=keep.device).random_()
    halves = draws.view(torch.int16)  # (..., S/2) -> (..., S): [low, high, low, high, ...]
    keep_bool = keep.view(torch.bool)
    torch.ge(halves[..., 0::2], 2 * threshold - 32768, out=keep_bool[..., 0::2])
    torch.ge(halves[..., 1::2], threshold, out=keep_bool[..., 1::2])
    return keep


class _CpuDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:  # type: ignore[override]
        n = x.numel()
        keep = draw_keep_mask_(torch.empty(n + n % 2, dtype=torch.uint8), p)[:n].view(x.shape)
        ctx.save_for_backward(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return (x * keep).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (keep,) = ctx.saved_tensors
        return (grad * keep).mul_(ctx.scale), None


class Dropout(nn.Dropout):
    """`nn.Dropout` (same `p`, state and semantics), with the cheap mask on a CPU."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu" or self.inplace or not 0 < self.p < 1:
            return F.dropout(x, self.p, True, self.inplace)
        return _CpuDropout.apply(x, self.p)
