"""Wire memory: where and how exchange buffers are allocated (no MPI).

Shared by :mod:`pcpp_mpi.comm.exchanges` and :mod:`pcpp_mpi.comm.frames`, so that neither
imports the other to allocate its buffers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class WireSpec:
    """Where and how exchange buffers are allocated."""

    compute_device: torch.device
    wire_device: torch.device
    dtype: torch.dtype

    @property
    def staged(self) -> bool:
        return self.wire_device != self.compute_device

    def empty(self, shape: Sequence[int]) -> torch.Tensor:
        pin = self.staged and self.compute_device.type == "cuda"
        return torch.empty(tuple(shape), dtype=self.dtype, device=self.wire_device, pin_memory=pin)

    def to_compute(self, wire: torch.Tensor) -> torch.Tensor:
        """A received buffer as a compute-device tensor (an asynchronous copy when staged: the
        buffer is refilled only after an event recorded later on the same stream)."""
        return wire.to(self.compute_device, non_blocking=True) if self.staged else wire

    def ready_event(self) -> torch.cuda.Event | None:
        """An event after everything queued so far on the compute stream (None on the CPU):
        the send copies just queued, and the kernels that read the receive set being reused."""
        if self.compute_device.type != "cuda":
            return None
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.compute_device))
        return event

    def settle(self) -> None:
        """Block until the compute stream is idle (for blocking MPI calls on its data)."""
        if self.compute_device.type == "cuda":
            torch.cuda.current_stream(self.compute_device).synchronize()
