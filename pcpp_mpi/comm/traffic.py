"""Counting the bytes a rank hands to MPI, per image, step and kind (no MPI here)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field


@dataclass
class TrafficCounter:
    """Bytes sent and received, keyed by ``(image, step, kind)``.

    The exchanges call :meth:`add` when they post; ``step`` is the denoising step the data was
    produced in (a displaced exchange posted in step ``t`` is counted in step ``t``).
    """

    image: int = 0
    sent: dict[tuple[int, int, str], int] = field(default_factory=lambda: defaultdict(int))
    received: dict[tuple[int, int, str], int] = field(default_factory=lambda: defaultdict(int))

    def begin_image(self, image: int) -> None:
        self.image = image

    def add(self, step: int, kind: str, *, sent: int = 0, received: int = 0) -> None:
        key = (self.image, step, kind)
        if sent:
            self.sent[key] += sent
        if received:
            self.received[key] += received

    def step_totals(self, image: int, step: int) -> tuple[dict[str, int], dict[str, int]]:
        """``(sent, received)`` by kind for one step of one image."""
        sent = {k: v for (i, s, k), v in self.sent.items() if i == image and s == step}
        received = {k: v for (i, s, k), v in self.received.items() if i == image and s == step}
        return sent, received

    def drain(self) -> list[tuple[int, int, str, int, int]]:
        """:meth:`as_rows`, then forget them (each row is handed over once)."""
        rows = self.as_rows()
        self.sent.clear()
        self.received.clear()
        return rows

    def as_rows(self) -> list[tuple[int, int, str, int, int]]:
        """``(image, step, kind, sent, received)`` rows, sorted."""
        keys = sorted(set(self.sent) | set(self.received))
        return [
            (i, s, k, self.sent.get((i, s, k), 0), self.received.get((i, s, k), 0))
            for (i, s, k) in keys
        ]
