"""The exchanges of one rank with the other bands of an image, over a 1-D Cartesian
communicator in band order (``PROC_NULL`` beyond the image edges).

:class:`~pcpp_mpi.comm.context.RankComm` (the bands of a CFG group) and
:class:`~pcpp_mpi.comm.band_group.BandGroup` (the parallel decode's ranks) both make their
exchanges here: tags numbered in creation order, buffers and frames as asked, reported to the
rank's traffic counter, tracer, deferred MPI starts and step recorder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mpi4py import MPI

from pcpp_mpi.comm.exchanges import AllBandsExchange, NeighbourExchange, StatsAllreduce
from pcpp_mpi.comm.frames import TokenFrames
from pcpp_mpi.comm.step_stats import StepStatsAllreduce
from pcpp_mpi.comm.wire import WireSpec


def band_cart(world: MPI.Comm, color: int, key: int) -> MPI.Cartcomm:
    """The ranks of ``world`` with the same ``color`` as a 1-D, non-periodic Cartesian
    communicator ordered by ``key`` (collective over ``world``; the caller frees it)."""
    group = world.Split(color=color, key=key)
    cart: MPI.Cartcomm = group.Create_cart([group.Get_size()], periods=[False], reorder=False)
    group.Free()
    return cart


class BandExchanges:
    """Exchanges over ``bands`` (a communicator of :func:`band_cart`), with this rank's
    neighbours ``up`` and ``down`` (``None`` at the image edges). A subclass says what the
    exchanges report to (:meth:`_bookkeeping`)."""

    def __init__(self, bands: MPI.Cartcomm) -> None:
        self._bands = bands
        up, down = bands.Shift(0, 1)
        self.up: int | None = None if up == MPI.PROC_NULL else up
        self.down: int | None = None if down == MPI.PROC_NULL else down
        self._next_tag = 0

    def _bookkeeping(self) -> dict[str, Any]:
        """The ``counter``, ``tracer``, ``deferred`` and ``recorder`` every exchange
        reports to."""
        raise NotImplementedError

    def _tag(self) -> int:
        tag = self._next_tag
        self._next_tag += 1
        return tag

    def neighbour_exchange(
        self,
        name: str,
        kind: str,
        *,
        send_shapes: tuple[Sequence[int] | None, Sequence[int] | None],
        recv_shapes: tuple[Sequence[int] | None, Sequence[int] | None],
        wire: WireSpec,
        frames: TokenFrames | None = None,
        frame_band: int | None = None,
    ) -> NeighbourExchange:
        """Rows to and from the bands above and below; ``frames``: the buffers are slices of
        the frames around band ``frame_band`` (K/V rows, see :mod:`~.frames`)."""
        return NeighbourExchange(
            name=name,
            kind=kind,
            comm=self._bands,
            up=self.up,
            down=self.down,
            tag=self._tag(),
            send_shapes=send_shapes,
            recv_shapes=recv_shapes,
            wire=wire,
            **self._bookkeeping(),
            frames=frames,
            frame_band=frame_band,
        )

    def all_bands_exchange(
        self,
        name: str,
        kind: str,
        *,
        shapes: Sequence[Sequence[int]],
        wire: WireSpec,
        frames: TokenFrames | None = None,
    ) -> AllBandsExchange:
        """Every band's block to every other; ``frames``: the buffers are the frames' bands."""
        return AllBandsExchange(
            name=name,
            kind=kind,
            comm=self._bands,
            tag=self._tag(),
            shapes=shapes,
            wire=wire,
            **self._bookkeeping(),
            frames=frames,
        )

    def stats_allreduce(
        self, name: str, kind: str, *, shape: Sequence[int], wire: WireSpec
    ) -> StatsAllreduce:
        """Sums of one GroupNorm's per-band statistics over the bands."""
        return StatsAllreduce(
            name=name, kind=kind, comm=self._bands, shape=shape, wire=wire, **self._bookkeeping()
        )

    def step_stats_allreduce(
        self, name: str, kind: str, *, shapes: Sequence[Sequence[int]], wire: WireSpec
    ) -> StepStatsAllreduce:
        """Every GroupNorm's statistics of a displaced step in one all-reduce."""
        return StepStatsAllreduce(
            name=name,
            kind=kind,
            comm=self._bands,
            shapes=shapes,
            wire=wire,
            **self._bookkeeping(),
        )
