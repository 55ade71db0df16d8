"""``runtime.nvtx``: NVTX ranges around phases, steps and exchange waits on a GPU.

Nsight Systems shows them on each rank's timeline (docs/GPU_PATH.md gives the command). The
ranges are host-side markers (no device synchronisation); they are opened and closed outside
CUDA graph capture only (phases and steps around the UNet calls, exchange waits between graph
replays). Off, or on the CPU, every range is a no-op.
"""

from __future__ import annotations

import torch

from pcpp_mpi.trace.ranges import Ranges


def nvtx_ranges(enabled: bool, device: torch.device) -> Ranges:
    """NVTX's ``range_push``/``range_pop`` when ``enabled`` on a CUDA ``device``; otherwise
    ranges that do nothing."""
    if not enabled or device.type != "cuda":
        return Ranges()
    return Ranges(torch.cuda.nvtx.range_push, torch.cuda.nvtx.range_pop)
