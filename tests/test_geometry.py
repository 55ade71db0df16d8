"""Band geometry (pcpp_mpi.geometry): pure arithmetic, checked exhaustively and by brute force."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from pcpp_mpi.geometry import (
    Band,
    GeometryError,
    Halo,
    conv_halo,
    level_unit,
    max_bands,
    pcpp_rows,
    split_bands,
)

# (height, unit): odd and even unit counts for unit 4 (3 levels) and unit 8 (4 levels)
LAYOUTS = [
    (20, 4),  # 5 units
    (28, 4),  # 7 units
    (36, 4),  # 9 units
    (64, 4),  # 16 units
    (40, 8),  # 5 units
    (56, 8),  # 7 units
    (64, 8),  # 8 units
    (128, 8),  # 16 units
    (3, 1),  # 3 units of one row (a one-level UNet)
]


# -- split_bands ---------------------------------------------------------------------------------


@pytest.mark.parametrize("height,unit", LAYOUTS)
@pytest.mark.parametrize("n", range(1, 9))
def test_split_bands_layout(height: int, unit: int, n: int) -> None:
    units = height // unit
    if n > units:
        with pytest.raises(GeometryError, match=f"at most {units} bands"):
            split_bands(height, n, unit)
        return
    bands = split_bands(height, n, unit)
    assert len(bands) == n
    assert [b.index for b in bands] == list(range(n))
    # contiguous and covering [0, height)
    assert bands[0].start == 0
    assert bands[-1].stop == height
    for above, below in itertools.pairwise(bands):
        assert above.stop == below.start
    # whole units, at least one each
    for band in bands:
        assert band.start % unit == 0 and band.stop % unit == 0
        assert band.rows >= unit
    # differ by at most one unit, larger bands first
    rows = [b.rows for b in bands]
    assert max(rows) - min(rows) <= unit
    assert rows == sorted(rows, reverse=True)
    # the sizes are the even split of the units: divmod(units, n)
    base, extra = divmod(units, n)
    assert rows == [(base + 1) * unit] * extra + [base * unit] * (n - extra)


@pytest.mark.parametrize(
    "height,unit,n",
    [(h, u, n) for h, u in LAYOUTS for n in range(1, 9) if n <= h // u],
)
def test_split_bands_tile_every_level(height: int, unit: int, n: int) -> None:
    bands = split_bands(height, n, unit)
    levels = unit.bit_length()  # unit == 2 ** (levels - 1)
    assert level_unit(levels) == unit
    for level in range(levels):
        scale = 1 << level
        previous_stop = 0
        for band in bands:
            start, stop = band.at_level(level)
            assert isinstance(start, int) and isinstance(stop, int)
            # exact division: no row of any level is split between two bands
            assert start * scale == band.start and stop * scale == band.stop
            assert start == previous_stop
            assert stop - start == band.rows_at_level(level) >= 1
            previous_stop = stop
        assert previous_stop == height // scale


def test_split_bands_known_answers() -> None:
    # 28 rows = 7 units of 4: 3 bands get 3, 2, 2 units
    assert split_bands(28, 3, 4) == (Band(0, 0, 12), Band(1, 12, 20), Band(2, 20, 28))
    # 20 rows = 5 units of 4: 2 bands get 3, 2 units
    assert split_bands(20, 2, 4) == (Band(0, 0, 12), Band(1, 12, 20))
    assert split_bands(64, 1, 8) == (Band(0, 0, 64),)
    band = Band(1, 12, 20)
    assert band.rows == 8
    assert band.at_level(2) == (3, 5)
    assert band.rows_at_level(2) == 2


def test_split_bands_too_many_bands_message() -> None:
    with pytest.raises(GeometryError) as info:
        split_bands(20, 6, 4)
    message = str(info.value)
    assert "at most 5 bands" in message
    assert "got 6" in message


@pytest.mark.parametrize("height,unit", [(30, 4), (21, 4), (60, 8), (4, 8)])
def test_split_bands_height_not_multiple_of_unit(height: int, unit: int) -> None:
    with pytest.raises(GeometryError, match="not a multiple"):
        split_bands(height, 1, unit)


@pytest.mark.parametrize("n", [0, -1])
def test_split_bands_needs_a_band(n: int) -> None:
    with pytest.raises(GeometryError, match="at least one band"):
        split_bands(32, n, 4)


@pytest.mark.parametrize("height,unit", [(0, 4), (-8, 4), (32, 0)])
def test_split_bands_non_positive_sizes(height: int, unit: int) -> None:
    with pytest.raises(GeometryError):
        split_bands(height, 1, unit)


def test_geometry_error_is_a_value_error() -> None:
    assert issubclass(GeometryError, ValueError)


# -- max_bands / level_unit ----------------------------------------------------------------------


def test_max_bands() -> None:
    assert max_bands(20, 4) == 5
    assert max_bands(32, 4) == 8
    assert max_bands(128, 8) == 16
    assert max_bands(7, 8) == 0
    for height, unit in LAYOUTS:
        most = max_bands(height, unit)
        assert len(split_bands(height, most, unit)) == most
        with pytest.raises(GeometryError):
            split_bands(height, most + 1, unit)


def test_level_unit() -> None:
    assert [level_unit(levels) for levels in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 16]
    for bad in (0, -1):
        with pytest.raises(GeometryError):
            level_unit(bad)


# -- conv_halo -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kernel,stride,padding,dilation,expected",
    [
        (3, 1, 1, 1, Halo(1, 1)),
        (3, 2, 1, 1, Halo(1, 0)),  # stride-2 downsampler: rows above only
        (1, 1, 0, 1, Halo(0, 0)),
        (5, 1, 2, 1, Halo(2, 2)),
        (3, 1, 2, 2, Halo(2, 2)),  # dilation 2: span 5
        (4, 2, 1, 1, Halo(1, 1)),  # span 4 - stride 2 - padding 1 = 1 below
        (2, 2, 0, 1, Halo(0, 0)),  # non-overlapping 2x2 patches
        (3, 1, 0, 1, Halo(0, 2)),  # "valid" conv: everything below
    ],
)
def test_conv_halo(kernel: int, stride: int, padding: int, dilation: int, expected: Halo) -> None:
    assert conv_halo(kernel, stride, padding, dilation) == expected


def test_conv_halo_default_dilation() -> None:
    assert conv_halo(3, 1, 1) == Halo(above=1, below=1)


@pytest.mark.parametrize(
    "kernel,stride,padding,dilation",
    [(0, 1, 0, 1), (3, 0, 1, 1), (3, 1, -1, 1), (3, 1, 1, 0)],
)
def test_conv_halo_rejects_bad_convolutions(
    kernel: int, stride: int, padding: int, dilation: int
) -> None:
    with pytest.raises(GeometryError, match="bad convolution"):
        conv_halo(kernel, stride, padding, dilation)


# "same"-sized zero-padded convolutions (output height = input height / stride), the kind UNets
# use: (kernel, stride, padding, dilation)
SAME_CONVS = [
    (3, 1, 1, 1),
    (3, 2, 1, 1),
    (1, 1, 0, 1),
    (1, 2, 0, 1),
    (5, 1, 2, 1),
    (5, 2, 2, 1),
    (3, 1, 2, 2),
    (4, 2, 1, 1),
    (2, 2, 0, 1),
    (7, 1, 3, 1),
]


def _band_starts(height: int, stride: int, n: int, generator: torch.Generator) -> list[int]:
    """``n`` random distinct band starts (multiples of ``stride``), the first at 0."""
    choices = torch.randperm(height // stride - 1, generator=generator)[: n - 1] + 1
    return [0, *sorted(int(c) * stride for c in choices)]


@pytest.mark.parametrize("kernel,stride,padding,dilation", SAME_CONVS)
def test_conv_halo_brute_force(kernel: int, stride: int, padding: int, dilation: int) -> None:
    """A conv over [halo of the band above + band + halo of the band below] (zeros beyond the
    image edges, no height padding) gives exactly the band's rows of the full-image conv."""
    generator = torch.Generator().manual_seed(1000 * kernel + 100 * stride + 10 * padding)
    height, width = 24, 7
    halo = conv_halo(kernel, stride, padding, dilation)
    weight = torch.randn(5, 3, kernel, kernel, generator=generator, dtype=torch.float64)
    bias = torch.randn(5, generator=generator, dtype=torch.float64)
    x = torch.randn(2, 3, height, width, generator=generator, dtype=torch.float64)
    full = F.conv2d(x, weight, bias, stride=stride, padding=padding, dilation=dilation)
    assert full.shape[2] == height // stride  # a "same" convolution
    # zero rows beyond the image edges stand in for the height padding
    padded = torch.cat(
        [x.new_zeros(2, 3, halo.above, width), x, x.new_zeros(2, 3, halo.below, width)], dim=2
    )
    for trial in range(4):
        n = 2 + trial  # 2..5 bands
        starts = _band_starts(height, stride, n, generator)
        stops = [*starts[1:], height]
        outputs = []
        for start, stop in zip(starts, stops, strict=True):
            # rows [start - above, stop + below) of the image, i.e. of `padded` shifted by above
            extended = padded[:, :, start : stop + halo.above + halo.below]
            out = F.conv2d(
                extended, weight, bias, stride=stride, padding=(0, padding), dilation=dilation
            )
            assert out.shape[2] == (stop - start) // stride
            expected = full[:, :, start // stride : stop // stride]
            torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
            outputs.append(out)
        torch.testing.assert_close(torch.cat(outputs, dim=2), full, rtol=0, atol=1e-12)


def test_conv_halo_smaller_halo_is_wrong() -> None:
    """The halo is also necessary: one row less above changes the first output row."""
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(1, 2, 12, 5, generator=generator, dtype=torch.float64)
    weight = torch.randn(2, 2, 3, 3, generator=generator, dtype=torch.float64)
    full = F.conv2d(x, weight, padding=1)
    halo = conv_halo(3, 1, 1)
    start, stop = 4, 8
    short = x[:, :, start : stop + halo.below]  # no row above
    out = F.conv2d(short, weight, padding=(0, 1))
    assert out.shape[2] == stop - start - 1
    assert not torch.allclose(out[:, :, 0], full[:, :, start])


# -- pcpp_rows -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ratio,rows,expected",
    [
        (0.3, 10, 3),  # 0.3 * 10 == 3.0000000000000004 in floats: still 3
        (0.3, 7, 3),  # ceil(2.1)
        (0.3, 1, 1),  # ceil(0.3): any positive ratio keeps at least one row
        (0.3, 20, 6),  # 5.999999999999999 or 6.000000000000001: 6
        (0.1, 30, 3),  # 3.0000000000000004
        (0.7, 10, 7),  # 7.000000000000001
        (0.5, 3, 2),
        (0.0, 10, 0),
        (0.0, 1, 0),
        (1.0, 10, 10),
        (1.0, 1, 1),
        (0.999, 10, 10),
        (0.3, 0, 0),
    ],
)
def test_pcpp_rows(ratio: float, rows: int, expected: int) -> None:
    assert pcpp_rows(ratio, rows) == expected


def test_pcpp_rows_is_ceil_for_exact_products() -> None:
    for rows in range(1, 65):
        for tenths in range(11):
            ratio = tenths / 10
            exact = math.ceil(tenths * rows / 10)  # integer arithmetic: no rounding
            assert pcpp_rows(ratio, rows) == exact, (ratio, rows)


@pytest.mark.parametrize("ratio", [-0.1, 1.0001, 2.0, -1e-12])
def test_pcpp_rows_rejects_ratio_outside_unit_interval(ratio: float) -> None:
    with pytest.raises(GeometryError, match="ratio"):
        pcpp_rows(ratio, 10)
