"""A Conv2d that runs on one band, with halo rows from the neighbouring bands."""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from pcpp_mpi.geometry import Halo
from pcpp_mpi.parallel.clock import StepClock
from pcpp_mpi.parallel.exchange_ops import ExchangeOps


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
    ``always_fresh`` (``conv_in``, whose input is the step's own latent). The halo-extended
    input is a concatenation along the height.
    """

    def __init__(
        self,
        conv: nn.Conv2d,
        halo: Halo,
        exchange: RowExchange | None,
        clock: StepClock,
        always_fresh: bool = False,
        ops: ExchangeOps | None = None,
    ) -> None:
        super().__init__()
        self.conv = conv
        self.halo = halo
        self.exchange = exchange
        self.clock = clock
        self.always_fresh = always_fresh
        self._zero_rows: dict[tuple, torch.Tensor] = {}
        self._ops = ops
        self._op_index = -1 if ops is None else ops.add_conv(self)

    def _zeros(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        """Zero rows beyond the image edge, allocated once per shape (never written)."""
        shape = (x.shape[0], x.shape[1], rows, x.shape[3])
        key = (*shape, x.dtype, x.device)
        zeros = self._zero_rows.get(key)
        if zeros is None:
            zeros = self._zero_rows[key] = x.new_zeros(shape)
        return zeros

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._ops is not None:
            return self._traced_forward(x, self._ops)
        above, below = self.halo.above, self.halo.below
        from_up = from_down = None
        clock = self.clock
        conv = self.conv
        if self.exchange is None or clock.kind == "local":
            if above == below == conv.padding[0]:  # zero halos are the conv's own padding
                return conv(x)
        else:
            from_up, from_down = self._exchange(x)
        parts = []
        if above:
            parts.append(from_up if from_up is not None else self._zeros(x, above))
        parts.append(x)
        if below:
            parts.append(from_down if from_down is not None else self._zeros(x, below))
        return self._conv(torch.cat(parts, dim=2) if len(parts) > 1 else x)

    def _traced_forward(self, x: torch.Tensor, ops: ExchangeOps) -> torch.Tensor:
        """The path ``torch.compile`` traces: the exchange is one ``halo`` operator call
        (:meth:`exchange_halo` behind it) whose rows are concatenated around the band."""
        above, below = self.halo.above, self.halo.below
        conv = self.conv
        if self.exchange is not None and self.clock.phase != "local":
            rows = ops.halo(x, self._op_index)
            parts = [*rows[:1], x, *rows[1:]] if above else [x, *rows]
            return self._conv(torch.cat(parts, dim=2))
        if above == below == conv.padding[0]:
            return conv(x)
        batch, channels, _, width = x.shape
        parts = [x.new_zeros((batch, channels, n, width)) for n in (above,) if n]
        parts.append(x)
        parts.extend(x.new_zeros((batch, channels, n, width)) for n in (below,) if n)
        return self._conv(torch.cat(parts, dim=2) if len(parts) > 1 else x)

    def exchange_halo(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Behind the ``halo`` operator: post the edge rows of the local band ``x``
        ``(B, C, h, W)`` for this step and return the rows this step reads around it (fresh,
        or the previous step's): ``(B, C, above, W)`` from the band above if ``above``, then
        ``(B, C, below, W)`` from the band below if ``below``; new zero rows at an image edge.
        Always new tensors (the received rows copied): the compiled graph owns what an
        operator returns and may reuse its memory (:mod:`~pcpp_mpi.parallel.exchange_ops`).

        Every call returns at least one tensor, which the convolution reads: an operator
        whose outputs nobody used would be removed from the compiled graph, and with it the
        rows this band sends."""
        from_up, from_down = self._exchange(x)
        batch, channels, _, width = x.shape
        rows = []
        for received, n in ((from_up, self.halo.above), (from_down, self.halo.below)):
            if n:
                zeros = received is None
                rows.append(x.new_zeros((batch, channels, n, width)) if zeros else received.clone())
        return rows

    def _exchange(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Post the edge rows of ``x`` for this step; the neighbours' rows it reads (``None``
        at an image edge)."""
        assert self.exchange is not None
        above, below = self.halo.above, self.halo.below
        clock = self.clock
        to_up = x[:, :, :below] if below else None
        to_down = x[:, :, x.shape[2] - above :] if above else None
        if clock.fresh or self.always_fresh:
            self.exchange.post(clock.step, to_up, to_down)
            return self.exchange.wait(clock.step)
        if clock.posts_for_next:
            self.exchange.post(clock.step, to_up, to_down)
        return self.exchange.wait(clock.step - 1)

    def received_halo_shapes(self, x: torch.Tensor) -> list[tuple[int, ...]]:
        """Shapes of what :meth:`exchange_halo` returns for a band shaped like ``x``."""
        batch, channels, _, width = x.shape
        return [(batch, channels, n, width) for n in (self.halo.above, self.halo.below) if n]

    def _conv(self, extended: torch.Tensor) -> torch.Tensor:
        """The wrapped convolution over a halo-extended band, no padding along the height."""
        conv = self.conv
        return F.conv2d(
            extended,
            conv.weight,
            conv.bias,
            stride=conv.stride,
            padding=(0, conv.padding[1]),
            dilation=conv.dilation,
            groups=conv.groups,
        )
