"""Several block copies in one Triton kernel launch (research code, not used by runs).

Measured slower than ``torch.cat`` plus two copies
(docs/benchmarks/results/14-block-copies-1xh200/), so the package's convolutions always
concatenate. Until the commit that moved this file here it was
``pcpp_mpi/parallel/copy_kernels.py``, reached through ``parallelize(block_copies=...)``.

A displaced step of a band assembles, for every convolution with a halo and every
self-attention layer, an input from its own rows and the rows its neighbours sent in the
previous step (a concatenation), and copies its edge rows into the send buffers of the next
exchange: two to four small copies per layer, each a kernel of its own in PyTorch (and in a
CUDA graph every kernel also leaves some idle GPU time). :func:`copy_blocks` does up to
:data:`MAX_COPIES` of them in one launch.

Each copy is a pair of 2-D views ``(outer, inner)`` with unit stride along ``inner`` (e.g. a
band ``(B, C, h, W)`` viewed as ``(B*C, h*W)``, or some of its rows as a column slice of that
view). This module imports Triton; under ``TRITON_INTERPRET=1`` the kernel runs on CPU tensors
(``tests/test_copy_kernels.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

MAX_COPIES = 5  # copies one launch can do
COPY_BLOCK = 2048  # elements of one row a program copies

Tensor = torch.Tensor


@triton.jit
def _copy_rows(src, dst, outer, inner, src_stride, dst_stride, row, offsets):
    """Elements ``offsets`` of row ``row`` of ``src`` into ``dst`` (nothing outside the copy)."""
    mask = offsets < tl.where(row < outer, inner, 0)
    line = row.to(tl.int64)
    values = tl.load(src + line * src_stride + offsets, mask=mask)
    tl.store(dst + line * dst_stride + offsets, values, mask=mask)


@triton.jit(do_not_specialize=["o0", "i0", "o1", "i1", "o2", "i2", "o3", "i3", "o4", "i4"])
def _copy_blocks_kernel(
    s0, d0, o0, i0, ss0, ds0,
    s1, d1, o1, i1, ss1, ds1,
    s2, d2, o2, i2, ss2, ds2,
    s3, d3, o3, i3, ss3, ds3,
    s4, d4, o4, i4, ss4, ds4,
    COPIES: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """Program ``(chunk, row)`` copies elements ``[chunk * BLOCK, (chunk + 1) * BLOCK)`` of row
    ``row`` of each of the first ``COPIES`` copies (``s``: source, ``d``: destination, ``o``
    rows, ``i`` elements per row, ``ss``/``ds`` row strides)."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    row = tl.program_id(1)
    _copy_rows(s0, d0, o0, i0, ss0, ds0, row, offsets)
    if COPIES > 1:
        _copy_rows(s1, d1, o1, i1, ss1, ds1, row, offsets)
    if COPIES > 2:
        _copy_rows(s2, d2, o2, i2, ss2, ds2, row, offsets)
    if COPIES > 3:
        _copy_rows(s3, d3, o3, i3, ss3, ds3, row, offsets)
    if COPIES > 4:
        _copy_rows(s4, d4, o4, i4, ss4, ds4, row, offsets)


def _check_pair(src: Tensor, dst: Tensor) -> None:
    if src.ndim != 2 or src.shape != dst.shape:
        raise ValueError(
            f"copy_blocks: expected 2-D views of equal shape, got {tuple(src.shape)} -> "
            f"{tuple(dst.shape)}"
        )
    if src.dtype != dst.dtype or src.device != dst.device:
        raise ValueError(f"copy_blocks: {src.dtype} on {src.device} -> {dst.dtype} on {dst.device}")
    for view in (src, dst):
        if view.shape[1] > 1 and view.stride(1) != 1:
            raise ValueError("copy_blocks: the rows of a view must be contiguous")


def copy_blocks(copies: Sequence[tuple[Tensor, Tensor]]) -> None:
    """``dst.copy_(src)`` for every ``(src, dst)`` pair of 2-D views ``(outer, inner)`` with
    contiguous rows, same dtype and device; one kernel per :data:`MAX_COPIES` pairs. Empty
    copies are skipped."""
    pending = [(src, dst) for src, dst in copies if src.numel()]
    for src, dst in pending:
        _check_pair(src, dst)
    for first in range(0, len(pending), MAX_COPIES):
        group = pending[first : first + MAX_COPIES]
        args: list = []
        for src, dst in group:
            args += [src, dst, src.shape[0], src.shape[1], src.stride(0), dst.stride(0)]
        args += args[:6] * (MAX_COPIES - len(group))  # unused slots (COPIES says so)
        rows = max(src.shape[0] for src, _ in group)
        chunks = triton.cdiv(max(src.shape[1] for src, _ in group), COPY_BLOCK)
        _copy_blocks_kernel[(chunks, rows)](*args, COPIES=len(group), BLOCK=COPY_BLOCK)


def self_check(device: torch.device) -> None:
    """Run :func:`copy_blocks` on small views on ``device`` and compare with PyTorch's copies;
    raises if Triton cannot compile or launch it there or if the results differ."""
    generator = torch.Generator().manual_seed(0)
    band = torch.randn(2, 3, 5, 4, generator=generator).to(device, torch.float16)
    rows = band.view(6, 20)
    out = torch.zeros(6, 28, dtype=torch.float16, device=device)
    sent = torch.zeros(6, 4, dtype=torch.float16, device=device)
    halo = torch.ones(6, 4, dtype=torch.float16, device=device)
    copy_blocks(
        [(rows, out[:, 4:24]), (halo, out[:, :4]), (halo, out[:, 24:]), (rows[:, :4], sent)]
    )
    expected = torch.cat([halo, rows, halo], dim=1)
    if not (torch.equal(out, expected) and torch.equal(sent, rows[:, :4])):
        raise RuntimeError("the Triton block copies differ from PyTorch's on a small band")
