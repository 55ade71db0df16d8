"""Checking each step's latent for NaN and Inf without making the host wait for the GPU."""

from __future__ import annotations

from collections.abc import Callable

import torch


class FiniteWatch:
    """Verdicts of ``torch.isfinite(latent).all()``, one per step, read as late as possible.

    On the CPU a step's verdict is read at once. On a GPU it is copied to pinned host memory
    behind an event and read after the next step has been launched (or at :meth:`finish`), so
    the check never drains the GPU's queue: the replayed graphs of the next step are already
    running when the host looks. Two pinned flags alternate (step ``t`` uses ``t % 2``); a
    verdict is always read before its flag is reused.

    ``report(step)`` is called for the first step whose latent is not finite (it raises).
    ``lagged`` (default: on a GPU) reads each verdict one step late; on the CPU it only
    exercises that logic (tests).
    """

    def __init__(
        self, device: torch.device, report: Callable[[int], None], lagged: bool | None = None
    ) -> None:
        self.device = device
        self.report = report
        on_gpu = device.type == "cuda"
        self._lagged = on_gpu if lagged is None else lagged
        self._flags = [torch.empty((), dtype=torch.bool, pin_memory=on_gpu) for _ in range(2)]
        self._pending: list[tuple[int, torch.cuda.Event | None]] = []

    def submit(self, step: int, latent: torch.Tensor) -> None:
        """Check ``latent`` (the state after ``step``); when lagged, read the previous verdict."""
        verdict = torch.isfinite(latent).all()
        if not self._lagged:
            if not bool(verdict):
                self.report(step)
            return
        self._read_before(step)
        self._flags[step % 2].copy_(verdict, non_blocking=True)
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))
        self._pending.append((step, event))

    def finish(self) -> None:
        """Read every verdict still pending (at the end of an image)."""
        self._read_before(None)

    def _read_before(self, step: int | None) -> None:
        while self._pending and (step is None or self._pending[0][0] < step):
            done, event = self._pending.pop(0)
            if event is not None:
                event.synchronize()
            if not bool(self._flags[done % 2]):
                self._pending.clear()
                self.report(done)
