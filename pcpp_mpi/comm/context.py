"""The one object that owns MPI for a run: communicators, neighbours, tags and exchanges.

Layers never import mpi4py; they receive the exchange objects this module makes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from mpi4py import MPI

from pcpp_mpi.comm.band_exchanges import BandExchanges, band_cart
from pcpp_mpi.comm.band_group import BandGroup
from pcpp_mpi.comm.capture import StepRecorder
from pcpp_mpi.comm.deferred import DeferredStarts
from pcpp_mpi.comm.exchanges import WireSpec, mpi_buffer
from pcpp_mpi.comm.frames import TokenFrames
from pcpp_mpi.comm.traffic import TrafficCounter
from pcpp_mpi.plan.topology import Topology
from pcpp_mpi.trace.recorder import Tracer


class RankComm(BandExchanges):
    """Communicators of one rank: ``world``, ``patch`` (the bands of its CFG group, a 1-D
    Cartesian communicator with ``PROC_NULL`` beyond the image edges, over which it makes its
    exchanges: :class:`~pcpp_mpi.comm.band_exchanges.BandExchanges`) and ``pair`` (the two
    ranks that own the same band in the two CFG groups, with ``cfg_parallel``)."""

    def __init__(self, world: MPI.Comm, cfg_groups: int, *, cuda_aware: bool = False) -> None:
        self.world = world
        self.topology = Topology(world.Get_size(), world.Get_rank(), cfg_groups)
        topo = self.topology
        self.patch: MPI.Cartcomm = band_cart(world, color=topo.cfg_index, key=topo.band_index)
        super().__init__(self.patch)
        self.pair: MPI.Comm | None = (
            world.Split(color=topo.band_index, key=topo.cfg_index) if cfg_groups == 2 else None
        )
        self.cuda_aware = cuda_aware
        self.counter = TrafficCounter()
        self.tracer = Tracer()
        self.deferred = DeferredStarts()
        self.recorder = StepRecorder()

    # ------------------------------------------------------------------ set-up helpers
    def wire_spec(self, device: torch.device, dtype: torch.dtype) -> WireSpec:
        """Device buffers for a CUDA-aware MPI, host buffers otherwise."""
        on_device = device.type == "cpu" or self.cuda_aware
        return WireSpec(device, device if on_device else torch.device("cpu"), dtype)

    def host_wire_spec(self, device: torch.device, dtype: torch.dtype) -> WireSpec:
        """Pinned host buffers for tensors on ``device``, whatever MPI takes."""
        return WireSpec(device, torch.device("cpu"), dtype)

    def token_frames(
        self, wire: WireSpec, *, batch: int, channels: int, band_tokens: Sequence[int]
    ) -> TokenFrames:
        """Two frames holding every band's K/V tokens of one attention layer in place."""
        return TokenFrames(wire, batch=batch, channels=channels, band_tokens=band_tokens)

    def _bookkeeping(self) -> dict[str, Any]:
        """What every exchange of this rank shares: traffic counter, tracer, deferred MPI
        starts, step recorder (read at each exchange's making)."""
        return {
            "counter": self.counter,
            "tracer": self.tracer,
            "deferred": self.deferred,
            "recorder": self.recorder,
        }

    def band_group(self, position: int) -> BandGroup:
        """Every world rank, ordered by ``position`` (collective: all ranks call it), with
        exchanges counted and traced like this rank's own (the parallel VAE decode's group);
        the caller frees it."""
        return BandGroup(self.world, position, self._bookkeeping())

    # ------------------------------------------------------------------ whole-step collectives
    def cfg_swap(self, step: int, own: torch.Tensor) -> torch.Tensor:
        """Send this rank's band prediction to its CFG partner and return the partner's."""
        if self.pair is None:
            raise RuntimeError("cfg_swap without cfg_parallel")
        wire = self.wire_spec(own.device, own.dtype)
        own = own.to(wire.wire_device).contiguous()
        wire.settle()  # the prediction's kernels must have finished before MPI reads it
        self.deferred.flush()
        theirs = torch.empty_like(own)
        partner = 1 - self.pair.Get_rank()
        start = self.tracer.now()
        self.tracer.ranges.push("wait cfg_swap")
        self.pair.Sendrecv(
            mpi_buffer(own), dest=partner, recvbuf=mpi_buffer(theirs), source=partner
        )
        self.tracer.ranges.pop()
        self.counter.add(step, "cfg", sent=own.nbytes, received=theirs.nbytes)
        self.tracer.blocking("cfg_swap", "cfg", step, [(partner, own.nbytes, theirs.nbytes)], start)
        return wire.to_compute(theirs)

    def gather_bands(
        self, step: int, local: torch.Tensor, rows: Sequence[int]
    ) -> torch.Tensor | None:
        """Concatenate every band's ``local`` (B, C, rows_i, W) along the height on band 0.

        Returns the global tensor on the patch root, ``None`` elsewhere. CPU tensors only.
        """
        local = local.detach().to("cpu").contiguous()
        batch, channels, _, width = local.shape
        per_row = batch * channels * width
        root = self.patch.Get_rank() == 0
        if root:
            full = torch.empty(batch, channels, sum(rows), width, dtype=local.dtype)
            # bands are concatenated along height; gather into (band, B, C, rows, W) order
            staging = torch.empty(per_row * sum(rows), dtype=local.dtype)
            counts = [per_row * r * local.element_size() for r in rows]
            displs = [sum(counts[:i]) for i in range(len(counts))]
            self.patch.Gatherv(
                mpi_buffer(local),
                [staging.view(torch.uint8).numpy(), counts, displs, MPI.BYTE],
                root=0,
            )
            start = 0
            offset = 0
            for r in rows:
                block = staging[offset : offset + per_row * r].view(batch, channels, r, width)
                full[:, :, start : start + r] = block
                start += r
                offset += per_row * r
            self.counter.add(step, "gather", received=full.nbytes - local.nbytes)
            return full
        self.patch.Gatherv(mpi_buffer(local), None, root=0)
        self.counter.add(step, "gather", sent=local.nbytes)
        return None

    # ------------------------------------------------------------------ control plane
    def local_rank(self) -> int:
        """This rank's index among the ranks on its node (to pick a GPU)."""
        node = self.world.Split_type(MPI.COMM_TYPE_SHARED)
        try:
            return node.Get_rank()
        finally:
            node.Free()

    def max_over_ranks(self, value: int) -> int:
        """The largest ``value`` of all ranks, on every rank (one tiny all-reduce)."""
        if self.world.Get_size() == 1:
            return value
        return int(self.world.allreduce(value, op=MPI.MAX))

    def bcast(self, value: Any, root: int = 0) -> Any:
        return self.world.bcast(value, root=root)

    def allgather(self, value: Any) -> list[Any]:
        return self.world.allgather(value)

    def barrier(self) -> None:
        self.world.Barrier()

    def abort(self, code: int) -> None:
        self.world.Abort(code)

    def free(self) -> None:
        self.patch.Free()
        if self.pair is not None:
            self.pair.Free()
