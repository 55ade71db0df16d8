"""The research kernel ``tools/research/copy_kernels.py`` (several block copies in one Triton
launch; not used by runs), run by Triton's interpreter on CPU tensors."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest
import torch

Tensor = torch.Tensor


@pytest.fixture(scope="module")
def kernels(triton_module: Callable[[str], ModuleType]) -> ModuleType:
    return triton_module("tools.research.copy_kernels")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_halo_assembly_and_send_rows(kernels: ModuleType, dtype: torch.dtype) -> None:
    """A band (B, C, h, W) between one received row above and two below, and its edge rows
    into two send buffers: one launch gives what a concatenation and two copies give."""
    torch.manual_seed(1)
    band = torch.randn(2, 3, 5, 7).to(dtype)
    up, down = torch.randn(2, 3, 1, 7).to(dtype), torch.randn(2, 3, 2, 7).to(dtype)
    extended = torch.full((2, 3, 8, 7), float("nan"), dtype=dtype)
    to_up, to_down = torch.zeros(2, 3, 2, 7, dtype=dtype), torch.zeros(2, 3, 1, 7, dtype=dtype)
    rows, target = band.view(6, -1), extended.view(6, -1)
    kernels.copy_blocks(
        [
            (rows, target[:, 7:42]),
            (up.view(6, -1), target[:, :7]),
            (down.view(6, -1), target[:, 42:]),
            (rows[:, :14], to_up.view(6, -1)),
            (rows[:, 28:], to_down.view(6, -1)),
        ]
    )
    assert torch.equal(extended, torch.cat([up, band, down], dim=2))
    assert torch.equal(to_up, band[:, :, :2]) and torch.equal(to_down, band[:, :, 4:])


def test_context_assembly_with_strided_sources(kernels: ModuleType) -> None:
    """K/V context ``(B, N_ctx, 2C)``: rows taken from the end of another band's block (a
    strided view), the band's own block, and rows of the band into a send buffer; more pairs
    than one launch takes, and an empty one, which is skipped."""
    torch.manual_seed(2)
    own = torch.randn(2, 12, 6)
    block = torch.randn(2, 9, 6)
    above = block[:, 5:]  # (2, 4, 6), rows strided by 9 * 6
    context = torch.empty(2, 16, 6)
    flat = context.view(2, -1)
    sends = [torch.empty(2, 3 * 6) for _ in range(5)]
    pairs = [(above.flatten(1), flat[:, :24]), (own.view(2, -1), flat[:, 24:])]
    pairs += [(own.view(2, -1)[:, 6 * i : 6 * (i + 3)], send) for i, send in enumerate(sends)]
    pairs.append((own.view(2, -1)[:, :0], torch.empty(2, 0)))
    assert len(pairs) > kernels.MAX_COPIES
    kernels.copy_blocks(pairs)
    assert torch.equal(context, torch.cat([above, own], dim=1))
    for i, send in enumerate(sends):
        assert torch.equal(send.view(2, 3, 6), own[:, i : i + 3])


def test_copy_blocks_rejects_what_it_cannot_copy(kernels: ModuleType) -> None:
    a = torch.zeros(4, 6)
    with pytest.raises(ValueError, match="equal shape"):
        kernels.copy_blocks([(a, torch.zeros(4, 5))])
    with pytest.raises(ValueError, match="2-D"):
        kernels.copy_blocks([(torch.zeros(2, 2, 6), torch.zeros(2, 2, 6))])
    with pytest.raises(ValueError, match="float16"):
        kernels.copy_blocks([(a, torch.zeros(4, 6, dtype=torch.float16))])
    with pytest.raises(ValueError, match="contiguous"):
        kernels.copy_blocks([(torch.zeros(6, 4).t(), a.clone())])
    assert torch.equal(a, torch.zeros(4, 6))


def test_copy_kernels_self_check_on_the_interpreter(kernels: ModuleType) -> None:
    kernels.self_check(torch.device("cpu"))
