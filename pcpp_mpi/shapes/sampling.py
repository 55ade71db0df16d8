"""A plain one-device sampler for a :class:`~pcpp_mpi.models.bundle.ModelBundle`.

It follows the engine's ``single`` mode step for step (the same initial noise from a CPU
generator seeded per image, the same scheduler construction, guidance order ``[negative,
prompt]`` and decoding), but batches several prompts and needs no MPI. The training script uses
it for its built-in evaluation and the tests use it for quick checks; the accuracy reported in
docs/TINY_MODEL.md comes from ``pcpp-mpi run`` itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers import PixArtTransformer2DModel

from pcpp_mpi.engine.schedulers import make_scheduler
from pcpp_mpi.models.bundle import ModelBundle
from pcpp_mpi.models.latent_scale import to_vae_latent


def initial_noise(seed: int, channels: int, height: int, width: int) -> torch.Tensor:
    """The engine's initial noise: ``(1, C, h, w)`` float32 from a CPU generator."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn((1, channels, height, width), generator=generator, dtype=torch.float32)


def noise_prediction(
    denoiser: torch.nn.Module, latent: torch.Tensor, timestep: torch.Tensor, hidden: torch.Tensor
) -> torch.Tensor:
    """The noise prediction ``(B, 4, h, w)`` of a tiny-model denoiser (UNet or PixArt
    transformer) for latents ``(B, 4, h, w)``, a timestep (scalar or ``(B,)``) and prompt
    states ``(B, 16, 32)``."""
    if isinstance(denoiser, PixArtTransformer2DModel):
        return denoiser(
            latent,
            encoder_hidden_states=hidden,
            timestep=timestep.expand(latent.shape[0]),
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        ).sample
    return denoiser(latent, timestep, encoder_hidden_states=hidden).sample


@torch.no_grad()
def generate(
    bundle: ModelBundle,
    prompts: Sequence[str],
    seeds: Sequence[int],
    height: int,
    width: int,
    *,
    steps: int = 20,
    guidance_scale: float = 5.0,
    negative_prompt: str = "",
    scheduler: str = "ddim",
    batch_size: int = 16,
) -> np.ndarray:
    """Images ``(n, height, width, 3)`` uint8, one per (prompt, seed)."""
    if len(prompts) != len(seeds):
        raise ValueError("one seed per prompt")
    factor = bundle.vae_scale_factor
    if height % factor or width % factor:
        raise ValueError(f"height and width must be multiples of {factor}")
    unet, vae = bundle.denoiser, bundle.vae
    device, dtype = unet.device, unet.dtype
    images = []
    for begin in range(0, len(prompts), batch_size):
        chunk = list(prompts[begin : begin + batch_size])
        chunk_seeds = seeds[begin : begin + batch_size]
        n = len(chunk)
        sched = make_scheduler(scheduler, bundle.scheduler_config)
        sched.set_timesteps(steps, device=device)
        noise = torch.cat(
            [
                initial_noise(int(s), unet.config.in_channels, height // factor, width // factor)
                for s in chunk_seeds
            ]
        )
        latent = noise.to(device) * sched.init_noise_sigma
        hidden = bundle.encoder.encode([negative_prompt] * n + chunk).hidden.to(device, dtype)
        for timestep in sched.timesteps:
            model_in = sched.scale_model_input(torch.cat([latent, latent]), timestep).to(dtype)
            prediction = noise_prediction(unet, model_in, timestep, hidden).float()
            uncond, cond = prediction.chunk(2)
            latent = sched.step(uncond + guidance_scale * (cond - uncond), timestep, latent)
            latent = latent.prev_sample
        decoded = vae.decode(to_vae_latent(latent.to(vae.dtype), vae.config)).sample.float()
        pixels = ((decoded / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        images.append(pixels.permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(images)


def image_grid(images: np.ndarray, columns: int) -> np.ndarray:
    """Tile ``(n, H, W, 3)`` images into one ``(rows*H, columns*W, 3)`` image (black fill)."""
    n, height, width, _ = images.shape
    rows = -(-n // columns)
    grid = np.zeros((rows * height, columns * width, 3), dtype=images.dtype)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * height : (r + 1) * height, c * width : (c + 1) * width] = image
    return grid
