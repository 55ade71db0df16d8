"""What the band-parallel layers ask of a rank's communicator, as a protocol.

:class:`~pcpp_mpi.comm.context.RankComm` implements it with MPI; the tests' in-memory fakes
implement it too. The layers only name the types here (under ``TYPE_CHECKING``), so making a
model band-parallel imports no MPI until a real communicator is handed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from pcpp_mpi.comm.frames import TokenFrames
    from pcpp_mpi.comm.wire import WireSpec
    from pcpp_mpi.plan.topology import Topology

Shape = Sequence[int]


class BandComm(Protocol):
    """A rank's exchanges with the other bands, made once before the first step.

    Every exchange is named (the layer's module name) and has a ``kind`` (``halo``, ``norm``,
    ``kv``) for traces; shapes are local (this band's rows).
    """

    topology: Topology

    def wire_spec(self, device: torch.device, dtype: torch.dtype) -> WireSpec:
        """Where exchange buffers live for tensors on ``device``: MPI's choice."""
        ...

    def host_wire_spec(self, device: torch.device, dtype: torch.dtype) -> WireSpec:
        """Pinned host buffers for tensors on ``device``, whatever MPI takes."""
        ...

    def token_frames(
        self, wire: WireSpec, *, batch: int, channels: int, band_tokens: Sequence[int]
    ) -> TokenFrames:
        """Two frames holding every band's K/V tokens of one attention layer in place."""
        ...

    def neighbour_exchange(
        self,
        name: str,
        kind: str,
        *,
        send_shapes: tuple[Shape | None, Shape | None],
        recv_shapes: tuple[Shape | None, Shape | None],
        wire: WireSpec,
        frames: TokenFrames | None = None,
        frame_band: int | None = None,
    ) -> Any:
        """Rows to and from the bands above and below (halos, ``pcpp`` K/V rows)."""
        ...

    def all_bands_exchange(
        self,
        name: str,
        kind: str,
        *,
        shapes: Sequence[Shape],
        wire: WireSpec,
        frames: TokenFrames | None = None,
    ) -> Any:
        """Every band's block to every other band (full K/V)."""
        ...

    def stats_allreduce(self, name: str, kind: str, *, shape: Shape, wire: WireSpec) -> Any:
        """One GroupNorm's statistics summed over the bands."""
        ...

    def step_stats_allreduce(
        self, name: str, kind: str, *, shapes: Sequence[Shape], wire: WireSpec
    ) -> Any:
        """Every GroupNorm's statistics of a displaced step in one all-reduce."""
        ...
