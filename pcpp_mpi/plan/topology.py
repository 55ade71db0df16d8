"""Which band and which CFG group a rank owns, and which bands neighbour a band: pure
arithmetic, no MPI (``comm/context`` builds its communicators from it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pcpp_mpi.geometry import Band, pcpp_rows


def cfg_group_count(cfg_parallel: bool, n_ranks: int) -> int:
    """CFG groups of a job on ``n_ranks`` ranks: 2 with ``cfg_parallel`` on an even count
    of at least two ranks, 1 otherwise (an odd count with ``cfg_parallel`` is rejected by
    :func:`pcpp_mpi.config.check_ranks`; one group lets the communicators exist until the
    ranks agree on that rejection)."""
    return 2 if cfg_parallel and n_ranks >= 2 and n_ranks % 2 == 0 else 1


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


def neighbours(bands: Sequence[Band], index: int) -> tuple[Band | None, Band | None]:
    """The bands above and below band ``index`` (``None`` beyond the image edges)."""
    up = bands[index - 1] if index > 0 else None
    down = bands[index + 1] if index + 1 < len(bands) else None
    return up, down


@dataclass(frozen=True)
class SharedRows:
    """The rows of a level a ``pcpp`` band shares at ``ratio``: ``own`` of its own rows go to
    each neighbour; ``from_up`` / ``from_down`` come from the bands above and below (0 at an
    image edge). Rows at that level (height / 2**level), local to the bands named."""

    own: int
    from_up: int
    from_down: int


def shared_rows(ratio: float, bands: Sequence[Band], index: int, level: int) -> SharedRows:
    """What band ``index`` sends and receives as ``pcpp`` context at UNet level ``level``."""
    up, down = neighbours(bands, index)
    return SharedRows(
        own=pcpp_rows(ratio, bands[index].rows_at_level(level)),
        from_up=0 if up is None else pcpp_rows(ratio, up.rows_at_level(level)),
        from_down=0 if down is None else pcpp_rows(ratio, down.rows_at_level(level)),
    )
