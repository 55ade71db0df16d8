"""Networks with seeded random weights, built on their device under a forked RNG.

Weights depend on the seed and the device type (CPU and CUDA generators differ), never on the
rank, and the caller's RNG state is left as it was.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
from torch import nn

from pcpp_mpi.models.bundle import place

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def rng_devices(device: torch.device) -> list[int]:
    """The CUDA devices whose RNG state :func:`torch.random.fork_rng` must save and restore
    for work on ``device`` (none on the CPU)."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def build_seeded(
    cls: type[ModuleT],
    config: dict[str, Any],
    seed: int,
    dtype: torch.dtype,
    device: torch.device,
) -> ModuleT:
    """``cls(**config)`` with its constructor's own initialisation drawn from ``seed`` on
    ``device`` (built there: buffers such as positional tables and parameters without
    ``reset_parameters`` are made by the constructor), cast to ``dtype``, in eval mode without
    gradients."""
    with torch.random.fork_rng(devices=rng_devices(device)), torch.device(device):
        torch.manual_seed(seed)
        model = cls(**config)
    place(model, device, dtype)
    return model.requires_grad_(False).eval()
