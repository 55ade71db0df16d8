"""The UNet's conditioning beyond the text: SDXL's micro-conditioning (``added_cond_kwargs``)."""

from __future__ import annotations

import torch
from torch import nn

from pcpp_mpi.models import ModelError


def added_cond_kwargs(
    unet: nn.Module, pooled: torch.Tensor | None, height: int, width: int
) -> dict[str, torch.Tensor] | None:
    """SDXL micro-conditioning of ``unet`` for a batch of B images of ``height`` x ``width``
    pixels (global: the whole image's size).

    Returns ``{'text_embeds': (B, D), 'time_ids': (B, 6)}`` with time ids
    ``[height, width, 0, 0, height, width]`` (original size, crop corner, target size) in
    the UNet's dtype and on its device, or ``None`` for a UNet without
    ``addition_embed_type``.
    """
    kind = unet.config.get("addition_embed_type")
    if kind is None:
        return None
    if kind != "text_time":
        raise ModelError(f"unsupported UNet addition_embed_type {kind!r} (only 'text_time')")
    if pooled is None or pooled.ndim != 2:
        raise ModelError(
            "this UNet (addition_embed_type 'text_time') needs pooled text embeddings of "
            f"shape (B, D); got {None if pooled is None else tuple(pooled.shape)}"
        )
    parameter = next(unet.parameters())
    dtype, device = parameter.dtype, parameter.device
    time_ids = torch.tensor([height, width, 0, 0, height, width], dtype=dtype, device=device)
    return {
        "text_embeds": pooled.to(device=device, dtype=dtype),
        "time_ids": time_ids.expand(pooled.shape[0], 6).clone(),
    }
