"""Ending the whole job when one rank fails, after rank 0 has recorded the error.

Rank 0 runs a listener thread on a duplicate of the world communicator. A failing rank sends
it its error, waits (briefly) for the acknowledgement that the run file says ``failed``, and
then aborts the MPI job, so no rank stays blocked in a wait that can never complete.

Every MPI call drives the library's progress engine, which also advances the main thread's
transfers: a CUDA-aware Open MPI may then call the CUDA driver from the listener thread (e.g.
``cuIpcGetMemHandle`` for a device send buffer). Without the rank's CUDA context current on that
thread those calls fail (``CUDA_ERROR_INVALID_CONTEXT``) and Open MPI falls back to copying
device messages through host memory, so a GPU run passes ``prepare_thread`` to make the context
current there first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from mpi4py import MPI

_ERROR_TAG = 901
_ACK_TAG = 902
_POLL_SECONDS = 0.02


class FailureChannel:
    """Error reports from any rank to rank 0. ``on_error(rank, message)`` runs on rank 0's
    listener thread; it should record the failure (it must not call MPI on ``world``).
    ``prepare_thread`` runs first on that thread (e.g. making the rank's CUDA device current)."""

    def __init__(
        self,
        world: MPI.Comm,
        on_error: Callable[[int, str], None],
        prepare_thread: Callable[[], None] | None = None,
    ) -> None:
        self._comm = world.Dup()
        self._rank = self._comm.Get_rank()
        self._on_error = on_error
        self._prepare_thread = prepare_thread
        self._thread: threading.Thread | None = None
        multiple = MPI.Query_thread() == MPI.THREAD_MULTIPLE
        if self._rank == 0 and self._comm.Get_size() > 1 and multiple:
            self._thread = threading.Thread(target=self._listen, name="pcpp-failures", daemon=True)
            self._thread.start()

    def _listen(self) -> None:
        if self._prepare_thread is not None:
            self._prepare_thread()
        status = MPI.Status()
        while True:
            if not self._comm.Iprobe(source=MPI.ANY_SOURCE, tag=_ERROR_TAG, status=status):
                time.sleep(_POLL_SECONDS)
                continue
            source = status.Get_source()
            message = self._comm.recv(source=source, tag=_ERROR_TAG)
            if message is None:  # the shutdown sentinel rank 0 sends itself
                return
            try:
                self._on_error(source, message)
            finally:
                self._comm.send("recorded", dest=source, tag=_ACK_TAG)

    def report(self, message: str, timeout: float = 5.0) -> None:
        """From a failing rank other than 0: hand the error to rank 0 and wait for its ack."""
        if self._rank == 0:
            return
        request = self._comm.isend(message, dest=0, tag=_ERROR_TAG)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._comm.Iprobe(source=0, tag=_ACK_TAG):
                self._comm.recv(source=0, tag=_ACK_TAG)
                break
            time.sleep(_POLL_SECONDS)
        request.Test()

    def close(self) -> None:
        """Stop the listener (rank 0) and free the communicator."""
        if self._thread is not None:
            request = self._comm.isend(None, dest=0, tag=_ERROR_TAG)
            self._thread.join()
            request.wait()
            self._thread = None
        self._comm.Free()
