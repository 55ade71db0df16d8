"""The built-in ``tiny`` model: a small random-weight UNet and VAE for tests and CPU runs.

A placeholder for a trained tiny model; everything that defines it lives in this module.
Weights come from a fixed seed, so every rank (and every process) builds bitwise-identical
weights; they are made in float32 on the CPU and only then moved to the target dtype/device.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from pcpp_mpi.models.bundle import (
    HashPromptEncoder,
    ModelBundle,
    default_scheduler_config,
    place,
    scale_factor_of,
)
from pcpp_mpi.models.configs import complete_config

WEIGHT_SEED = 20240611
SEQ_LEN = 16
CROSS_ATTENTION_DIM = 32


def tiny_unet_config() -> dict[str, Any]:
    """UNet: 3 levels (32, 64, 64), cross-attention in levels 0-1 and the mid block."""
    return complete_config(
        UNet2DConditionModel,
        {
            "sample_size": 32,
            "in_channels": 4,
            "out_channels": 4,
            "layers_per_block": 1,
            "block_out_channels": (32, 64, 64),
            "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            "mid_block_type": "UNetMidBlock2DCrossAttn",
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            "norm_num_groups": 8,
            "cross_attention_dim": CROSS_ATTENTION_DIM,
            "attention_head_dim": 8,
            "use_linear_projection": True,
        },
    )


def tiny_vae_config() -> dict[str, Any]:
    """VAE: 4 levels (16, 32, 32, 32), so 8 pixels per latent element; 4 latent channels."""
    return complete_config(
        AutoencoderKL,
        {
            "sample_size": 256,
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ("DownEncoderBlock2D",) * 4,
            "up_block_types": ("UpDecoderBlock2D",) * 4,
            "block_out_channels": (16, 32, 32, 32),
            "layers_per_block": 1,
            "latent_channels": 4,
            "norm_num_groups": 8,
            "scaling_factor": 0.18215,
        },
    )


def tiny_vae_scale_factor() -> int:
    """Pixels per latent element of the tiny VAE (8)."""
    return scale_factor_of(tiny_vae_config()["block_out_channels"])


def tiny_prompt_encoder() -> HashPromptEncoder:
    """Prompt -> hidden (B, 16, 32); no pooled embedding."""
    return HashPromptEncoder(namespace="pcpp-mpi/tiny", seq_len=SEQ_LEN, dim=CROSS_ATTENTION_DIM)


def build_tiny_modules() -> tuple[UNet2DConditionModel, AutoencoderKL]:
    """The tiny UNet and VAE in float32 on the CPU, from the fixed seed (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(WEIGHT_SEED)
        unet = UNet2DConditionModel(**tiny_unet_config())
        vae = AutoencoderKL(**tiny_vae_config())
    return unet, vae


def load_tiny(dtype: torch.dtype, device: torch.device) -> ModelBundle:
    """The tiny model in eval mode, without gradients, in ``dtype`` on ``device``."""
    unet, vae = build_tiny_modules()
    for module in (unet, vae):
        module.requires_grad_(False).eval()
        place(module, device, dtype)
    return ModelBundle(
        unet=unet,
        vae=vae,
        encoder=tiny_prompt_encoder(),
        scheduler_config=default_scheduler_config(),
        vae_scale_factor=tiny_vae_scale_factor(),
    )
