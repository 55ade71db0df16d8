"""A transformer's patch embedding on a band (PixArt's, SD3's): the band's patches with the
*global* grid's positions.

diffusers' ``PatchEmbed`` adds a 2-D sin-cos positional embedding computed for the grid of
the tensor it is given. A band is a few rows of the whole grid: given alone, it would get the
embedding of a small image (every band starting at row 0). :class:`BandPatchEmbed` wraps the
original module (its convolution, its optional norm) and adds the rows of the whole image's
embedding that the band covers, computed once exactly as ``PatchEmbed`` computes it for the
whole latent (its stored table when the grid is the trained one, the centre crop of the
``pos_embed_max_size`` table when set, as SD3 has, else the sin-cos function for the grid,
with the module's ``base_size`` and ``interpolation_scale``).
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import PatchEmbed, get_2d_sincos_pos_embed
from torch import nn

from pcpp_mpi.geometry import Band


def global_pos_embed(
    patch: PatchEmbed, latent_height: int, latent_width: int, device: torch.device
) -> torch.Tensor | None:
    """The positional embedding ``patch`` adds for a whole latent of ``latent_height x
    latent_width`` rows (global): ``(1, (H/p) * (W/p), D)`` float32, tokens row-major, or
    ``None`` when it adds none."""
    if patch.pos_embed is None:
        return None
    p = patch.patch_size
    if patch.pos_embed_max_size:
        return patch.cropped_pos_embed(latent_height, latent_width).to(device)
    grid = (latent_height // p, latent_width // p)
    if grid == (patch.height, patch.width):
        return patch.pos_embed.to(device)
    embed = get_2d_sincos_pos_embed(
        embed_dim=patch.pos_embed.shape[-1],
        grid_size=grid,
        base_size=patch.base_size,
        interpolation_scale=patch.interpolation_scale,
        device=device,
        output_type="pt",
    )
    return embed.float().unsqueeze(0)


def band_pos_embed(
    patch: PatchEmbed, band: Band, latent_height: int, latent_width: int, device: torch.device
) -> torch.Tensor | None:
    """The rows of :func:`global_pos_embed` that ``band`` covers: ``(1, (rows/p) * (W/p), D)``
    (local), or ``None``. The band's rows must be whole patches."""
    p = patch.patch_size
    if band.start % p or band.stop % p:
        raise ValueError(f"band rows [{band.start}, {band.stop}) are not whole patches of {p}")
    embed = global_pos_embed(patch, latent_height, latent_width, device)
    if embed is None:
        return None
    per_row = latent_width // p
    return embed[:, band.start // p * per_row : band.stop // p * per_row].clone()


class BandPatchEmbed(nn.Module):
    """``patch`` (a ``PatchEmbed``) for one band: ``(B, C, rows, W)`` latent rows (local) ->
    ``(B, (rows/p) * (W/p), D)`` tokens with the global grid's positions of those rows.

    Holds the original module (``self.patch``) so its weights stay where they are; the
    positions are a non-persistent buffer made at construction on the module's device.
    """

    def __init__(self, patch: PatchEmbed, band: Band, latent_height: int, latent_width: int):
        super().__init__()
        if not patch.flatten:
            raise ValueError("BandPatchEmbed needs a PatchEmbed that flattens to tokens")
        self.patch = patch
        self.band = band
        device = next(patch.parameters()).device
        embed = band_pos_embed(patch, band, latent_height, latent_width, device)
        self.register_buffer("band_pos_embed", embed, persistent=False)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        tokens = self.patch.proj(latent).flatten(2).transpose(1, 2)  # (B, N_band, D)
        if self.patch.layer_norm:
            tokens = self.patch.norm(tokens)
        if self.band_pos_embed is None:
            return tokens
        return (tokens + self.band_pos_embed).to(tokens.dtype)
