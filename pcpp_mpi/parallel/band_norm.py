"""GroupNorm over a band with statistics shared by all bands."""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from pcpp_mpi.parallel.clock import StepClock


class StatsExchange(Protocol):
    def post(self, step: int, local: torch.Tensor) -> None: ...

    def wait(self, step: int) -> torch.Tensor: ...

    def posted(self, step: int) -> torch.Tensor: ...


def local_group_stats(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``(3, B, G)`` float64 on ``x``'s device: per-group sum, sum of squares and element count
    of a local band ``x`` of shape ``(B, C, h, W)``.

    On the CPU sums are float64 (exact for the tests' purposes); on a GPU they accumulate in
    float32, one read of ``x`` per statistic and no squared copy of ``x`` (a half-precision
    square would also overflow above 256).
    """
    batch = x.shape[0]
    grouped = x.reshape(batch, groups, -1)
    if x.device.type == "cpu":
        total = grouped.sum(dim=-1, dtype=torch.float64)
        squares = grouped.square().sum(dim=-1, dtype=torch.float64)
    else:
        total = grouped.sum(dim=-1, dtype=torch.float32)
        squares = torch.linalg.vector_norm(grouped, dim=-1, dtype=torch.float32).square()
    count = torch.full_like(total, grouped.shape[-1])
    return torch.stack([total, squares, count]).to(torch.float64)


class BandGroupNorm(nn.Module):
    """Wraps ``nn.GroupNorm``; input and output are local bands ``(B, C, h, W)``.

    Statistics: ``local`` uses the band's own; ``sync`` all-reduces fresh sums; ``displaced``
    takes the previous step's global sums and replaces this band's stale share with its fresh
    one (DistriFusion's corrected stale GroupNorm, exact for unequal bands because it works on
    sums and counts rather than means).
    """

    def __init__(
        self, norm: nn.GroupNorm, exchange: StatsExchange | None, clock: StepClock
    ) -> None:
        super().__init__()
        self.norm = norm
        self.exchange = exchange
        self.clock = clock

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.norm
        clock = self.clock
        if self.exchange is None or clock.kind == "local":
            return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
        local = local_group_stats(x, norm.num_groups)
        if clock.fresh:
            self.exchange.post(clock.step, local)
            stats = self.exchange.wait(clock.step).to(x.device, non_blocking=True)
        else:
            if clock.posts_for_next:
                self.exchange.post(clock.step, local)
            previous = clock.step - 1
            # on the device, so that a CUDA graph of the step replays this arithmetic too
            stale_global = self.exchange.wait(previous).to(x.device, non_blocking=True)
            stale_own = self.exchange.posted(previous).to(x.device, non_blocking=True)
            stats = (stale_global - stale_own) + local
        return self._normalize(x, stats)

    def _normalize(self, x: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        """``x`` normalised with group statistics ``(3, B, G)`` (sums, squares, counts), then
        the affine map: one pass over ``x`` as ``x * scale + shift`` per (sample, channel)."""
        norm = self.norm
        total, squares, count = stats
        mean = total / count
        var = (squares / count - mean.square()).clamp_min(0.0)
        inv_std = torch.rsqrt(var + norm.eps)
        batch, channels = x.shape[0], x.shape[1]
        per_group = channels // norm.num_groups
        scale = inv_std.repeat_interleave(per_group, dim=1)  # (B, C)
        shift = -mean.repeat_interleave(per_group, dim=1) * scale
        if norm.affine:
            weight = norm.weight.to(scale.dtype)
            scale = scale * weight
            shift = shift * weight + norm.bias.to(shift.dtype)
        shape = (batch, channels, *([1] * (x.ndim - 2)))
        scale = scale.to(x.dtype).view(shape)
        shift = shift.to(x.dtype).view(shape)
        return torch.addcmul(shift, x, scale)
