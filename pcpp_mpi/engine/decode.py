"""From the final global latent to an RGB image (rank 0 only)."""

from __future__ import annotations

import numpy as np
import torch

from pcpp_mpi.models.bundle import ModelBundle


@torch.no_grad()
def latent_to_image(bundle: ModelBundle, latent: torch.Tensor) -> np.ndarray:
    """Decode a global latent ``(1, C, H, W)`` with the VAE into an ``(H*f, W*f, 3)`` uint8
    image (``f`` the VAE scale factor)."""
    vae = bundle.vae
    if vae.dtype == torch.float16 and vae.config.get("force_upcast", False):
        vae = vae.to(torch.float32)  # SDXL's VAE overflows in float16
    scaled = latent.to(vae.device, vae.dtype) / vae.config.scaling_factor
    decoded = vae.decode(scaled).sample[0].float()
    pixels = ((decoded / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.permute(1, 2, 0).cpu().numpy()
