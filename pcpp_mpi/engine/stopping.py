"""Stopping a run cleanly: signals become a flag that ranks agree on at step boundaries."""

from __future__ import annotations

import signal
from types import FrameType, TracebackType

#: SIGTERM (scancel, mpirun forwarding), SIGINT (Ctrl-C), SIGUSR1 (``#SBATCH --signal=USR1@T``).
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class RunInterrupted(Exception):
    """Every rank agreed to stop at a step boundary; the run is marked ``interrupted``."""


class NonFiniteLatent(RuntimeError):
    """A latent element became NaN or Inf."""


class StopSignals:
    """Context manager: while active, the stop signals only record their name.

    The previous handlers are restored on exit. Must be entered on the main thread.
    """

    def __init__(self) -> None:
        self.received: int = 0  # the first stop signal's number, 0 while none came
        self._previous: dict[signal.Signals, object] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if not self.received:
            self.received = signum

    def __enter__(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()
