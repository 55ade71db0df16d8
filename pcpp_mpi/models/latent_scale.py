"""Between the denoiser's latent space and the VAE's: the VAE config's ``scaling_factor`` and,
where it has one (SD3's VAE), ``shift_factor``.

The denoiser works on ``(z - shift_factor) * scaling_factor`` of the VAE's latent ``z``; the
decoder reads ``latent / scaling_factor + shift_factor``. A config without ``shift_factor``
(or with ``null``) has no shift (SD 1.x/2.x, SDXL). Both maps are elementwise, so they apply
to one band (local) as to the whole latent (global).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def _factors(vae_config: Mapping[str, Any]) -> tuple[float, float]:
    """``(scaling_factor, shift_factor)`` of a VAE config; shift 0 where it has none."""
    scaling = vae_config.get("scaling_factor")
    if scaling is None or not float(scaling) > 0:
        raise ValueError(f"VAE config: scaling_factor must be a positive number, got {scaling!r}")
    shift = vae_config.get("shift_factor")
    return float(scaling), 0.0 if shift is None else float(shift)


def to_vae_latent(latent: torch.Tensor, vae_config: Mapping[str, Any]) -> torch.Tensor:
    """The decoder's input for a denoised latent ``(B, C, rows, W)`` (a band or the whole
    latent): ``latent / scaling_factor + shift_factor``, same shape and dtype."""
    scaling, shift = _factors(vae_config)
    scaled = latent / scaling
    return scaled + shift if shift else scaled


def from_vae_latent(latent: torch.Tensor, vae_config: Mapping[str, Any]) -> torch.Tensor:
    """The denoiser's latent for an encoded VAE latent ``(B, C, rows, W)``:
    ``(latent - shift_factor) * scaling_factor``, same shape and dtype (the inverse of
    :func:`to_vae_latent`)."""
    scaling, shift = _factors(vae_config)
    return (latent - shift) * scaling if shift else latent * scaling
