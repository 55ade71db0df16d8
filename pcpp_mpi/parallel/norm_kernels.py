"""GroupNorm of a band in three Triton kernels: partial sums, their total, and the normalisation.

A band's GroupNorm in a displaced step written with PyTorch operations takes ~16 kernels
(two reductions and their memsets, float64 conversions, the statistics correction, a per-channel
expansion, a batch norm); in a CUDA graph each also leaves the GPU idle for a moment besides its
own time (docs/BENCHMARKS.md, "Changes after run 6"), and an SDXL step has ~50 norms. Here a
displaced norm takes three kernels and the copies of the statistics to and from the host
buffers MPI uses:

1. :func:`group_stats` — per-group sum, sum of squares (float32 partial sums of contiguous
   chunks, added in float64) and element count, ``(3, B, G)`` float64 like
   :func:`pcpp_mpi.parallel.band_norm.local_group_stats`;
2. :func:`normalize_with_stats` — ``(x - mean) * rstd * weight + bias`` with the group
   statistics, which it can add up from two parts (the other bands' stale sums and this band's
   fresh ones) in float64.

The band's sums are copied to the host, and the other bands' copied back, one after the other
(two copies in a row cost less idle GPU than copies between kernels). Tried and dropped
(docs/benchmarks/results/12-triton-group-norm-1xh200/): kernels writing the sums into the
pinned send buffer (long idle gaps on the GPU inside a displaced step's graph) or reading them
from the pinned receive buffer (no clear gain over the copy, which needs no mapped host
memory).

Input and output are local bands ``(B, C, h, W)``, contiguous, float16, bfloat16 or float32.
This module imports Triton; :func:`pcpp_mpi.parallel.band_norm.resolve_norm_kernels` says
whether it can be used. Under ``TRITON_INTERPRET=1`` the kernels run on CPU tensors (tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

STATS_BLOCK = 2048  # elements a stats program loads per iteration
STATS_PROGRAMS = 1024  # about how many stats programs a norm launches (a few per SM of a big GPU)
APPLY_BLOCK = 2048  # most elements of one channel an apply program handles

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _partial_sums_kernel(x_ptr, partial_ptr, group_len, chunk_len, split, BLOCK: tl.constexpr):
    """Program ``(g, s)``: float32 sum and sum of squares of chunk ``s`` of group ``g``
    (elements ``[s * chunk_len, (s + 1) * chunk_len)`` of the group's contiguous run) into
    ``partial[g, s, :]``."""
    group = tl.program_id(0)
    chunk = tl.program_id(1)
    start = chunk * chunk_len
    end = tl.minimum(start + chunk_len, group_len)
    base = x_ptr + group.to(tl.int64) * group_len
    offsets = tl.arange(0, BLOCK)
    total = tl.zeros([BLOCK], dtype=tl.float32)
    squares = tl.zeros([BLOCK], dtype=tl.float32)
    for first in range(start, end, BLOCK):
        index = first + offsets
        values = tl.load(base + index, mask=index < end, other=0.0).to(tl.float32)
        total += values
        squares += values * values
    out = partial_ptr + (group * split + chunk) * 2
    tl.store(out, tl.sum(total, axis=0))
    tl.store(out + 1, tl.sum(squares, axis=0))


@triton.jit
def _total_kernel(partial_ptr, stats_ptr, split, n_groups, count, SPLIT_BLOCK: tl.constexpr):
    """Program ``g``: the ``split`` partial sums of group ``g`` added in float64 into
    ``stats[0, g]`` and ``stats[1, g]``; ``stats[2, g] = count``."""
    group = tl.program_id(0)
    index = tl.arange(0, SPLIT_BLOCK)
    mask = index < split
    partial = partial_ptr + (group * split + index) * 2
    total = tl.sum(tl.load(partial, mask=mask, other=0.0).to(tl.float64), axis=0)
    squares = tl.sum(tl.load(partial + 1, mask=mask, other=0.0).to(tl.float64), axis=0)
    tl.store(stats_ptr + group, total)
    tl.store(stats_ptr + n_groups + group, squares)
    tl.store(stats_ptr + 2 * n_groups + group, count.to(tl.float64))


@triton.jit
def _normalize_kernel(
    x_ptr,
    out_ptr,
    stats_ptr,
    more_ptr,
    weight_ptr,
    bias_ptr,
    channels,
    channels_per_group,
    n_groups,
    hw,
    eps,
    MORE: tl.constexpr,
    AFFINE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Program ``(bc, k)``: block ``k`` of channel ``bc = sample * channels + c``, normalised
    with its group's statistics (``stats``: ``(3, B*G)`` float64 sums, sums of squares,
    counts; with ``MORE``, plus ``more``), then scaled and shifted by ``weight[c]``,
    ``bias[c]``."""
    row = tl.program_id(0)
    block = tl.program_id(1)
    channel = row % channels
    group = (row // channels) * (channels // channels_per_group) + channel // channels_per_group
    total = tl.load(stats_ptr + group)
    squares = tl.load(stats_ptr + n_groups + group)
    count = tl.load(stats_ptr + 2 * n_groups + group)
    if MORE:
        total += tl.load(more_ptr + group)
        squares += tl.load(more_ptr + n_groups + group)
        count += tl.load(more_ptr + 2 * n_groups + group)
    mean = total / count
    var = tl.maximum(squares / count - mean * mean, 0.0)
    rstd = 1.0 / tl.sqrt(var + eps)
    if AFFINE:
        scale = rstd * tl.load(weight_ptr + channel).to(tl.float64)
        shift = tl.load(bias_ptr + channel).to(tl.float64) - mean * scale
    else:
        scale = rstd
        shift = -mean * scale
    index = block * BLOCK + tl.arange(0, BLOCK)
    mask = index < hw
    offset = row.to(tl.int64) * hw
    values = tl.load(x_ptr + offset + index, mask=mask, other=0.0).to(tl.float32)
    result = values * scale.to(tl.float32) + shift.to(tl.float32)
    tl.store(out_ptr + offset + index, result.to(out_ptr.dtype.element_ty), mask=mask)


def _check_band(x: torch.Tensor, groups: int) -> None:
    if x.ndim != 4 or x.shape[1] % groups:
        raise ValueError(
            f"expected (B, C, h, W) with C divisible by {groups}, got {tuple(x.shape)}"
        )
    if x.dtype not in SUPPORTED_DTYPES or not x.is_contiguous():
        raise ValueError(f"expected a contiguous float16/bfloat16/float32 band, got {x.dtype}")


def stats_chunks(group_len: int, n_groups: int) -> tuple[int, int]:
    """``(chunk_len, split)``: each of ``n_groups`` groups of ``group_len`` contiguous elements
    is summed in ``split`` chunks of ``chunk_len`` (a multiple of the load block; the last
    chunk may be shorter), so that about :data:`STATS_PROGRAMS` programs share the work."""
    wanted = max(1, STATS_PROGRAMS // n_groups)
    chunk_len = STATS_BLOCK * max(1, triton.cdiv(group_len, STATS_BLOCK * wanted))
    return chunk_len, triton.cdiv(group_len, chunk_len)


def _check_stats(stats: torch.Tensor, batch: int, groups: int, what: str) -> None:
    if stats.shape != (3, batch, groups) or stats.dtype != torch.float64:
        raise ValueError(f"{what}: expected (3, {batch}, {groups}) float64 statistics")
    if not stats.is_contiguous():
        raise ValueError(f"{what}: expected contiguous statistics")


def group_stats(x: torch.Tensor, groups: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """``(3, B, G)`` float64 on ``x``'s device: per-group sum, sum of squares and element count
    of the local band ``x`` ``(B, C, h, W)``, written into ``out`` if given. Two kernels:
    float32 partial sums over chunks of each group, then their float64 totals."""
    _check_band(x, groups)
    batch = x.shape[0]
    n_groups = batch * groups
    group_len = x.numel() // n_groups
    chunk_len, split = stats_chunks(group_len, n_groups)
    partial = torch.empty((n_groups, split, 2), dtype=torch.float32, device=x.device)
    if out is None:
        stats = torch.empty((3, batch, groups), dtype=torch.float64, device=x.device)
    else:
        _check_stats(out, batch, groups, "out")
        stats = out
    _partial_sums_kernel[(n_groups, split)](
        x, partial, group_len, chunk_len, split, BLOCK=STATS_BLOCK
    )
    _total_kernel[(n_groups,)](
        partial, stats, split, n_groups, group_len,
        SPLIT_BLOCK=max(16, triton.next_power_of_2(split)),
    )  # fmt: skip
    return stats


def normalize_with_stats(
    x: torch.Tensor,
    stats: torch.Tensor,
    groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    more: torch.Tensor | None = None,
) -> torch.Tensor:
    """GroupNorm of the local band ``x`` ``(B, C, h, W)`` with the group statistics ``stats``
    (``(3, B, G)`` float64 on ``x``'s device: sums, sums of squares, counts, e.g. of the whole
    image), plus ``more`` if given (e.g. the other bands' stale sums plus this band's fresh
    ones), then the affine map; a new tensor like ``x``. One kernel."""
    _check_band(x, groups)
    batch, channels = x.shape[:2]
    _check_stats(stats, batch, groups, "stats")
    if more is not None:
        _check_stats(more, batch, groups, "more")
    hw = x.shape[2] * x.shape[3]
    block = min(APPLY_BLOCK, triton.next_power_of_2(max(hw, 16)))
    out = torch.empty_like(x)
    affine = weight is not None
    _normalize_kernel[(batch * channels, triton.cdiv(hw, block))](
        x, out, stats, stats if more is None else more,
        weight if affine else x, bias if affine else x,
        channels, channels // groups, batch * groups, hw, eps,
        MORE=more is not None, AFFINE=affine, BLOCK=block,
    )  # fmt: skip
    return out


def self_check(device: torch.device) -> None:
    """Compile and run the kernels on a small band on ``device`` as a displaced step does and
    compare with PyTorch's GroupNorm; raises ``RuntimeError`` if they fail (no C compiler for
    Triton's launcher, an unsupported GPU...) or disagree."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((2, 4, 3, 5), generator=generator).to(device)
    weight = torch.randn(4, generator=generator).to(device)
    bias = torch.randn(4, generator=generator).to(device)
    stats = group_stats(x, 2)
    out = normalize_with_stats(x, torch.zeros_like(stats), 2, weight, bias, 1e-5, more=stats)
    expected = F.group_norm(x, 2, weight, bias, 1e-5)
    if not torch.allclose(out, expected, atol=1e-4, rtol=1e-4):
        difference = float((out - expected).abs().max())
        raise RuntimeError(f"Triton GroupNorm kernels disagree with PyTorch by {difference:.3g}")
