"""Draw :class:`~pcpp_mpi.shapes.scenes.SceneBatch` scenes at any resolution, in torch.

Each shape is a signed distance field in pixels; its coverage ``clamp(0.5 - d, 0, 1)`` gives
one pixel of anti-aliasing at every size. Rendering is plain tensor arithmetic, so a whole
training batch is drawn on the GPU in a handful of kernels.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pcpp_mpi.models.tiny_vocab import COLOUR_NAMES, COLOURS, KINDS
from pcpp_mpi.shapes.scenes import SceneBatch

_PALETTE = torch.tensor([COLOURS[name] for name in COLOUR_NAMES], dtype=torch.float32)


def _signed_distances(
    dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Signed distance (pixels, negative inside) of each kind centred at 0 with half-size ``r``."""
    ax, ay = dx.abs(), dy.abs()
    qx, qy = ax - r, ay - r
    outside = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2)
    square = outside + torch.maximum(qx, qy).clamp(max=0)
    # Isosceles triangle pointing up: apex (0, -r), base corners (+-r, r); y grows downwards.
    root5 = math.sqrt(5.0)
    triangle = torch.maximum(
        dy - r, torch.maximum((-2 * dx - (dy + r)) / root5, (2 * dx - (dy + r)) / root5)
    )
    return {
        "circle": torch.sqrt(dx * dx + dy * dy) - r,
        "square": square,
        "triangle": triangle,
        "diamond": (ax + ay - r) / math.sqrt(2.0),
    }


def render_scenes(
    scenes: SceneBatch,
    height: int,
    width: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Images ``(n, 3, height, width)`` float32 in ``[-1, 1]`` on ``device``."""
    device = torch.device(device)

    def column(values: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values), dtype=dtype, device=device).view(-1, 1, 1)

    xs = torch.arange(width, device=device, dtype=torch.float32).view(1, 1, -1) + 0.5
    ys = torch.arange(height, device=device, dtype=torch.float32).view(1, -1, 1) + 0.5
    dx = xs - column(scenes.cx) * width
    dy = ys - column(scenes.cy) * height
    r = column(scenes.size) * (min(height, width) / 2)
    distances = _signed_distances(dx, dy, r)
    kind = column(scenes.kind, torch.int64)
    distance = torch.zeros_like(dx.expand(len(scenes), height, width)).clone()
    for index, name in enumerate(KINDS):
        distance = torch.where(kind == index, distances[name], distance)
    coverage = (0.5 - distance).clamp(0, 1).unsqueeze(1)  # (n, 1, H, W)

    palette = _PALETTE.to(device)
    top = palette[torch.as_tensor(scenes.bg_top, device=device)].view(-1, 3, 1, 1)
    bottom = palette[torch.as_tensor(scenes.bg_bottom, device=device)].view(-1, 3, 1, 1)
    fraction = (ys / height).view(1, 1, height, 1)
    background = top + (bottom - top) * fraction
    colour = palette[torch.as_tensor(scenes.colour, device=device)].view(-1, 3, 1, 1)
    image = background * (1 - coverage) + colour * coverage
    return image / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``(n, 3, H, W)`` in ``[-1, 1]`` -> ``(n, H, W, 3)`` uint8 (the engine's rounding)."""
    pixels = ((images.detach().float().cpu() / 2 + 0.5).clamp(0, 1) * 255).round()
    return pixels.to(torch.uint8).permute(0, 2, 3, 1).numpy()
