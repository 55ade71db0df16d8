"""A Conv2d that runs on one band, with halo rows from the neighbouring bands."""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from pcpp_mpi.geometry import Halo
from pcpp_mpi.parallel.clock import StepClock


class RowExchange(Protocol):
    def post(self, step: int, to_up: torch.Tensor | None, to_down: torch.Tensor | None) -> None: ...

    def wait(self, step: int) -> tuple[torch.Tensor | None, torch.Tensor | None]: ...


class HaloConv2d(nn.Module):
    """Wraps a zero-padded ``nn.Conv2d``; input and output are local bands.

    Input ``(B, C, h, W)``: rows of this band. The wrapped convolution sees
    ``halo.above`` rows from the band above, the band, and ``halo.below`` rows from the band
    below (zeros beyond the image edges, or for ``naive``), with no padding along the height:
    output ``(B, C', h / stride, W')`` equals the matching rows of the full-image convolution.
    In displaced steps the halo is the neighbours' rows from the previous step, except with
    ``always_fresh`` (``conv_in``, whose input is the step's own latent).
    """

    def __init__(
        self,
        conv: nn.Conv2d,
        halo: Halo,
        exchange: RowExchange | None,
        clock: StepClock,
        always_fresh: bool = False,
    ) -> None:
        super().__init__()
        self.conv = conv
        self.halo = halo
        self.exchange = exchange
        self.clock = clock
        self.always_fresh = always_fresh
        self._zero_rows: dict[tuple, torch.Tensor] = {}

    def _zeros(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        """Zero rows beyond the image edge, allocated once per shape (never written)."""
        shape = (x.shape[0], x.shape[1], rows, x.shape[3])
        key = (*shape, x.dtype, x.device)
        zeros = self._zero_rows.get(key)
        if zeros is None:
            zeros = self._zero_rows[key] = x.new_zeros(shape)
        return zeros

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        above, below = self.halo.above, self.halo.below
        from_up = from_down = None
        clock = self.clock
        conv = self.conv
        if self.exchange is None or clock.kind == "local":
            if above == below == conv.padding[0]:  # zero halos are the conv's own padding
                return conv(x)
        else:
            to_up = x[:, :, :below] if below else None
            to_down = x[:, :, x.shape[2] - above :] if above else None
            if clock.fresh or self.always_fresh:
                self.exchange.post(clock.step, to_up, to_down)
                from_up, from_down = self.exchange.wait(clock.step)
            else:
                if clock.posts_for_next:
                    self.exchange.post(clock.step, to_up, to_down)
                from_up, from_down = self.exchange.wait(clock.step - 1)
        parts = []
        if above:
            parts.append(from_up if from_up is not None else self._zeros(x, above))
        parts.append(x)
        if below:
            parts.append(from_down if from_down is not None else self._zeros(x, below))
        extended = torch.cat(parts, dim=2) if len(parts) > 1 else x
        return F.conv2d(
            extended,
            conv.weight,
            conv.bias,
            stride=conv.stride,
            padding=(0, conv.padding[1]),
            dilation=conv.dilation,
            groups=conv.groups,
        )
