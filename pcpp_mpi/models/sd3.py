"""Stable Diffusion 3 transformers (diffusers ``SD3Transformer2DModel``, MMDiT): the full-size
SD3-medium configuration with random weights, a tiny configuration for tests, SD3's VAE and
its flow-matching schedule.

``arch: sd3-medium`` is SD3-medium at 1024 px (24 joint blocks of 24 heads x 64 channels,
patch 2, 16 latent channels, positions cropped from a 192 x 192 grid) with SD3's VAE (16
latent channels, scaling 1.5305, shift 0.0609, no quant convolutions), the flow-matching
Euler schedule (shift 3) and a stand-in text side
(:class:`~pcpp_mpi.models.bundle.HashPromptEncoder` of SD3's shapes: 333 tokens of 4096
channels, the CLIP-L + CLIP-G tokens padded to T5's width followed by 256 T5 tokens, and a
pooled embedding of 2048). The transformer is built directly on the target device from a
forked, seeded RNG, then cast: its weights depend on ``seed`` and the device type, not on the
rank.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, SD3Transformer2DModel

from pcpp_mpi.models.bundle import HashPromptEncoder, ModelBundle
from pcpp_mpi.models.configs import complete_config, sd_vae_layout
from pcpp_mpi.models.errors import ModelError
from pcpp_mpi.models.seeded import build_seeded

SD3_ARCHS: tuple[str, ...] = ("sd3-medium",)
SD3_CLASS = "SD3Transformer2DModel"
#: CLIP tokens (77) + T5 tokens (256, the pipeline's default max_sequence_length)
CLIP_TOKENS = 77
T5_TOKENS = 256
T5_XXL_DIM = 4096
#: CLIP-L's (768) and CLIP-G's (1280) projected embeddings, concatenated
POOLED_DIM = 2048


def sd3_medium_config() -> dict[str, Any]:
    """SD3-medium's transformer config (diffusers defaults filled in)."""
    return complete_config(
        SD3Transformer2DModel,
        {
            "sample_size": 128,
            "patch_size": 2,
            "in_channels": 16,
            "out_channels": 16,
            "num_layers": 24,
            "attention_head_dim": 64,
            "num_attention_heads": 24,
            "joint_attention_dim": T5_XXL_DIM,
            "caption_projection_dim": 1536,
            "pooled_projection_dim": POOLED_DIM,
            "pos_embed_max_size": 192,
        },
    )


def tiny_sd3_config(
    joint_attention_dim: int = 32, pooled_projection_dim: int = 24
) -> dict[str, Any]:
    """An SD3 transformer small enough for CPU tests, with SD3.5's features: 2 blocks of 3
    heads x 8 channels (the last ``context_pre_only``), the first a dual-attention block,
    RMS qk norms, patch 2, 16 latent channels, positions cropped from a 24 x 24 grid."""
    return complete_config(
        SD3Transformer2DModel,
        {
            "sample_size": 32,
            "patch_size": 2,
            "in_channels": 16,
            "out_channels": 16,
            "num_layers": 2,
            "attention_head_dim": 8,
            "num_attention_heads": 3,
            "joint_attention_dim": joint_attention_dim,
            "caption_projection_dim": 24,
            "pooled_projection_dim": pooled_projection_dim,
            "pos_embed_max_size": 24,
            "dual_attention_layers": (0,),
            "qk_norm": "rms_norm",
        },
    )


def sd3_vae_config() -> dict[str, Any]:
    """SD3's VAE (SD's four levels, 8 pixels per latent element, 16 latent channels, a
    scaling and a shift factor, no quant convolutions)."""
    return complete_config(
        AutoencoderKL,
        {
            **sd_vae_layout(),
            "sample_size": 1024,
            "latent_channels": 16,
            "scaling_factor": 1.5305,
            "shift_factor": 0.0609,
            "use_quant_conv": False,
            "use_post_quant_conv": False,
        },
    )


def tiny_sd3_vae_config() -> dict[str, Any]:
    """:func:`sd3_vae_config` with narrow channels, for tests."""
    return {
        **sd3_vae_config(),
        "sample_size": 64,
        "block_out_channels": (8, 16, 16, 16),
        "layers_per_block": 1,
        "norm_num_groups": 8,
    }


def sd3_scheduler_config() -> dict[str, Any]:
    """SD3's flow-matching schedule (``scheduler/scheduler_config.json`` of SD3-medium)."""
    return {
        "_class_name": "FlowMatchEulerDiscreteScheduler",
        "num_train_timesteps": 1000,
        "shift": 3.0,
    }


def check_sd3_arch(arch: str) -> None:
    if arch not in SD3_ARCHS:
        raise ModelError(f"unknown SD3 arch {arch!r}; expected one of {', '.join(SD3_ARCHS)}")


def load_sd3_arch(
    arch: str,
    seed: int,
    dtype: torch.dtype,
    device: torch.device,
    vae: AutoencoderKL,
    vae_scale_factor: int,
) -> ModelBundle:
    """``arch``'s transformer with random weights from ``seed``, in ``dtype`` on ``device``,
    with the given (SD3) VAE and a hash prompt encoder of SD3's text shapes."""
    check_sd3_arch(arch)
    transformer = build_seeded(SD3Transformer2DModel, sd3_medium_config(), seed, dtype, device)
    return ModelBundle(
        denoiser=transformer,
        vae=vae,
        encoder=HashPromptEncoder(
            namespace=f"pcpp-mpi/{arch}",
            seq_len=CLIP_TOKENS + T5_TOKENS,
            dim=T5_XXL_DIM,
            pooled_dim=POOLED_DIM,
            seed=seed,
        ),
        scheduler_config=sd3_scheduler_config(),
        vae_scale_factor=vae_scale_factor,
    )
