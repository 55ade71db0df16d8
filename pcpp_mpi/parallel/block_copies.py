"""Several copies between 2-D row views done by one call (for layers that assemble their input
from their own rows and rows received from other bands, and fill send buffers)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import prod

import torch

CopyList = list[tuple[torch.Tensor, torch.Tensor]]
# ``dst.copy_(src)`` for each ``(src, dst)`` pair of 2-D views with contiguous rows
BlockCopies = Callable[[Sequence[tuple[torch.Tensor, torch.Tensor]]], None]


def copy_each(copies: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """The PyTorch form of :data:`BlockCopies`: one copy kernel per pair."""
    for src, dst in copies:
        dst.copy_(src)


def as_rows(tensor: torch.Tensor, outer_dims: int) -> torch.Tensor:
    """``tensor`` viewed as ``(prod(shape[:outer_dims]), prod(shape[outer_dims:]))``; a view,
    never a copy (raises if the dimensions cannot be merged so)."""
    return tensor.view(prod(tensor.shape[:outer_dims]), -1)
