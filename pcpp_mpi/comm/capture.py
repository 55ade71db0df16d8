"""Recording a step's host actions (MPI starts and waits) while its GPU work is captured.

A CUDA graph cannot hold MPI calls. While a step is captured, the exchanges only queue their
GPU work (copies into send buffers, reads of receive buffers) and report here what the host
must do around it: a *post* (start the MPI operations of an exchange once the data is on the
device; an event recorded inside the captured work right after the copies tells when) and a
*wait* (complete an exchange before any later kernel reads its buffers).

Only a wait for data of the captured step itself (a *fresh* wait: ``sync`` steps, the latent
halo of ``conv_in``) ends a segment. A wait for data of an earlier step (*displaced* steps read
what the previous step received) does not: the data was sent during that step, so the wait is
completed before the segment's GPU work is launched, and a displaced step is one or two
segments. Replaying the step is then, for each segment: launch its GPU work, start its posts
as their events complete, complete its fresh wait (:class:`RecordedStep`). The early waits of
the whole step are completed before the first fresh wait (those the first segment reads before
it is launched), while the GPU still runs the previous step: the host does not leave the GPU
idle going through them one by one between the fresh latent halo and the UNet graph.

Steps are recorded relative to the captured step: an action for step ``s + k`` recorded while
capturing step ``s`` is replayed at step ``t`` as an action for step ``t + k``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from pcpp_mpi.comm.deferred import ReadyEvent


class HostSide(Protocol):
    """What an exchange offers for replay: its MPI part, without the GPU part."""

    name: str

    def launch(self, step: int, ready: ReadyEvent | None = None) -> None:
        """Start the MPI operations of ``step`` once ``ready`` completed (its send buffers are
        being filled; ``None``: after everything queued so far)."""

    def complete(self, step: int) -> None:
        """Block until the MPI operations of ``step`` completed."""


@dataclass(frozen=True)
class HostAction:
    exchange: HostSide
    offset: int  # step of the action minus the captured step
    ready: ReadyEvent | None = None  # a post's data is on the device (recorded in the capture)


@dataclass
class Segment:
    """GPU work between two fresh waits. ``early_waits``: data of earlier steps it reads
    (complete before it is launched; :class:`RecordedStep` says when); after it, start
    ``posts``, then complete the fresh ``wait``."""

    early_waits: list[HostAction] = field(default_factory=list)
    posts: list[HostAction] = field(default_factory=list)
    wait: HostAction | None = None


@dataclass
class RecordedStep:
    """The host actions of one captured step, segment by segment."""

    segments: list[Segment]

    def before_segment(self, index: int, step: int) -> None:
        """Before segment ``index`` of step ``step`` is launched: complete the waits for data
        of earlier steps that the first segment reads (the later segments' are completed
        after the first segment has been launched, see :meth:`after_segment`)."""
        if index == 0:
            for action in self.segments[0].early_waits:
                action.exchange.complete(step + action.offset)

    def after_segment(self, index: int, step: int) -> None:
        """Run the host actions that follow segment ``index`` of step ``step``: start its
        posts; after the first segment, complete every later segment's waits for earlier
        steps (their data is arriving while the GPU still runs the previous step, and the
        host keeps starting that step's sends meanwhile); then complete the fresh wait."""
        segment = self.segments[index]
        for action in segment.posts:
            action.exchange.launch(step + action.offset, action.ready)
        if index == 0:
            for later in self.segments[1:]:
                for action in later.early_waits:
                    action.exchange.complete(step + action.offset)
        if segment.wait is not None:
            segment.wait.exchange.complete(step + segment.wait.offset)

    def describe(self) -> list[str]:
        """Readable actions (for tests and debugging)."""
        lines = []
        for segment in self.segments:
            lines.extend(f"early wait {a.exchange.name} {a.offset:+d}" for a in segment.early_waits)
            lines.extend(f"post {a.exchange.name} {a.offset:+d}" for a in segment.posts)
            if segment.wait is not None:
                lines.append(f"wait {segment.wait.exchange.name} {segment.wait.offset:+d}")
        return lines


class StepRecorder:
    """Shared by all exchanges of a rank. Off by default: exchanges then talk to MPI at once.

    While :meth:`recording` is on, exchanges call :meth:`note_post` and :meth:`note_wait`
    instead; ``on_wait`` (e.g. "end this CUDA graph, begin the next") runs at every fresh wait,
    before the exchange returns its receive buffers, so their reads fall in the next segment.
    ``ready_event`` (e.g. "record an external event in the graph being captured") gives each
    post the event its MPI start will wait for.
    """

    def __init__(self) -> None:
        self._step: int | None = None
        self._segments: list[Segment] = []
        self._on_wait: Callable[[], None] = _nothing
        self._ready_event: Callable[[], ReadyEvent | None] = _no_event

    @property
    def recording(self) -> bool:
        return self._step is not None

    def start(
        self,
        step: int,
        on_wait: Callable[[], None] | None = None,
        ready_event: Callable[[], ReadyEvent | None] | None = None,
    ) -> None:
        if self.recording:
            raise RuntimeError("already recording a step")
        self._step = step
        self._segments = [Segment()]
        self._on_wait = on_wait or _nothing
        self._ready_event = ready_event or _no_event

    def note_post(self, exchange: HostSide, step: int) -> None:
        """``exchange`` has queued the copies of its data for ``step``."""
        assert self._step is not None
        action = HostAction(exchange, step - self._step, self._ready_event())
        self._segments[-1].posts.append(action)

    def note_wait(self, exchange: HostSide, step: int) -> None:
        """The layers are about to read what ``exchange`` received for ``step``."""
        assert self._step is not None
        action = HostAction(exchange, step - self._step)
        if action.offset < 0:
            self._segments[-1].early_waits.append(action)
            return
        self._segments[-1].wait = action
        self._segments.append(Segment())
        self._on_wait()

    def last_finished(self) -> Segment:
        """The segment the latest wait ended (inside ``on_wait``)."""
        if len(self._segments) < 2:
            raise RuntimeError("no segment has ended yet")
        return self._segments[-2]

    def stop(self) -> RecordedStep:
        """End the recording; returns what was recorded (also after an error)."""
        recorded = RecordedStep(self._segments)
        self._step = None
        self._segments = []
        self._on_wait = _nothing
        self._ready_event = _no_event
        return recorded


def _nothing() -> None:
    return None


def _no_event() -> None:
    return None
