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

    def wait_others(self, step: int) -> torch.Tensor: ...


def local_group_stats(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``(3, B, G)`` float64 on ``x``'s device: per-group sum, sum of squares and element count
    of a local band ``x`` of shape ``(B, C, h, W)``.

    Sums accumulate in float64, written straight into the result (a few kernels: in a step
    with ~50 norms every small kernel counts); on a GPU without a squared copy of ``x`` (a
    half-precision square would also overflow above 256).
    """
    batch = x.shape[0]
    grouped = x.reshape(batch, groups, -1)
    stats = torch.empty((3, batch, groups), dtype=torch.float64, device=x.device)
    torch.sum(grouped, dim=-1, dtype=torch.float64, out=stats[0])
    if x.device.type == "cpu":
        torch.sum(grouped.square(), dim=-1, dtype=torch.float64, out=stats[1])
    else:
        torch.linalg.vector_norm(grouped, dim=-1, dtype=torch.float64, out=stats[1])
        stats[1].square_()
    stats[2].fill_(grouped.shape[-1])
    return stats


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
        self._affine_key: tuple | None = None
        self._affine_cache: tuple[torch.Tensor, torch.Tensor] | None = None

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
            # the other bands' stale share (on the device, so that a CUDA graph of the step
            # replays this addition too)
            others = self.exchange.wait_others(clock.step - 1)
            stats = others.to(x.device, non_blocking=True) + local
        return self._normalize(x, stats)

    def _normalize(self, x: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        """``x`` normalised with group statistics ``(3, B, G)`` (sums, squares, counts), then
        the affine map: one pass over ``x`` as ``x * scale + shift`` per (sample, channel)."""
        norm = self.norm
        total, squares, count = stats
        mean = total / count
        var = torch.addcmul(squares / count, mean, mean, value=-1.0).clamp_min_(0.0)
        inv_std = var.add_(norm.eps).rsqrt_().unsqueeze(-1)  # (B, G, 1)
        mean = mean.unsqueeze(-1)
        affine = self._affine(x.device)
        if affine is None:
            scale = inv_std.expand(-1, -1, x.shape[1] // norm.num_groups)
            shift = -mean * scale
        else:
            weight, bias = affine  # (G, C/G)
            scale = inv_std * weight
            shift = torch.addcmul(bias, mean, scale, value=-1.0)
        shape = (x.shape[0], x.shape[1], *([1] * (x.ndim - 2)))
        return torch.addcmul(shift.to(x.dtype).view(shape), x, scale.to(x.dtype).reshape(shape))

    def _affine(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Weight and bias as float64 ``(G, C/G)`` on ``device``, converted once (and again
        only if the parameters change)."""
        norm = self.norm
        if not norm.affine:
            return None
        key = (device, norm.weight.data_ptr(), norm.weight._version, norm.bias._version)
        if self._affine_key != key:
            groups = norm.num_groups
            self._affine_cache = (
                norm.weight.detach().to(device, torch.float64).view(groups, -1),
                norm.bias.detach().to(device, torch.float64).view(groups, -1),
            )
            self._affine_key = key
        return self._affine_cache
