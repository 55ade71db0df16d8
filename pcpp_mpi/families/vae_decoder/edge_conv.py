"""A "same" Conv2d on a band whose edge rows are recomputed with the neighbours' halo rows.

The band is convolved with the convolution's own zero padding while its edge rows travel;
then only the ``padding`` output rows at each shared edge, whose inputs reach into the
neighbour, are computed again from a thin slab (the received rows and the band's first or last
rows). No halo-extended copy of the band is made: at the decoder's last levels a band is
gigabytes, and that copy would add one more band-sized tensor to the decode's peak memory.
"""

from __future__ import annotations

import torch
from torch import nn

from pcpp_mpi.geometry import Halo
from pcpp_mpi.parallel.clock import StepClock
from pcpp_mpi.parallel.halo_conv import HaloConv2d, RowExchange


def fits_edge_conv(conv: nn.Conv2d, halo: Halo) -> bool:
    """Whether ``conv`` keeps the height (stride 1, ``padding`` rows each side, as many as
    it reads beyond a row), which :class:`EdgeHaloConv2d` needs."""
    return (
        conv.stride[0] == 1
        and not isinstance(conv.padding, str)
        and halo.above == halo.below == conv.padding[0]
    )


class EdgeHaloConv2d(HaloConv2d):
    """Wraps a zero-padded, height-preserving ``nn.Conv2d`` (:func:`fits_edge_conv`); input
    ``(B, C, h, W)`` and output ``(B, C', h, W')`` are local bands. Every call is a fresh
    exchange (the clock's ``sync`` step), posted before the band is convolved and waited after.
    A band with fewer rows than the kernel reaches takes the parent's halo-extended path."""

    def __init__(self, conv: nn.Conv2d, halo: Halo, exchange: RowExchange, clock: StepClock):
        super().__init__(conv, halo, exchange, clock)
        self.pad = conv.padding[0]
        self.reach = conv.dilation[0] * (conv.kernel_size[0] - 1)  # input rows one output reads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.pad:
            return self.conv(x)
        rows = x.shape[2]
        if rows < self.reach:
            return super().forward(x)
        assert self.exchange is not None
        step, pad, reach = self.clock.step, self.pad, self.reach
        self.exchange.post(step, x[:, :, :pad], x[:, :, rows - pad :])
        out = self.conv(x)
        from_up, from_down = self.exchange.wait(step)
        if from_up is not None:
            # the first `pad` output rows read the `pad` rows above and `reach` own rows
            out[:, :, :pad] = self._conv(torch.cat([from_up, x[:, :, :reach]], dim=2))
        if from_down is not None:
            out[:, :, rows - pad :] = self._conv(torch.cat([x[:, :, rows - reach :], from_down], 2))
        return out
