"""BandGroupNorm on bands in threads with a fake all-reduce: sync equals GroupNorm, local
uses band statistics, displaced steps correct stale statistics."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from parallel_fakes import (
    FakeAllreduce,
    Mailbox,
    Tensor,
    run_bands,
    split_rows,
    torch_threads,
)
from torch import nn

from pcpp_mpi.parallel.band_norm import BandGroupNorm, local_group_stats
from pcpp_mpi.parallel.clock import StepClock


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """The bands run in parallel threads: no intra-op threads on top."""
    with torch_threads(1):
        yield


# -- BandGroupNorm -------------------------------------------------------------------------------


def make_norm(groups: int, channels: int, seed: int) -> nn.GroupNorm:
    torch.manual_seed(seed)
    norm = nn.GroupNorm(groups, channels, eps=1e-5)
    norm.requires_grad_(False)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    return norm


@pytest.mark.parametrize("rows", [(5, 3), (4, 1, 7), (2, 6, 3, 1)])
def test_band_group_norm_sync_equals_group_norm(rows: tuple[int, ...]) -> None:
    norm = make_norm(4, 8, seed=len(rows))
    x = torch.randn(2, 8, sum(rows), 5) * 3.0 + 1.5
    full = norm(x)
    n = len(rows)
    clocks = [StepClock("sync", 1, 0) for _ in range(n)]
    for clock in clocks:
        clock.begin(0)
    box = Mailbox()
    layers = [BandGroupNorm(norm, FakeAllreduce(box, i, n), clocks[i]) for i in range(n)]
    parts = split_rows(x, rows)
    outs = run_bands([lambda i=i: layers[i](parts[i]) for i in range(n)])
    assert torch.allclose(torch.cat(outs, dim=2), full, atol=1e-5)


def test_band_group_norm_follows_weight_changes() -> None:
    """The float64 copies of weight and bias are made again when the parameters change."""
    norm = make_norm(4, 8, seed=3)
    x = torch.randn(2, 8, 6, 5)
    clock = StepClock("sync", 1, 0)
    clock.begin(0)
    layer = BandGroupNorm(norm, FakeAllreduce(Mailbox(), 0, 1), clock)
    assert torch.allclose(layer(x), norm(x), atol=1e-5)
    clock.begin(1)
    with torch.no_grad():
        norm.weight.mul_(-2.0)
        norm.bias.add_(1.0)
    assert torch.allclose(layer(x), norm(x), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("batch", [1, 3])
def test_band_group_norm_matches_group_norm_per_sample(
    dtype: torch.dtype, affine: bool, batch: int
) -> None:
    """Every sample of the batch is normalised with its own groups' statistics, with or
    without the affine map, in half precision too (statistics and parameters in float32)."""
    torch.manual_seed(batch)
    norm = nn.GroupNorm(3, 6, eps=1e-6, affine=affine).requires_grad_(False)
    if affine:
        nn.init.normal_(norm.weight)
        nn.init.normal_(norm.bias)
    x = torch.randn(batch, 6, 4, 5) * torch.arange(1.0, batch + 1).view(-1, 1, 1, 1) + 2.0
    clock = StepClock("sync", 1, 0)
    clock.begin(0)
    layer = BandGroupNorm(norm.to(dtype), FakeAllreduce(Mailbox(), 0, 1), clock)
    out = layer(x.to(dtype))
    assert out.dtype == dtype and out.shape == x.shape
    expected = norm.float()(x)
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    assert torch.allclose(out.float(), expected, atol=tolerance, rtol=tolerance)


def test_band_group_norm_local_uses_band_statistics() -> None:
    norm = make_norm(2, 4, seed=11)
    rows = (3, 5)
    x = torch.randn(1, 4, 8, 4)
    x[:, :, 3:] += 5.0  # different statistics per band
    clock = StepClock("naive", 1, 0)
    clock.begin(0)
    layers = [BandGroupNorm(norm, None, clock) for _ in rows]
    for layer, part in zip(layers, split_rows(x, rows), strict=True):
        assert torch.allclose(layer(part), norm(part), atol=1e-5)
    out = torch.cat([layer(p) for layer, p in zip(layers, split_rows(x, rows), strict=True)], 2)
    assert not torch.allclose(out, norm(x), atol=1e-3)


def test_local_group_stats() -> None:
    x = torch.arange(2 * 4 * 3 * 2, dtype=torch.float32).reshape(2, 4, 3, 2)
    stats = local_group_stats(x, 2)
    assert stats.shape == (3, 2, 2) and stats.dtype == torch.float64
    grouped = x.double().reshape(2, 2, -1)
    assert torch.equal(stats[0], grouped.sum(-1))
    assert torch.equal(stats[1], grouped.square().sum(-1))
    assert torch.equal(stats[2], torch.full((2, 2), 12.0, dtype=torch.float64))


def test_band_group_norm_displaced_correction() -> None:
    """Displaced stats = previous global - previous own + fresh own: a band whose rows alone
    changed since the previous step gets exactly the new global statistics."""
    norm = make_norm(4, 8, seed=5)
    rows = (4, 2, 5)
    n = len(rows)
    x0 = torch.randn(2, 8, sum(rows), 3)
    x1 = x0.clone()
    x1[:, :, 4:6] = torch.randn(2, 8, 2, 3) * 4.0 + 3.0  # only band 1 changes
    clocks = [StepClock("distrifusion", 2, 1) for _ in range(n)]
    box = Mailbox()
    layers = [BandGroupNorm(norm, FakeAllreduce(box, i, n), clocks[i]) for i in range(n)]

    def step(step: int, x: Tensor) -> list[Tensor]:
        for clock in clocks:
            clock.begin(step)
        parts = split_rows(x, rows)
        return run_bands([lambda i=i: layers[i](parts[i]) for i in range(n)])

    assert torch.allclose(torch.cat(step(0, x0), dim=2), norm(x0), atol=1e-5)
    outs = step(1, x1)
    exact = split_rows(norm(x1), rows)
    assert torch.allclose(outs[1], exact[1], atol=1e-5)
    # the unchanged bands used band 1's stale share
    assert not torch.allclose(outs[0], exact[0], atol=1e-3)
    assert torch.allclose(outs[0], split_rows(norm(x0), rows)[0], atol=1e-5)
