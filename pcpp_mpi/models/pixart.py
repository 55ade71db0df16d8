"""PixArt diffusion transformers (diffusers ``PixArtTransformer2DModel``): the full-size
PixArt-Sigma configuration with random weights, a tiny configuration for tests, and the
PixArt noise schedule.

``arch: pixart-sigma`` is PixArt-Sigma-XL-2 at 1024 px (28 blocks of 16 heads x 72 channels,
patch 2, 4 latent channels in, 8 out: noise and learned variance) with the SDXL VAE and a
stand-in T5 text side (:class:`~pcpp_mpi.models.bundle.HashPromptEncoder`, 300 tokens of
4096 channels). The transformer is built directly on the target device from a forked,
seeded RNG, then cast: its weights depend on ``seed`` and the device type, not on the rank.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, PixArtTransformer2DModel

from pcpp_mpi.models.bundle import HashPromptEncoder, ModelBundle
from pcpp_mpi.models.configs import complete_config
from pcpp_mpi.models.errors import ModelError
from pcpp_mpi.models.seeded import build_seeded

PIXART_ARCHS: tuple[str, ...] = ("pixart-sigma",)
#: prompt tokens PixArt's pipelines read (T5): 120 for PixArt-alpha, 300 for PixArt-Sigma
ALPHA_TEXT_TOKENS = 120
SIGMA_TEXT_TOKENS = 300
T5_XXL_DIM = 4096


def pixart_sigma_config() -> dict[str, Any]:
    """PixArt-Sigma-XL-2-1024's transformer config (diffusers defaults filled in)."""
    return complete_config(
        PixArtTransformer2DModel,
        {
            "num_attention_heads": 16,
            "attention_head_dim": 72,
            "in_channels": 4,
            "out_channels": 8,
            "num_layers": 28,
            "cross_attention_dim": 1152,
            "caption_channels": T5_XXL_DIM,
            "sample_size": 128,
            "patch_size": 2,
            "interpolation_scale": 2,
            "norm_type": "ada_norm_single",
            "norm_elementwise_affine": False,
            "norm_eps": 1e-6,
            "attention_bias": True,
            "activation_fn": "gelu-approximate",
            "num_embeds_ada_norm": 1000,
            "use_additional_conditions": False,
        },
    )


def tiny_pixart_config(
    caption_channels: int = 32, use_additional_conditions: bool = False
) -> dict[str, Any]:
    """A PixArt transformer small enough for CPU tests: 2 blocks of 3 heads x 8 channels
    (width 24, divisible by 3 as PixArt-alpha's size conditioning needs), patch 2, 4 latent
    channels in and 8 out (learned sigma), float32. ``sample_size`` 16 and
    ``interpolation_scale`` 2, so the positional embedding of a test latent is computed for
    its own grid (not the stored one) with a non-trivial base size."""
    return complete_config(
        PixArtTransformer2DModel,
        {
            "num_attention_heads": 3,
            "attention_head_dim": 8,
            "in_channels": 4,
            "out_channels": 8,
            "num_layers": 2,
            "cross_attention_dim": 24,
            "caption_channels": caption_channels,
            "sample_size": 16,
            "patch_size": 2,
            "interpolation_scale": 2,
            "norm_type": "ada_norm_single",
            "num_embeds_ada_norm": 1000,
            "use_additional_conditions": use_additional_conditions,
        },
    )


def pixart_scheduler_config() -> dict[str, Any]:
    """PixArt's training noise schedule (linear betas 1e-4 to 0.02 over 1000 steps)."""
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "prediction_type": "epsilon",
        "steps_offset": 0,
        "set_alpha_to_one": False,
        "clip_sample": False,
        "timestep_spacing": "linspace",
    }


def patch_size_of(config: dict[str, Any]) -> int:
    """The transformer's patch size; a power of two (band boundaries fall on whole patches
    at every power-of-two level the band geometry knows), else :class:`ModelError`."""
    patch = int(config["patch_size"])
    if patch < 1 or patch & (patch - 1):
        raise ModelError(f"PixArt patch_size {patch} is not a power of two; it cannot be banded")
    return patch


def check_pixart_arch(arch: str) -> None:
    if arch not in PIXART_ARCHS:
        raise ModelError(f"unknown PixArt arch {arch!r}; expected one of {', '.join(PIXART_ARCHS)}")


def build_seeded_transformer(
    config: dict[str, Any], seed: int, dtype: torch.dtype, device: torch.device
) -> PixArtTransformer2DModel:
    """``PixArtTransformer2DModel(**config)`` with seeded random weights
    (:func:`~pcpp_mpi.models.seeded.build_seeded`: built on ``device``, its positional-embedding
    buffer and the AdaLN scale-shift tables made by the constructor)."""
    return build_seeded(PixArtTransformer2DModel, config, seed, dtype, device)


def load_pixart_arch(
    arch: str,
    seed: int,
    dtype: torch.dtype,
    device: torch.device,
    vae: AutoencoderKL,
    vae_scale_factor: int,
) -> ModelBundle:
    """``arch``'s transformer with random weights from ``seed``, in ``dtype`` on ``device``,
    with the given (SDXL) VAE and a hash prompt encoder of T5-XXL's shapes (300 x 4096)."""
    check_pixart_arch(arch)
    transformer = build_seeded_transformer(pixart_sigma_config(), seed, dtype, device)
    return ModelBundle(
        denoiser=transformer,
        vae=vae,
        encoder=HashPromptEncoder(
            namespace=f"pcpp-mpi/{arch}", seq_len=SIGMA_TEXT_TOKENS, dim=T5_XXL_DIM, seed=seed
        ),
        scheduler_config=pixart_scheduler_config(),
        vae_scale_factor=vae_scale_factor,
    )
