"""Which band and which CFG group a rank owns: pure arithmetic, no MPI."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topology:
    """Rank layout. With ``cfg_groups == 2`` world ranks ``[0, n_bands)`` compute the
    unconditional half and ``[n_bands, 2 n_bands)`` the conditional half; rank ``r`` and
    ``r + n_bands`` own the same band and swap predictions every step."""

    world_size: int
    world_rank: int
    cfg_groups: int

    def __post_init__(self) -> None:
        if self.cfg_groups not in (1, 2):
            raise ValueError(f"cfg_groups must be 1 or 2, got {self.cfg_groups}")
        if self.world_size % self.cfg_groups:
            raise ValueError(f"cfg_parallel needs an even rank count, got {self.world_size} ranks")
        if not 0 <= self.world_rank < self.world_size:
            raise ValueError(f"rank {self.world_rank} outside [0, {self.world_size})")

    @property
    def n_bands(self) -> int:
        return self.world_size // self.cfg_groups

    @property
    def band_index(self) -> int:
        return self.world_rank % self.n_bands

    @property
    def cfg_index(self) -> int:
        """0: unconditional group (or the only group), 1: conditional group."""
        return self.world_rank // self.n_bands

    @property
    def is_output_rank(self) -> bool:
        """The rank that gathers the latent, decodes it and writes the run file."""
        return self.world_rank == 0

    @property
    def cfg_partner(self) -> int | None:
        if self.cfg_groups == 1:
            return None
        return (self.world_rank + self.n_bands) % self.world_size
