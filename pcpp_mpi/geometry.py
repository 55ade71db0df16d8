"""Band geometry: pure arithmetic, no MPI, no torch.

Heights here are in *latent rows at UNet level 0* unless a function says otherwise. At level
``l`` a band ``[start, stop)`` covers rows ``[start >> l, stop >> l)``; bands are aligned to
``unit = 2 ** (levels - 1)`` latent rows so that every level splits cleanly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class GeometryError(ValueError):
    """A band layout that cannot work (too many bands, misaligned height, ...)."""


@dataclass(frozen=True)
class Band:
    """Rows ``[start, stop)`` of the level-0 latent owned by band ``index``."""

    index: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def at_level(self, level: int) -> tuple[int, int]:
        """The band's rows ``(start, stop)`` at UNet level ``level`` (height / 2**level)."""
        return self.start >> level, self.stop >> level

    def rows_at_level(self, level: int) -> int:
        start, stop = self.at_level(level)
        return stop - start


@dataclass(frozen=True)
class Halo:
    """Rows a convolution needs beyond its band: ``above`` before the first row, ``below`` after
    the last (both in the conv's *input* resolution)."""

    above: int
    below: int


def level_unit(levels: int) -> int:
    """Alignment of band boundaries in level-0 latent rows for a UNet with ``levels`` levels."""
    if levels < 1:
        raise GeometryError(f"a UNet has at least one level, got {levels}")
    return 1 << (levels - 1)


def max_bands(height: int, unit: int) -> int:
    """The largest band count for a latent ``height`` when every band keeps at least one unit."""
    return height // unit


def split_bands(height: int, n_bands: int, unit: int) -> tuple[Band, ...]:
    """Split ``height`` latent rows into ``n_bands`` contiguous bands of whole units.

    Bands differ by at most one unit; the larger ones come first. Raises GeometryError when the
    height is not a multiple of ``unit`` or there are more bands than units.
    """
    if n_bands < 1:
        raise GeometryError(f"need at least one band, got {n_bands}")
    if unit < 1 or height < 1:
        raise GeometryError(f"height and unit must be positive, got {height} and {unit}")
    if height % unit:
        raise GeometryError(
            f"latent height {height} is not a multiple of the band unit {unit} "
            f"(2**(levels-1) latent rows)"
        )
    units = height // unit
    if n_bands > units:
        raise GeometryError(
            f"latent height {height} has {units} units of {unit} rows: at most {units} bands, "
            f"got {n_bands}"
        )
    base, extra = divmod(units, n_bands)
    bands = []
    start = 0
    for index in range(n_bands):
        rows = (base + (1 if index < extra else 0)) * unit
        bands.append(Band(index, start, start + rows))
        start += rows
    return tuple(bands)


def conv_halo(kernel: int, stride: int, padding: int, dilation: int = 1) -> Halo:
    """Rows above/below a band that a convolution along the height needs.

    For a band whose first row is a multiple of ``stride``, output row ``j`` reads input rows
    ``j*stride - padding + d*[0, kernel)``: the band needs ``padding`` rows above and
    ``d*(kernel-1) + 1 - stride - padding`` rows below (never negative).
    """
    if kernel < 1 or stride < 1 or padding < 0 or dilation < 1:
        raise GeometryError(
            f"bad convolution: kernel={kernel} stride={stride} padding={padding} "
            f"dilation={dilation}"
        )
    span = dilation * (kernel - 1) + 1
    return Halo(above=padding, below=max(0, span - stride - padding))


def pcpp_rows(ratio: float, neighbour_rows: int) -> int:
    """Rows of a neighbouring band that a ``pcpp`` rank attends to: ``ceil(ratio * rows)``.

    A tiny tolerance keeps ``0.3 * 10`` at 3 rather than 4 despite float rounding.
    """
    if not 0.0 <= ratio <= 1.0:
        raise GeometryError(f"ratio must be in [0, 1], got {ratio}")
    return min(neighbour_rows, math.ceil(ratio * neighbour_rows - 1e-9))
