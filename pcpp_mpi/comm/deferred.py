"""Starting MPI operations only once the GPU has produced their data, without blocking the host.

MPI knows nothing of CUDA streams: a device (or pinned host) buffer handed to ``Isend`` must
already hold its data, and a receive buffer may be refilled only after the kernels reading it
finished. An exchange therefore records a CUDA event after queuing its copies and submits the
MPI start here; starts run in submission order as soon as their events have completed
(:meth:`DeferredStarts.progress`, called at every exchange), and all of them before this rank
blocks in a wait (:meth:`DeferredStarts.flush`), so no two ranks can wait on each other's
unstarted sends. On the CPU there is no event and a start runs at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class ReadyEvent(Protocol):
    """What a CUDA event offers (``torch.cuda.Event``)."""

    def query(self) -> bool: ...

    def synchronize(self) -> None: ...


@dataclass
class DeferredStarts:
    """A FIFO of MPI starts waiting for their data on the device."""

    _queue: deque[tuple[ReadyEvent | None, Callable[[], None]]] = field(default_factory=deque)

    def __len__(self) -> int:
        return len(self._queue)

    def submit(self, event: ReadyEvent | None, start: Callable[[], None]) -> None:
        """Run ``start`` once ``event`` has completed (at once without an event, after
        everything submitted earlier: the order of starts is the order of submissions)."""
        self._queue.append((event, start))
        self.progress()

    def progress(self) -> None:
        """Run every start at the head of the queue whose event has completed."""
        while self._queue:
            event, start = self._queue[0]
            if event is not None and not event.query():
                return
            self._queue.popleft()
            start()

    def start_all_using(self, events: Sequence[ReadyEvent]) -> None:
        """Run starts in order, waiting for their events, until none queued waits for one of
        ``events`` (a graph that records them is about to be replayed again)."""
        wanted = {id(event) for event in events}
        while any(id(event) in wanted for event, _ in self._queue):
            event, start = self._queue.popleft()
            if event is not None:
                event.synchronize()
            start()

    def flush(self) -> None:
        """Run every start, waiting for the events (called before blocking in MPI)."""
        while self._queue:
            event, start = self._queue.popleft()
            if event is not None:
                event.synchronize()
            start()
