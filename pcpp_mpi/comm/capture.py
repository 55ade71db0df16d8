"""Recording a step's host actions (MPI starts and waits) while its GPU work is captured.

A CUDA graph cannot hold MPI calls. While a step is captured, the exchanges only queue their
GPU work (copies into send buffers, reads of receive buffers) and report here what the host
must do around it: a *post* (start the MPI operations of an exchange once the data is on the
device) and a *wait* (complete an exchange before any later kernel reads its buffers). Every
wait ends a segment. Replaying the step is then: for each segment, launch its GPU work, start
its posts, complete its wait (:class:`RecordedStep`).

Steps are recorded relative to the captured step: an action for step ``s + k`` recorded while
capturing step ``s`` is replayed at step ``t`` as an action for step ``t + k``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


class HostSide(Protocol):
    """What an exchange offers for replay: its MPI part, without the GPU part."""

    name: str

    def launch(self, step: int) -> None:
        """Start the MPI operations of ``step`` (its send buffers are being filled)."""

    def complete(self, step: int) -> None:
        """Block until the MPI operations of ``step`` completed."""


@dataclass(frozen=True)
class HostAction:
    exchange: HostSide
    offset: int  # step of the action minus the captured step


@dataclass
class Segment:
    """GPU work between two waits: after it, start ``posts``, then complete ``wait``."""

    posts: list[HostAction] = field(default_factory=list)
    wait: HostAction | None = None


@dataclass
class RecordedStep:
    """The host actions of one captured step, segment by segment."""

    segments: list[Segment]

    def after_segment(self, index: int, step: int) -> None:
        """Run the host actions that follow segment ``index`` of step ``step``."""
        segment = self.segments[index]
        for action in segment.posts:
            action.exchange.launch(step + action.offset)
        if segment.wait is not None:
            segment.wait.exchange.complete(step + segment.wait.offset)

    def describe(self) -> list[str]:
        """Readable actions (for tests and debugging)."""
        lines = []
        for segment in self.segments:
            lines.extend(f"post {a.exchange.name} {a.offset:+d}" for a in segment.posts)
            if segment.wait is not None:
                lines.append(f"wait {segment.wait.exchange.name} {segment.wait.offset:+d}")
        return lines


class StepRecorder:
    """Shared by all exchanges of a rank. Off by default: exchanges then talk to MPI at once.

    While :meth:`recording` is on, exchanges call :meth:`note_post` and :meth:`note_wait`
    instead; ``on_wait`` (e.g. "end this CUDA graph, begin the next") runs at every wait,
    before the exchange returns its receive buffers, so their reads fall in the next segment.
    """

    def __init__(self) -> None:
        self._step: int | None = None
        self._segments: list[Segment] = []
        self._on_wait: Callable[[], None] = _nothing

    @property
    def recording(self) -> bool:
        return self._step is not None

    def start(self, step: int, on_wait: Callable[[], None] | None = None) -> None:
        if self.recording:
            raise RuntimeError("already recording a step")
        self._step = step
        self._segments = [Segment()]
        self._on_wait = on_wait or _nothing

    def note_post(self, exchange: HostSide, step: int) -> None:
        assert self._step is not None
        self._segments[-1].posts.append(HostAction(exchange, step - self._step))

    def note_wait(self, exchange: HostSide, step: int) -> None:
        assert self._step is not None
        self._segments[-1].wait = HostAction(exchange, step - self._step)
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
        return recorded


def _nothing() -> None:
    return None
