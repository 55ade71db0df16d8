"""The GroupNorm statistics of a whole displaced step in one all-reduce.

In a displaced step every GroupNorm uses the other bands' statistics of the previous step
(plus its own fresh ones) and contributes its fresh statistics for the next step. With one
all-reduce per norm (:class:`~pcpp_mpi.comm.exchanges.StatsAllreduce`) that is, per norm and
step, a copy to the host, an event, an MPI call and a copy back: about 50 of each per SDXL
step, small transfers whose cost is mostly the gaps they leave in the GPU's work. Here the
norms of a rank write their statistics into one device vector; once the last norm of the step
has written its share, one copy to the host and one all-reduce carry all of them, and the
first norm of the next step copies the other bands' sums of every norm back in one copy.
``sync`` steps need fresh statistics at every norm and keep the per-norm all-reduces.

Every norm must read and contribute once per displaced step, in the same order every step
(a UNet call runs every norm once): the first read of a step completes the all-reduce and
copies it to the device; the last contribution posts the next one.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate
from math import prod

import torch
from mpi4py import MPI

from pcpp_mpi.comm.capture import StepRecorder
from pcpp_mpi.comm.deferred import DeferredStarts
from pcpp_mpi.comm.exchanges import ExchangeError, StatsAllreduce, WireSpec
from pcpp_mpi.comm.traffic import TrafficCounter
from pcpp_mpi.trace.recorder import Tracer


class StepStatsAllreduce:
    """Statistics ``(3, B, G_k)`` float64 of norms ``k = 0..n-1`` (``shapes``), summed over the
    bands of a group once per displaced step: a device vector of every norm's slot around one
    :class:`~pcpp_mpi.comm.exchanges.StatsAllreduce` of the whole vector (its host side:
    pinned buffers, the all-reduce, the other bands' share)."""

    def __init__(
        self,
        *,
        name: str,
        kind: str,
        comm: MPI.Comm,
        shapes: Sequence[Sequence[int]],
        wire: WireSpec,
        counter: TrafficCounter,
        tracer: Tracer,
        deferred: DeferredStarts,
        recorder: StepRecorder,
    ) -> None:
        if not shapes:
            raise ValueError(f"{name}: no statistics to exchange")
        self.name = name
        self._shapes = [tuple(s) for s in shapes]
        self._offsets = (0, *accumulate(prod(s) for s in self._shapes))
        size = self._offsets[-1]
        self._allreduce = StatsAllreduce(
            name=name, kind=kind, comm=comm, shape=(size,), wire=wire, counter=counter,
            tracer=tracer, deferred=deferred, recorder=recorder,
        )  # fmt: skip
        device = wire.compute_device
        # per parity: this rank's fresh statistics; the other bands' sums of the step being
        # read (one buffer: each step's copy is queued after every read of the previous one)
        self._local = [torch.empty(size, dtype=torch.float64, device=device) for _ in range(2)]
        self._others_device = torch.empty(size, dtype=torch.float64, device=device)
        self._reads: tuple[int | None, int] = (None, 0)  # (step read, norms that read it)
        self._contributions: tuple[int | None, int] = (None, 0)  # (step, norms that wrote)

    @property
    def norms(self) -> int:
        return len(self._shapes)

    def _slot(self, vector: torch.Tensor, index: int) -> torch.Tensor:
        return vector[self._offsets[index] : self._offsets[index + 1]].view(self._shapes[index])

    def others(self, step: int, index: int) -> torch.Tensor:
        """The other bands' statistics of norm ``index`` from step ``step`` (a device view,
        valid until the next step's first read). The first read of a step completes its
        all-reduce and queues one copy of every norm's sums to the device."""
        read, count = self._reads
        if read != step or count == self.norms:
            others = self._allreduce.wait_others(step)
            self._others_device.copy_(others, non_blocking=True)
            read, count = step, 0
        self._reads = (read, count + 1)
        return self._slot(self._others_device, index)

    def local(self, step: int, index: int) -> torch.Tensor:
        """Where norm ``index`` writes its fresh statistics of ``step`` (a device view), then
        calls :meth:`contributed`."""
        if self._contributions[1] == 0:
            self._allreduce.check_free(step)
        return self._slot(self._local[step % 2], index)

    def contributed(self, step: int) -> None:
        """One more norm has written its statistics of ``step``; after the last, post them."""
        written, count = self._contributions
        if written != step:
            if count:
                raise ExchangeError(
                    f"{self.name}: step {step} written while step {written} has "
                    f"{count} of {self.norms} norms"
                )
            written = step
        count += 1
        if count < self.norms:
            self._contributions = (written, count)
            return
        self._contributions = (None, 0)
        self._allreduce.post(step, self._local[step % 2])

    def reset(self) -> None:
        self._allreduce.reset()
        self._reads = (None, 0)
        self._contributions = (None, 0)

    def drain(self) -> None:
        self._allreduce.drain()
