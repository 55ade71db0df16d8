"""GPU-side step times: CUDA events around every step, read back without a host sync.

With CUDA graphs the host queues a step's kernels in far less time than the GPU needs to run
them and runs ahead, so the host's ``t_start``/``t_end`` of a step (``/steps``) measure how
long it took to *queue* the step, not to run it. :class:`GpuStepTimer` records one timing
event on the rank's compute stream when a step begins and one when it ends, and reads a step's
elapsed time only once both events have completed (``event.query()``), a step or more later,
or at the end of the image (after the synchronize that ends the denoising loop). It never
makes the host wait for the GPU during the steps. Event pairs come from a small pool: a pair is
reused once its step has been read; a new pair is made only while the host is more steps ahead
than the pool holds.

GPU times are placed on the rank's clock (seconds since its epoch) through an anchor event
recorded at the start of each image right after one synchronize of the compute stream (the GPU
is idle then, so the anchor's GPU time is its host time): ``t = host time of the anchor +
elapsed(anchor, event)``. That is one host synchronize per image, before its first step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from pcpp_mpi.trace.recorder import GpuStepRow


class TimingEvent(Protocol):
    """What is used of :class:`torch.cuda.Event` (``enable_timing=True``)."""

    def record(self, stream: Any = None) -> None: ...

    def query(self) -> bool: ...

    def elapsed_time(self, end_event: Any) -> float: ...


def cuda_timing_event() -> TimingEvent:
    return torch.cuda.Event(enable_timing=True)


@dataclass
class _Pending:
    image: int
    step: int
    start: TimingEvent
    end: TimingEvent


@dataclass
class GpuStepTimer:
    """Times each step on ``device``'s current (compute) stream; rows via :meth:`take_ready`.

    ``now``: the host clock of the rank's trace (seconds since its epoch). ``event_factory``
    makes timing events (CUDA events by default; tests pass stand-ins). ``synchronize`` waits
    for the compute stream (by default that of ``device``; called once per image).
    """

    device: torch.device
    now: Callable[[], float]
    event_factory: Callable[[], TimingEvent] = cuda_timing_event
    synchronize: Callable[[], None] | None = None
    _anchor: TimingEvent | None = None
    _anchor_host: float = 0.0
    _free: list[tuple[TimingEvent, TimingEvent]] = field(default_factory=list)
    _pending: list[_Pending] = field(default_factory=list)
    _current: _Pending | None = None
    _ready: list[GpuStepRow] = field(default_factory=list)

    def _stream(self) -> Any:
        return torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None

    def _pair(self) -> tuple[TimingEvent, TimingEvent]:
        return self._free.pop() if self._free else (self.event_factory(), self.event_factory())

    def start_image(self, image: int) -> None:
        """Before the first step of ``image``: the anchor (one synchronize of the stream)."""
        if self.synchronize is not None:
            self.synchronize()
        elif self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        self._anchor = self.event_factory()
        self._anchor.record(self._stream())
        self._anchor_host = self.now()

    def begin_step(self, image: int, step: int) -> None:
        start, end = self._pair()
        start.record(self._stream())
        self._current = _Pending(image, step, start, end)

    def end_step(self) -> None:
        """Mark the end of the step; then read every earlier step whose events completed."""
        if self._current is None:
            return
        self._current.end.record(self._stream())
        self._pending.append(self._current)
        self._current = None
        self._collect(wait=False)

    def finish_image(self) -> None:
        """After the image's final synchronize: every step still pending is read."""
        self._collect(wait=True)

    def take_ready(self) -> list[GpuStepRow]:
        """The rows read since the last call, in step order."""
        rows, self._ready = self._ready, []
        return rows

    def _collect(self, wait: bool) -> None:
        """Read pending steps in order while their end events have completed (``wait``: the
        caller has synchronised, so every one has)."""
        while self._pending and (wait or self._pending[0].end.query()):
            done = self._pending.pop(0)
            assert self._anchor is not None, "start_image() was not called"
            start = self._anchor_host + self._anchor.elapsed_time(done.start) / 1e3
            end = self._anchor_host + self._anchor.elapsed_time(done.end) / 1e3
            self._ready.append(GpuStepRow(done.image, done.step, start, end))
            self._free.append((done.start, done.end))

    @property
    def pool_size(self) -> int:
        """Event pairs made so far (free, pending and in use)."""
        return len(self._free) + len(self._pending) + (self._current is not None)
