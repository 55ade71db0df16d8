"""A group of ranks that split one image into bands, in band order, and its exchanges.

The parallel VAE decode runs over such a group (every world rank, ordered by decode position,
see :mod:`pcpp_mpi.plan.decode`); its exchanges share the rank's traffic counter, tracer,
deferred MPI starts and step recorder with the UNet's, so they are counted and traced alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from mpi4py import MPI

from pcpp_mpi.comm.exchanges import AllBandsExchange, NeighbourExchange, StatsAllreduce
from pcpp_mpi.comm.wire import WireSpec


class BandGroup:
    """A 1-D Cartesian communicator over the ranks of ``world``, ordered by ``position``
    (``PROC_NULL`` beyond the image edges). Collective: every rank of ``world`` creates it.

    ``bookkeeping``: the ``counter``, ``tracer``, ``deferred`` and ``recorder`` the exchanges
    report to (:class:`pcpp_mpi.comm.context.RankComm` passes its own).
    """

    def __init__(self, world: MPI.Comm, position: int, bookkeeping: dict[str, Any]) -> None:
        ordered = world.Split(color=0, key=position)
        self.comm: MPI.Cartcomm = ordered.Create_cart(
            [ordered.Get_size()], periods=[False], reorder=False
        )
        ordered.Free()
        up, down = self.comm.Shift(0, 1)
        self.up: int | None = None if up == MPI.PROC_NULL else up
        self.down: int | None = None if down == MPI.PROC_NULL else down
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self._bookkeeping = bookkeeping
        self._next_tag = 0

    def restart_tags(self) -> None:
        """Number new exchanges from tag 0 again; only when none of the group is pending
        (each decode makes its exchanges afresh and completes all of them)."""
        self._next_tag = 0

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
    ) -> NeighbourExchange:
        """Rows to and from the bands above and below."""
        return NeighbourExchange(
            name=name,
            kind=kind,
            comm=self.comm,
            up=self.up,
            down=self.down,
            tag=self._tag(),
            send_shapes=send_shapes,
            recv_shapes=recv_shapes,
            wire=wire,
            **self._bookkeeping,
        )

    def all_bands_exchange(
        self, name: str, kind: str, *, shapes: Sequence[Sequence[int]], wire: WireSpec
    ) -> AllBandsExchange:
        """Every band's block to every other."""
        return AllBandsExchange(
            name=name,
            kind=kind,
            comm=self.comm,
            tag=self._tag(),
            shapes=shapes,
            wire=wire,
            **self._bookkeeping,
        )

    def stats_allreduce(
        self, name: str, kind: str, *, shape: Sequence[int], wire: WireSpec
    ) -> StatsAllreduce:
        """Sums of per-band statistics over the group."""
        return StatsAllreduce(
            name=name, kind=kind, comm=self.comm, shape=shape, wire=wire, **self._bookkeeping
        )

    def gather_rows(
        self, step: int, kind: str, local: np.ndarray, rows: Sequence[int]
    ) -> np.ndarray | None:
        """Concatenate every band's ``local`` ``(rows_i, ...)`` array (same trailing shape and
        dtype everywhere) along the first axis on group rank 0; ``None`` elsewhere.

        Counted as ``kind`` in ``step`` and traced as one blocking exchange per peer (layer
        ``kind``), like any other message of the group."""
        local = np.ascontiguousarray(local)
        tracer = self._bookkeeping["tracer"]
        counter = self._bookkeeping["counter"]
        per_row = local[:1].nbytes if len(local) else local.itemsize * int(np.prod(local.shape[1:]))
        start = tracer.now()
        if self.rank != 0:
            self.comm.Gatherv([local.view(np.uint8).reshape(-1), MPI.BYTE], None, root=0)
            counter.add(step, kind, sent=local.nbytes)
            tracer.blocking(kind, kind, step, [(0, local.nbytes, 0)], start)
            return None
        full = np.empty((sum(rows), *local.shape[1:]), dtype=local.dtype)
        counts = [r * per_row for r in rows]
        displs = [sum(counts[:i]) for i in range(len(counts))]
        self.comm.Gatherv(
            [local.view(np.uint8).reshape(-1), MPI.BYTE],
            [full.view(np.uint8).reshape(-1), counts, displs, MPI.BYTE],
            root=0,
        )
        received = full.nbytes - local.nbytes
        counter.add(step, kind, received=received)
        messages = [(peer, 0, counts[peer]) for peer in range(1, self.size)]
        tracer.blocking(kind, kind, step, messages, start)
        return full

    def free(self) -> None:
        self.comm.Free()
