"""Per-rank timing traces: steps, exchanges and phases, buffered until the rank file flushes.

Times are seconds since the run's common epoch (taken right after a barrier on every rank, see
``epoch_unix`` in the rank file), from ``time.perf_counter``. No MPI and no file I/O here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from pcpp_mpi.trace.ranges import Ranges


@dataclass
class StepRow:
    """One denoising step of one image on this rank."""

    image: int
    step: int
    kind: str
    t_start: float
    t_end: float = 0.0
    exposed_comm: float = 0.0

    @property
    def wall(self) -> float:
        return self.t_end - self.t_start

    @property
    def compute(self) -> float:
        """Wall time not spent waiting for communication."""
        return max(self.wall - self.exposed_comm, 0.0)


@dataclass
class GpuStepRow:
    """One step's time on the GPU (CUDA events on the compute stream), on the host's clock.

    ``t_start``/``t_end``: when the GPU began and finished the step's work, in seconds since
    the rank's epoch (placed through an anchor event, see :mod:`pcpp_mpi.engine.gpu_timer`).
    """

    image: int
    step: int
    t_start: float
    t_end: float

    @property
    def wall(self) -> float:
        return self.t_end - self.t_start


@dataclass
class ExchangeRow:
    """One message (or one collective) of one exchange, posted in step ``step``.

    ``peer`` is the other rank in the exchange's communicator (-1 for a collective);
    ``t_wait_start``/``t_wait_end`` bracket the wait that completed it (equal to ``t_post``
    for blocking calls measured as a whole), ``waited_in_step`` is the step it was waited in.
    """

    image: int
    step: int
    layer: str
    kind: str
    peer: int
    sent: int
    received: int
    t_post: float
    t_wait_start: float = -1.0
    t_wait_end: float = -1.0
    waited_in_step: int = -1


@dataclass
class PhaseRow:
    name: str
    image: int
    t_start: float
    t_end: float


@dataclass
class Tracer:
    """Collects rows; :meth:`take_finished` hands over everything that is complete.

    With ``enabled=False`` nothing is kept (byte counting lives in the TrafficCounter).
    ``ranges`` marks phases and steps for a profiler's timeline whether or not rows are kept
    (off unless given functions, see :mod:`pcpp_mpi.trace.ranges`); exchanges mark their waits
    in it too.
    """

    enabled: bool = True
    epoch: float = field(default_factory=time.perf_counter)
    image: int = 0
    _step: StepRow | None = None
    _steps: list[StepRow] = field(default_factory=list)
    _done: list[ExchangeRow] = field(default_factory=list)
    _pending: dict[tuple[str, int], list[ExchangeRow]] = field(default_factory=dict)
    _phases: list[PhaseRow] = field(default_factory=list)
    ranges: Ranges = field(default_factory=Ranges)

    def now(self) -> float:
        return time.perf_counter() - self.epoch

    def reset_epoch(self) -> None:
        self.epoch = time.perf_counter()

    # ------------------------------------------------------------ steps
    def begin_step(self, image: int, step: int, kind: str) -> None:
        self.image = image
        if self.ranges.enabled:
            self.ranges.push(f"image {image} step {step} {kind}")
        if self.enabled:
            self._step = StepRow(image, step, kind, self.now())

    def end_step(self) -> None:
        self.ranges.pop()
        if self._step is not None:
            self._step.t_end = self.now()
            self._steps.append(self._step)
            self._step = None

    @property
    def current_step(self) -> int:
        return -1 if self._step is None else self._step.step

    # ------------------------------------------------------------ exchanges
    def posted(
        self, layer: str, kind: str, step: int, messages: Sequence[tuple[int, int, int]]
    ) -> None:
        """An exchange posted ``messages`` = ``(peer, sent, received)`` for ``step``."""
        if not self.enabled:
            return
        t = self.now()
        rows = [ExchangeRow(self.image, step, layer, kind, p, s, r, t) for p, s, r in messages]
        self._pending.setdefault((layer, step), []).extend(rows)

    def waited(self, layer: str, step: int, t_start: float, t_end: float) -> None:
        """The wait that completed ``layer``'s exchange of ``step`` ran from t_start to t_end."""
        if not self.enabled:
            return
        rows = self._pending.pop((layer, step), [])
        waited_in = self.current_step
        for row in rows:
            row.t_wait_start, row.t_wait_end, row.waited_in_step = t_start, t_end, waited_in
        self._done.extend(rows)
        if self._step is not None:
            self._step.exposed_comm += t_end - t_start

    def blocking(
        self,
        layer: str,
        kind: str,
        step: int,
        messages: Sequence[tuple[int, int, int]],
        t_start: float,
    ) -> None:
        """A blocking call that ran from ``t_start`` until now (posted and waited at once)."""
        if not self.enabled:
            return
        t_end = self.now()
        for peer, sent, received in messages:
            self._done.append(
                ExchangeRow(
                    self.image,
                    step,
                    layer,
                    kind,
                    peer,
                    sent,
                    received,
                    t_start,
                    t_start,
                    t_end,
                    self.current_step,
                )
            )
        if self._step is not None:
            self._step.exposed_comm += t_end - t_start

    # ------------------------------------------------------------ phases
    @contextmanager
    def phase(self, name: str, image: int = -1) -> Iterator[None]:
        start = self.now()
        depth = self.ranges.depth
        if self.ranges.enabled:
            self.ranges.push(name if image < 0 else f"{name} image {image}")
        try:
            yield
        finally:
            self.ranges.unwind(depth)
            if self.enabled:
                self._phases.append(PhaseRow(name, image, start, self.now()))

    # ------------------------------------------------------------ hand-over
    def take_finished(self) -> tuple[list[StepRow], list[ExchangeRow], list[PhaseRow]]:
        """Completed steps, completed exchange rows and phases since the last call."""
        steps, done, phases = self._steps, self._done, self._phases
        self._steps, self._done, self._phases = [], [], []
        return steps, done, phases
