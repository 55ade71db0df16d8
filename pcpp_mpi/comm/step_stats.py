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
from pcpp_mpi.comm.deferred import DeferredStarts, ReadyEvent
from pcpp_mpi.comm.exchanges import ExchangeError, WireSpec, _TwoSets
from pcpp_mpi.comm.traffic import TrafficCounter
from pcpp_mpi.trace.recorder import Tracer


class StepStatsAllreduce:
    """Statistics ``(3, B, G_k)`` float64 of norms ``k = 0..n-1`` (``shapes``), summed over the
    bands of a group once per displaced step."""

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
        self.kind = kind
        self._comm = comm
        self._counter = counter
        self._tracer = tracer
        self._deferred = deferred
        self._recorder = recorder
        self._shapes = [tuple(s) for s in shapes]
        self._offsets = (0, *accumulate(prod(s) for s in self._shapes))
        size = self._offsets[-1]
        device = wire.compute_device
        host = WireSpec(device, torch.device("cpu"), torch.float64)
        self._host = host
        self._sets = _TwoSets(name, tracer, deferred)
        # per parity: this rank's fresh statistics on the device, as sent (host), the sum
        # over the group (host), the sum over the other bands (host)
        self._local = [torch.empty(size, dtype=torch.float64, device=device) for _ in range(2)]
        self._sent = [host.empty((size,)) for _ in range(2)]
        self._global = [host.empty((size,)) for _ in range(2)]
        self._others = [host.empty((size,)) for _ in range(2)]
        self._sent_spec = [[b.numpy(), MPI.DOUBLE] for b in self._sent]
        self._global_spec = [[b.numpy(), MPI.DOUBLE] for b in self._global]
        # the other bands' sums of the step being read, on the device (one buffer: each step's
        # copy is queued after every read of the previous one)
        self._others_device = torch.empty(size, dtype=torch.float64, device=device)
        self._reads = (None, 0)  # (step read, norms that read it so far)
        self._contributions = (None, 0)  # (step written, norms that wrote so far)

    @property
    def norms(self) -> int:
        return len(self._shapes)

    def _slot(self, vector: torch.Tensor, index: int) -> torch.Tensor:
        return vector[self._offsets[index] : self._offsets[index + 1]].view(self._shapes[index])

    # ------------------------------------------------------------------ reading step - 1
    def others(self, step: int, index: int) -> torch.Tensor:
        """The other bands' statistics of norm ``index`` from step ``step`` (a device view,
        valid until the next step's first read). The first read of a step completes its
        all-reduce and queues one copy of every norm's sums to the device."""
        read, count = self._reads
        if read != step or count == self.norms:
            if self._recorder.recording:
                self._recorder.note_wait(self, step)
            else:
                self.complete(step)
            self._others_device.copy_(self._others[step % 2], non_blocking=True)
            read, count = step, 0
        self._reads = (read, count + 1)
        return self._slot(self._others_device, index)

    # ------------------------------------------------------------------ writing step
    def local(self, step: int, index: int) -> torch.Tensor:
        """Where norm ``index`` writes its fresh statistics of ``step`` (a device view), then
        calls :meth:`contributed`."""
        if not self._recorder.recording and self._contributions[1] == 0:
            self._sets.check_free(step)
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
            written, count = step, 0
        count += 1
        self._contributions = (None, 0) if count == self.norms else (written, count)
        if count < self.norms:
            return
        parity = step % 2
        if self._recorder.recording:
            self._sent[parity].copy_(self._local[parity], non_blocking=True)
            self._recorder.note_post(self, step)
            return
        parity = self._sets.begin_post(step)
        self._sent[parity].copy_(self._local[parity], non_blocking=True)
        self._submit(step, parity)

    # ------------------------------------------------------------------ MPI side
    def launch(self, step: int, ready: ReadyEvent | None = None) -> None:
        """The MPI part of the last :meth:`contributed` (a replayed graph copies the
        statistics; ``ready``, if given, completes once it has)."""
        self._submit(step, self._sets.begin_post(step), ready)

    def _submit(self, step: int, parity: int, ready: ReadyEvent | None = None) -> None:
        nbytes = self._sent[parity].nbytes
        self._counter.add(step, self.kind, sent=nbytes, received=nbytes)
        if ready is None:
            ready = self._host.ready_event()
        self._deferred.submit(ready, lambda: self._start(step, parity))

    def _start(self, step: int, parity: int) -> None:
        request = self._comm.Iallreduce(
            self._sent_spec[parity], self._global_spec[parity], op=MPI.SUM
        )
        self._sets.start(parity, [request])
        nbytes = self._sent[parity].nbytes
        self._tracer.posted(self.name, self.kind, step, [(-1, nbytes, nbytes)])

    def complete(self, step: int) -> None:
        """Block until the all-reduce of ``step`` completed; then the other bands' sums are
        the group's minus this rank's (on the host). The host buffers of a parity are
        rewritten when step ``step + 2`` completes, which needs that step's statistics
        copied, hence every earlier copy on the compute stream (this step's) done."""
        self._deferred.progress()
        parity = self._sets.complete(step)
        torch.sub(self._global[parity], self._sent[parity], out=self._others[parity])

    def reset(self) -> None:
        self._sets.reset()
        self._reads = (None, 0)
        self._contributions = (None, 0)

    def drain(self) -> None:
        self._sets.drain()
