"""HaloConv2d on bands in threads with fake exchanges: sync equals the full convolution,
naive has seams, displaced steps use the previous step's halo."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
import torch
import torch.nn.functional as F
from parallel_fakes import (
    FakeRows,
    Mailbox,
    Tensor,
    run_bands,
    split_rows,
    torch_threads,
)
from torch import nn

from pcpp_mpi.geometry import conv_halo
from pcpp_mpi.parallel.clock import StepClock
from pcpp_mpi.parallel.halo_conv import HaloConv2d


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """The bands run in parallel threads: no intra-op threads on top."""
    with torch_threads(1):
        yield


# -- HaloConv2d ----------------------------------------------------------------------------------


def make_conv(stride: int, seed: int) -> nn.Conv2d:
    torch.manual_seed(seed)
    conv = nn.Conv2d(3, 5, 3, stride=stride, padding=1)
    conv.requires_grad_(False)
    return conv


def halo_convs(
    conv: nn.Conv2d,
    clocks: Sequence[StepClock],
    box: Mailbox,
) -> list[HaloConv2d]:
    """One layer per band, exchanging halo rows through ``box``."""
    halo = conv_halo(conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0])
    n = len(clocks)
    return [HaloConv2d(conv, halo, FakeRows(box, i, n), clocks[i]) for i in range(n)]


CONV_CASES = [
    # (stride, band rows): stride-2 bands start on even rows
    (1, (5, 3)),
    (1, (4, 4, 3)),
    (1, (1, 6, 2)),
    (2, (6, 4)),
    (2, (4, 2, 6)),
]


@pytest.mark.parametrize("stride,rows", CONV_CASES)
def test_halo_conv_sync_equals_full_conv(stride: int, rows: tuple[int, ...]) -> None:
    conv = make_conv(stride, seed=sum(rows) + stride)
    x = torch.randn(2, 3, sum(rows), 7)
    full = conv(x)
    n = len(rows)
    clocks = [StepClock("sync", 1, 0) for _ in range(n)]
    for clock in clocks:
        clock.begin(0)
    layers = halo_convs(conv, clocks, Mailbox())
    parts = split_rows(x, rows)
    outs = run_bands([lambda i=i: layers[i](parts[i]) for i in range(n)])
    for out, r in zip(outs, rows, strict=True):
        assert out.shape[2] == r // stride
    assert torch.allclose(torch.cat(outs, dim=2), full, atol=1e-6)


@pytest.mark.parametrize("stride,rows", CONV_CASES)
def test_halo_conv_naive_differs_at_band_edges(stride: int, rows: tuple[int, ...]) -> None:
    conv = make_conv(stride, seed=7 + stride)
    x = torch.randn(1, 3, sum(rows), 6) + 2.0  # nonzero neighbours: zeros are a visible error
    full = conv(x)
    n = len(rows)
    clocks = [StepClock("naive", 1, 0) for _ in range(n)]
    for clock in clocks:
        clock.begin(0)
        assert clock.kind == "local"
    box = Mailbox()
    layers = halo_convs(conv, clocks, box)
    outs = [layer(part) for layer, part in zip(layers, split_rows(x, rows), strict=True)]
    for layer in layers:  # naive: nothing posted, nothing waited for
        assert isinstance(layer.exchange, FakeRows)
        assert layer.exchange.posted_steps == [] and layer.exchange.waited_steps == []
    naive = torch.cat(outs, dim=2)
    assert naive.shape == full.shape
    wrong = (naive - full).abs().amax(dim=(0, 1, 3)) > 1e-4  # per output row
    # exactly the output rows that read a row of another band are wrong
    halo = conv_halo(3, stride, 1)
    edges = set()
    start = 0
    for index, r in enumerate(rows):
        first, last = start // stride, (start + r) // stride - 1
        if index > 0 and halo.above:
            edges.add(first)
        if index + 1 < n and halo.below:
            edges.add(last)
        start += r
    assert edges, "every case has a band edge with a halo"
    assert {int(i) for i in torch.nonzero(wrong).flatten()} == edges
    # the same layers without an exchange object behave the same
    alone = [HaloConv2d(conv, halo, None, clocks[i]) for i in range(n)]
    outs_alone = [layer(p) for layer, p in zip(alone, split_rows(x, rows), strict=True)]
    assert torch.equal(torch.cat(outs_alone, dim=2), naive)


def test_halo_conv_displaced_uses_previous_step() -> None:
    """Step 0 sync (x0), step 1 displaced (x1), step 2 displaced_last (x1 again): step 1 sees
    step 0's halos, step 2 sees step 1's and is exact again."""
    conv = make_conv(1, seed=3)
    rows = (4, 3, 5)
    n = len(rows)
    x0 = torch.randn(2, 3, sum(rows), 6)
    x1 = x0 + torch.randn_like(x0)
    clocks = [StepClock("distrifusion", 3, 1) for _ in range(n)]
    layers = halo_convs(conv, clocks, Mailbox())

    def step(step: int, x: Tensor) -> Tensor:
        for clock in clocks:
            clock.begin(step)
        parts = [part.contiguous() for part in split_rows(x, rows)]  # as a UNet's activations
        return torch.cat(run_bands([lambda i=i: layers[i](parts[i]) for i in range(n)]), dim=2)

    assert torch.allclose(step(0, x0), conv(x0), atol=1e-6)
    stale = step(1, x1)
    # interior rows are exact, rows next to a boundary used x0's halo
    boundary = {3, 4, 6, 7}  # last/first rows of [0,4), [4,7), [7,12)
    wrong = {int(i) for i in torch.nonzero((stale - conv(x1)).abs().amax(dim=(0, 1, 3)) > 1e-4)}
    assert wrong == boundary
    # a stale row r reads rows r-1..r+1: its own band's from x1, the other band's from x0
    band_of = [0] * 4 + [1] * 3 + [2] * 5
    for row in boundary:
        window = torch.stack(
            [
                x1[:, :, j] if band_of[j] == band_of[row] else x0[:, :, j]
                for j in range(row - 1, row + 2)
            ],
            dim=2,
        )
        expected = F.conv2d(window, conv.weight, conv.bias, padding=(0, 1))[:, :, 0]
        assert torch.allclose(stale[:, :, row], expected, atol=1e-6)
    assert torch.allclose(step(2, x1), conv(x1), atol=1e-6)
    for layer in layers:
        exchange = layer.exchange
        assert isinstance(exchange, FakeRows)
        assert exchange.posted_steps == [0, 1]  # the last step posts nothing
        assert exchange.waited_steps == [0, 0, 1]
        assert exchange.filled_steps == []  # every post hands over the rows to send
