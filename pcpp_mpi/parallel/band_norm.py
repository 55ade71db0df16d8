"""GroupNorm over a band with statistics shared by all bands."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from pcpp_mpi.parallel.clock import StepClock


class StatsExchange(Protocol):
    def post(self, step: int, local: torch.Tensor) -> None: ...

    def wait(self, step: int) -> torch.Tensor: ...

    def posted(self, step: int) -> torch.Tensor: ...


def local_group_stats(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``(3, B, G)`` float64 on ``x``'s device: per-group sum, sum of squares and element count
    of a local band ``x`` of shape ``(B, C, h, W)``."""
    batch = x.shape[0]
    grouped = x.reshape(batch, groups, -1)
    accumulate = torch.float64 if x.device.type == "cpu" else torch.float32
    total = grouped.sum(dim=-1, dtype=accumulate)
    squares = grouped.square().sum(dim=-1, dtype=accumulate)
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
        local = local_group_stats(x, norm.num_groups)
        clock = self.clock
        if self.exchange is None or clock.kind == "local":
            stats = local
        elif clock.fresh:
            self.exchange.post(clock.step, local)
            stats = self.exchange.wait(clock.step).to(x.device, non_blocking=True)
        else:
            if clock.posts_for_next:
                self.exchange.post(clock.step, local)
            previous = clock.step - 1
            stale = self.exchange.wait(previous) - self.exchange.posted(previous)
            stats = stale.to(x.device, non_blocking=True) + local
        total, squares, count = stats
        mean = total / count
        var = (squares / count - mean.square()).clamp_min(0.0)
        inv_std = torch.rsqrt(var + norm.eps)
        batch = x.shape[0]
        shape = (batch, norm.num_groups, 1)
        grouped = x.reshape(batch, norm.num_groups, -1)
        mean_t = mean.to(torch.float32).view(shape)
        inv_t = inv_std.to(torch.float32).view(shape)
        y = ((grouped.float() - mean_t) * inv_t).to(x.dtype).reshape(x.shape)
        if norm.affine:
            y = y * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)
        return y
