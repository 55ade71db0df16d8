"""Named ranges around a rank's phases, steps and exchange waits, for a profiler's timeline.

Pure Python: the functions that open and close a range are given (NVTX's on a GPU with
``runtime.nvtx``, see :mod:`pcpp_mpi.engine.nvtx`); without them every call does nothing.
Ranges nest as a stack on the calling thread; nothing here synchronises with a device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

Push = Callable[[str], object]
Pop = Callable[[], object]


class Ranges:
    """A stack of named ranges opened with ``push(name)`` and closed with ``pop()``; off (every
    call a no-op) when made without them. :attr:`depth` counts the ranges open."""

    __slots__ = ("_pop", "_push", "depth")

    def __init__(self, push: Push | None = None, pop: Pop | None = None) -> None:
        if (push is None) != (pop is None):
            raise ValueError("Ranges: give both push and pop, or neither")
        self._push = push
        self._pop = pop
        self.depth = 0

    @property
    def enabled(self) -> bool:
        return self._push is not None

    def push(self, name: str) -> None:
        """Open a range named ``name`` inside the ranges open now."""
        if self._push is not None:
            self._push(name)
            self.depth += 1

    def pop(self) -> None:
        """Close the innermost open range (nothing when none is open)."""
        if self._pop is not None and self.depth:
            self._pop()
            self.depth -= 1

    def unwind(self, depth: int) -> None:
        """Close the ranges opened above ``depth`` (those an exception left open)."""
        while self.depth > depth:
            self.pop()

    @contextmanager
    def range(self, name: str) -> Iterator[None]:
        """A range around the ``with`` block; also closes what the block left open."""
        depth = self.depth
        self.push(name)
        try:
            yield
        finally:
            self.unwind(depth)
