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

from pcpp_mpi.comm.band_exchanges import BandExchanges, band_cart


class BandGroup(BandExchanges):
    """A 1-D Cartesian communicator over the ranks of ``world``, ordered by ``position``
    (``PROC_NULL`` beyond the image edges), and its exchanges
    (:class:`~pcpp_mpi.comm.band_exchanges.BandExchanges`). Collective: every rank of
    ``world`` creates it.

    ``bookkeeping``: the ``counter``, ``tracer``, ``deferred`` and ``recorder`` the exchanges
    report to (:class:`pcpp_mpi.comm.context.RankComm` passes its own).
    """

    def __init__(self, world: MPI.Comm, position: int, bookkeeping: dict[str, Any]) -> None:
        self.comm: MPI.Cartcomm = band_cart(world, color=0, key=position)
        super().__init__(self.comm)
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self._shared = bookkeeping

    def _bookkeeping(self) -> dict[str, Any]:
        return self._shared

    def restart_tags(self) -> None:
        """Number new exchanges from tag 0 again; only when none of the group is pending
        (each decode makes its exchanges afresh and completes all of them)."""
        self._next_tag = 0

    def gather_rows(
        self, step: int, kind: str, local: np.ndarray, rows: Sequence[int]
    ) -> np.ndarray | None:
        """Concatenate every band's ``local`` ``(rows_i, ...)`` array (same trailing shape and
        dtype everywhere) along the first axis on group rank 0; ``None`` elsewhere.

        Counted as ``kind`` in ``step`` and traced as one blocking exchange per peer (layer
        ``kind``), like any other message of the group."""
        local = np.ascontiguousarray(local)
        tracer = self._shared["tracer"]
        counter = self._shared["counter"]
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
