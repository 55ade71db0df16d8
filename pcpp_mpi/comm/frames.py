"""Token frames: the keys and values of every band of a group, in place, for one attention layer.

A frame is a token-major tensor ``(N, B, C)`` on the wire device: ``N`` the tokens of the
whole image at the layer's level in band order (global, row-major), ``B`` the batch of one
rank, ``C`` keys and values side by side. With the tokens outermost, any run of tokens is one
contiguous piece of memory, so the exchanges of a layer receive straight into the frame and
send straight out of it, and a displaced step's attention reads its whole context (the
neighbours' stale rows around its own fresh ones) as one strided view: no concatenation and
no copy into a send buffer.

Two frames, one per step parity. The exchange set of step ``t`` (see
:mod:`pcpp_mpi.comm.exchanges`) *sends* from frame ``t % 2`` and *receives* into frame
``(t + 1) % 2``: a displaced step ``t`` writes its own fresh keys and values into frame
``t % 2``, which is sent from (for step ``t + 1`` of the neighbours) and already holds what
step ``t - 1`` received. Reuse is safe by the exchanges' book-keeping: frame ``t % 2`` is
written again by step ``t + 2`` only after set ``t`` (its sends) and set ``t + 1`` (its
receives) completed, and set ``t``'s receives start only once step ``t``'s work is on the
compute stream, after everything of step ``t - 1`` that read that frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

import torch

from pcpp_mpi.comm.wire import WireSpec


class TokenFrames:
    """The two frames of one attention layer: ``band_tokens[i]`` tokens for band ``i``."""

    def __init__(
        self, wire: WireSpec, *, batch: int, channels: int, band_tokens: Sequence[int]
    ) -> None:
        if not band_tokens or min(band_tokens) < 1 or batch < 1 or channels < 1:
            raise ValueError(f"bad frame: batch {batch}, channels {channels}, {band_tokens}")
        self.wire = wire
        self.batch = batch
        self.channels = channels
        self.starts = (0, *accumulate(band_tokens))
        self._frames = [wire.empty((self.starts[-1], batch, channels)) for _ in range(2)]

    @property
    def readable_in_place(self) -> bool:
        """Whether layers may read and write the frames directly (they are on the compute
        device: MPI takes device buffers, or everything runs on the CPU)."""
        return not self.wire.staged

    def band(self, index: int) -> tuple[int, int]:
        """Token range ``[start, stop)`` of band ``index``."""
        return self.starts[index], self.starts[index + 1]

    def wire_tokens(self, parity: int, start: int, stop: int) -> torch.Tensor:
        """Tokens ``[start, stop)`` of frame ``parity`` as MPI sees them: ``(n, B, C)``,
        contiguous."""
        if not 0 <= start <= stop <= self.starts[-1]:
            raise ValueError(f"tokens [{start}, {stop}) outside a frame of {self.starts[-1]}")
        return self._frames[parity][start:stop]

    def tokens(self, parity: int, start: int, stop: int) -> torch.Tensor:
        """Tokens ``[start, stop)`` of frame ``parity`` as layers see them: ``(B, n, C)``, a
        strided view (batch stride ``C``, token stride ``B * C``)."""
        return self.wire_tokens(parity, start, stop).transpose(0, 1)
