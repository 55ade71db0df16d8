"""One band of the latent through a band-parallel VAE decoder."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from diffusers import AutoencoderKL

from pcpp_mpi.families.vae_decoder.apply import DecoderComm, decode_clock, parallelize_decoder
from pcpp_mpi.families.vae_decoder.inventory import decode_latent
from pcpp_mpi.geometry import Band
from pcpp_mpi.plan.decode import DecoderInventory

if TYPE_CHECKING:
    from pcpp_mpi.comm.wire import WireSpec


@torch.no_grad()
def decode_band(
    vae: AutoencoderKL,
    inventory: DecoderInventory,
    group: DecoderComm,
    bands: Sequence[Band],
    latent: torch.Tensor,
    *,
    step: int,
    wire: WireSpec,
) -> torch.Tensor:
    """Decode this rank's band ``latent`` ``(1, C, rows, W)`` (local: the latent rows of
    ``bands[group.rank]``, already unscaled and shifted by
    :func:`~pcpp_mpi.models.latent_scale.to_vae_latent`, in the VAE's dtype) into its pixels
    ``(1, 3, rows*f, W*f)`` (local), equal to those rows of the whole image's decode. Every
    rank of ``group`` calls it together.

    The parallel layers and their buffers exist only during the call (they would otherwise
    hold memory through the denoising); the exchanges are counted and traced in ``step``.
    """
    band = bands[group.rank]
    if latent.shape[2] != band.rows:
        raise ValueError(f"decode band of {band.rows} latent rows, got {latent.shape[2]}")
    group.restart_tags()
    handle = parallelize_decoder(vae, inventory, group, bands, decode_clock(step), wire=wire)
    try:
        return decode_latent(vae, latent)
    finally:
        handle.remove()
