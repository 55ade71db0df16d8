"""The Triton GroupNorm kernels (``runtime.norm_kernels: triton``), run by Triton's interpreter
on CPU tensors (``tests/conftest.py`` sets ``TRITON_INTERPRET=1``).

The interpreter keeps global state while a kernel runs, so bands run one after the other here,
with exchanges that hand out statistics computed beforehand, instead of the threads of
``test_band_norm.py``. On a GPU the same kernels are checked by ``tools/gpu_check.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from torch import nn

from pcpp_mpi.config import ConfigError, job_from_dict
from pcpp_mpi.config.schema import ModelConfig
from pcpp_mpi.families.unet import UNetFamily
from pcpp_mpi.geometry import level_unit, split_bands
from pcpp_mpi.models import unet_config
from pcpp_mpi.parallel.apply import BandOptions, ParallelHandle
from pcpp_mpi.parallel.band_norm import (
    BandGroupNorm,
    NormKernels,
    local_group_stats,
    resolve_norm_kernels,
)
from pcpp_mpi.parallel.clock import StepClock

Tensor = torch.Tensor


@pytest.fixture(scope="module")
def kernels(triton_module: Callable[[str], ModuleType]) -> ModuleType:
    return triton_module("pcpp_mpi.parallel.norm_kernels")


def exact_stats(x: Tensor, groups: int) -> Tensor:
    """``(3, B, G)`` float64 sums, sums of squares and counts of ``x``, from float64 values."""
    grouped = x.double().reshape(x.shape[0], groups, -1)
    counts = torch.full(grouped.shape[:2], float(grouped.shape[-1]), dtype=torch.float64)
    return torch.stack([grouped.sum(-1), grouped.square().sum(-1), counts])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    ("shape", "groups"),
    [((2, 6, 5, 7), 3), ((1, 4, 3, 1), 4), ((2, 4, 70, 90), 2)],
)
def test_group_stats_are_float64_sums_of_float32_partials(
    kernels: ModuleType, dtype: torch.dtype, shape: tuple[int, ...], groups: int
) -> None:
    """Sums and counts match float64 sums of the same values to float32 rounding; the large
    case splits each group into several chunks, the last one partial."""
    torch.manual_seed(len(shape) + groups)
    x = (torch.randn(shape) * 3.0 + 1.5).to(dtype)
    stats = kernels.group_stats(x, groups)
    assert stats.shape == (3, shape[0], groups) and stats.dtype == torch.float64
    expected = exact_stats(x, groups)
    assert torch.equal(stats[2], expected[2])
    assert torch.allclose(stats[:2], expected[:2], rtol=1e-6, atol=1e-4)
    group_len = x.numel() // (shape[0] * groups)
    chunk_len, split = kernels.stats_chunks(group_len, shape[0] * groups)
    assert chunk_len * (split - 1) < group_len <= chunk_len * split
    if shape[2] == 70:  # the large case: several chunks per group, the last one partial
        assert split > 1 and group_len % chunk_len


def test_normalize_adds_two_parts_of_the_statistics(kernels: ModuleType) -> None:
    """``stats + more`` (the other bands' stale sums + this band's fresh ones) normalise like
    their sum given whole; ``more`` must have the same shape."""
    x = torch.randn(2, 6, 5, 7) * 2.0 - 1.0
    whole = exact_stats(x, 3)
    part = exact_stats(x[:, :, :2], 3)
    split = kernels.normalize_with_stats(x, whole - part, 3, None, None, 1e-5, more=part)
    assert torch.allclose(split, kernels.normalize_with_stats(x, whole, 3, None, None, 1e-5))
    with pytest.raises(ValueError, match="more: expected"):
        kernels.normalize_with_stats(x, whole, 3, None, None, 1e-5, more=whole[:, :1])


def test_self_check_runs_on_the_cpu_interpreter(kernels: ModuleType) -> None:
    kernels.self_check(torch.device("cpu"))


def test_stats_chunks_spread_large_groups(kernels: ModuleType) -> None:
    """An SDXL band at 1024 px (B=2, 32 groups of 10 channels x 64 x 128) is summed by about
    STATS_PROGRAMS programs; tiny groups take one chunk each."""
    chunk_len, split = kernels.stats_chunks(10 * 64 * 128, 64)
    assert chunk_len % kernels.STATS_BLOCK == 0
    assert kernels.STATS_PROGRAMS // 2 <= 64 * split <= 2 * kernels.STATS_PROGRAMS
    assert kernels.stats_chunks(35, 12) == (kernels.STATS_BLOCK, 1)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_normalize_with_stats_equals_group_norm(
    kernels: ModuleType, affine: bool, batch: int, dtype: torch.dtype
) -> None:
    """Every sample is normalised with its own groups' statistics, then the affine map."""
    torch.manual_seed(batch)
    norm = nn.GroupNorm(3, 6, eps=1e-6, affine=affine).requires_grad_(False)
    if affine:
        nn.init.normal_(norm.weight)
        nn.init.normal_(norm.bias)
    x = torch.randn(batch, 6, 4, 5) * torch.arange(1.0, batch + 1).view(-1, 1, 1, 1) + 2.0
    stats = exact_stats(x.to(dtype), 3)
    weight = norm.weight.to(dtype) if affine else None
    bias = norm.bias.to(dtype) if affine else None
    out = kernels.normalize_with_stats(x.to(dtype), stats, 3, weight, bias, norm.eps)
    assert out.dtype == dtype and out.shape == x.shape
    expected = F.group_norm(x.to(dtype).float(), 3, norm.weight, norm.bias, norm.eps)
    tolerance = 1e-5 if dtype == torch.float32 else 4e-3
    assert torch.allclose(out.float(), expected, atol=tolerance, rtol=tolerance)


def test_kernels_reject_what_they_cannot_handle(kernels: ModuleType) -> None:
    x = torch.randn(2, 6, 4, 5)
    with pytest.raises(ValueError, match="divisible by 4"):
        kernels.group_stats(x, 4)
    with pytest.raises(ValueError, match="contiguous"):
        kernels.group_stats(x.transpose(2, 3), 3)
    with pytest.raises(ValueError, match="float64 statistics"):
        kernels.normalize_with_stats(x, torch.zeros(3, 2, 3), 3, None, None, 1e-5)
    with pytest.raises(ValueError, match="stats: expected contiguous"):
        stats = torch.zeros(3, 3, 2, dtype=torch.float64).transpose(1, 2)
        kernels.normalize_with_stats(x, stats, 3, None, None, 1e-5)


# -- BandGroupNorm with kernels="triton" ---------------------------------------------------------


class KnownStats:
    """A statistics exchange whose results were computed beforehand: ``wait(t)`` returns
    ``global_[t]``, ``wait_others(t)`` returns ``others[t]``; posts are kept."""

    def __init__(self, global_: dict[int, Tensor], others: dict[int, Tensor]) -> None:
        self.global_, self.others = global_, others
        self.posted: dict[int, Tensor] = {}

    def post(self, step: int, local: Tensor) -> None:
        self.posted[step] = local.clone()

    def wait(self, step: int) -> Tensor:
        return self.global_[step]

    def wait_others(self, step: int) -> Tensor:
        return self.others[step]


def make_norm(groups: int, channels: int, seed: int) -> nn.GroupNorm:
    torch.manual_seed(seed)
    norm = nn.GroupNorm(groups, channels, eps=1e-5).requires_grad_(False)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    return norm


def test_band_group_norm_triton_sync_and_displaced(kernels: ModuleType) -> None:
    """Three bands, a sync step then a displaced one, each band run alone with the statistics
    the other bands would send: sync bands equal the full GroupNorm's rows; a displaced band
    combines the other bands' stale sums with its fresh ones; both kernel choices agree, and
    what a band posts is its own sums."""
    norm = make_norm(4, 8, seed=5)
    rows = (4, 2, 5)
    x0 = torch.randn(2, 8, sum(rows), 3) * 2.0 + 1.0
    x1 = x0 + torch.randn_like(x0) * 0.5
    parts0, parts1 = x0.split(rows, dim=2), x1.split(rows, dim=2)
    global0 = sum(exact_stats(p, 4) for p in parts0)
    for i in range(len(rows)):
        others0 = global0 - exact_stats(parts0[i], 4)
        outs = {}
        for choice in ("torch", "triton"):
            clock = StepClock("distrifusion", 3, 1)  # step 1 posts for step 2
            exchange = KnownStats({0: global0}, {0: others0})
            layer = BandGroupNorm(norm, exchange, clock, kernels=choice)
            clock.begin(0)
            sync_out = layer(parts0[i])
            assert torch.allclose(sync_out, norm(x0).split(rows, dim=2)[i], atol=1e-5)
            assert torch.allclose(exchange.posted[0], exact_stats(parts0[i], 4), rtol=1e-6)
            clock.begin(1)
            outs[choice] = layer(parts1[i])
            assert torch.allclose(exchange.posted[1], exact_stats(parts1[i], 4), rtol=1e-6)
            stale = others0 + exact_stats(parts1[i], 4)
            mean = stale[0] / stale[2]
            std = (stale[1] / stale[2] - mean**2 + norm.eps).sqrt()
            per_channel = (mean.repeat_interleave(2, 1), std.repeat_interleave(2, 1))
            expected = (parts1[i].double() - per_channel[0][..., None, None]) / per_channel[1][
                ..., None, None
            ]
            expected = expected * norm.weight[:, None, None] + norm.bias[:, None, None]
            assert torch.allclose(outs[choice].double(), expected, atol=1e-5)
        assert torch.allclose(outs["torch"], outs["triton"], atol=1e-5)


def test_band_group_norm_triton_falls_back_for_other_inputs(kernels: ModuleType) -> None:
    """A non-contiguous or float64 band takes the PyTorch path (same result)."""
    norm = make_norm(2, 4, seed=2).double()
    x = torch.randn(1, 4, 5, 6, dtype=torch.float64)
    stats = exact_stats(x, 2)
    for band in (x, x.transpose(2, 3).contiguous().transpose(2, 3)):
        clock = StepClock("sync", 1, 0)
        clock.begin(0)
        layer = BandGroupNorm(norm, KnownStats({0: stats}, {}), clock, kernels="triton")
        assert torch.allclose(layer(band), norm(x), atol=1e-10)


def test_band_group_norm_own_statistics(kernels: ModuleType) -> None:
    """A band normalised with its own statistics (``naive`` bands, ``single``'s whole image):
    PyTorch's choice is ``F.group_norm`` itself, Triton's agrees with it."""
    norm = make_norm(2, 4, seed=3)
    x = torch.randn(2, 4, 3, 5) * 2.0 - 1.0
    expected = F.group_norm(x, 2, norm.weight, norm.bias, norm.eps)
    for mode in ("naive", "single"):
        clock = StepClock(mode, 1, 0)
        clock.begin(0)
        assert torch.equal(BandGroupNorm(norm, None, clock, kernels="torch")(x), expected)
        triton_out = BandGroupNorm(norm, None, clock, kernels="triton")(x)
        assert torch.allclose(triton_out, expected, atol=1e-5)


def test_resolve_norm_kernels(kernels: ModuleType) -> None:
    cpu = torch.device("cpu")
    assert resolve_norm_kernels("auto", cpu) == "torch"
    assert resolve_norm_kernels("torch", torch.device("cuda", 0)) == "torch"
    assert resolve_norm_kernels("triton", cpu) == "triton"  # the interpreter imports
    with pytest.raises(ValueError, match="unknown setting 'fast'"):
        resolve_norm_kernels("fast", torch.device("cuda", 0))


def test_triton_norm_kernels_need_a_gpu_in_a_job() -> None:
    with pytest.raises(ConfigError, match=r"runtime\.norm_kernels: 'triton' needs runtime\.device"):
        job_from_dict({"runtime": {"norm_kernels": "triton"}})
    job = job_from_dict({"runtime": {"norm_kernels": "triton", "device": "cuda"}})
    assert job.runtime.norm_kernels == "triton"
    with pytest.raises(ConfigError, match="norm_kernels"):
        job_from_dict({"runtime": {"norm_kernels": "cuda"}})


def test_local_group_stats_and_kernels_agree_on_counts(kernels: ModuleType) -> None:
    x = torch.randn(3, 6, 2, 7)
    assert torch.equal(kernels.group_stats(x, 3)[2], local_group_stats(x, 3)[2])


def test_single_gets_the_triton_group_norm(kernels: ModuleType) -> None:
    """``single`` (and any one-band run) replaces every GroupNorm of the UNet with the chosen
    kernels' own-statistics norm, so the one-GPU baseline is as fast as the bands' norms; with
    PyTorch's kernels the UNet is left alone. The output agrees with the plain UNet and
    ``remove`` restores it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_config(unet_config(ModelConfig(builtin="tiny")))
    unet.requires_grad_(False).eval()
    latent = (8, 8)
    family = UNetFamily()
    inventory = family.inventory_of(unet, *latent)
    generator = torch.Generator().manual_seed(4)
    sample = torch.randn(2, 4, *latent, generator=generator)
    text = torch.randn(2, 16, unet.config.cross_attention_dim, generator=generator)
    plain = unet(sample, 500, encoder_hidden_states=text).sample
    bands = split_bands(latent[0], 1, level_unit(inventory.levels))
    clock = StepClock("single", 1, 0)
    no_comm: Any = None  # one band never communicates

    def install(kernels: NormKernels) -> ParallelHandle:
        options = BandOptions(mode="single", ratio=0.3, batch=2, norm_kernels=kernels)
        return family.parallelize(unet, inventory, no_comm, bands, clock, options)

    assert not install("torch").replaced
    handle = install("triton")
    norms = [m for m in unet.modules() if isinstance(m, BandGroupNorm)]
    assert len(norms) == len(inventory.norms) == len(handle.replaced)
    assert all(m.exchange is None and m.kernels == "triton" for m in norms)
    clock.begin(0)
    out = unet(sample, 500, encoder_hidden_states=text).sample
    assert (out - plain).abs().max() <= 1e-5 * plain.abs().max()
    handle.remove()
    assert not any(isinstance(m, BandGroupNorm) for m in unet.modules())
