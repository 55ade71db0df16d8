"""The built-in ``tiny-pixart`` model: a small diffusion transformer trained on the shapes scenes.

The denoiser is a diffusers ``PixArtTransformer2DModel`` (patch 2, 4 blocks of 4 heads x 32
channels, AdaLN-single timestep conditioning, no size conditions, 4 output channels: epsilon
only, no learned variance); the VAE and the prompt encoder (tokenizer + text encoder, ``(B, 16,
32)`` hidden states) are those of the built-in ``tiny`` model (:mod:`pcpp_mpi.models.tiny`),
copied into this model's own weights file so the file is self-contained. The noise schedule,
prediction type and sampler are the ``tiny`` model's (Stable Diffusion's scaled-linear betas,
epsilon), so the engine treats both models alike apart from the denoiser family.

Weights: ``pcpp_mpi/models/weights/tiny-pixart.safetensors`` (``transformer.*``, ``vae.*``,
``text_encoder.*`` in float16 with metadata), written by ``tools/train_tiny.py --denoiser
pixart``; loaded on the CPU as float32, then cast and moved, so every rank gets bitwise-identical
weights. See docs/TINY_MODEL.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, PixArtTransformer2DModel

from pcpp_mpi.models.bundle import ModelBundle, default_scheduler_config, place
from pcpp_mpi.models.configs import complete_config
from pcpp_mpi.models.tiny import (
    CROSS_ATTENTION_DIM,
    INIT_SEED,
    TinyPromptEncoder,
    check_metadata,
    load_parts,
    read_metadata,
    save_parts,
    tiny_text_config,
    tiny_vae_config,
    tiny_vae_scale_factor,
    weights_metadata,
)
from pcpp_mpi.models.tiny_text import TinyTextEncoder, WordTokenizer

WEIGHTS_PATH = Path(__file__).with_name("weights") / "tiny-pixart.safetensors"
WEIGHTS_FORMAT = "pcpp-mpi-tiny-pixart/1"
PARTS = ("transformer", "vae", "text_encoder")


def tiny_pixart_transformer_config() -> dict[str, Any]:
    """The transformer: width 128 (4 heads x 32), 4 blocks, patch 2, captions of the tiny text
    encoder's 32 channels, ``sample_size`` 16 latent rows (128 px, the largest training size:
    its positions are the stored table, other grids get the sin-cos table made for them, in
    relative coordinates spanning the same ``sample_size / patch_size`` = 8 units)."""
    return complete_config(
        PixArtTransformer2DModel,
        {
            "num_attention_heads": 4,
            "attention_head_dim": 32,
            "in_channels": 4,
            "out_channels": 4,
            "num_layers": 4,
            "cross_attention_dim": 128,
            "caption_channels": CROSS_ATTENTION_DIM,
            "sample_size": 16,
            "patch_size": 2,
            "interpolation_scale": 1,
            "norm_type": "ada_norm_single",
            "norm_elementwise_affine": False,
            "norm_eps": 1e-6,
            "attention_bias": True,
            "activation_fn": "gelu-approximate",
            "num_embeds_ada_norm": 1000,
            "use_additional_conditions": False,
        },
    )


def build_tiny_pixart_modules(
    scaling_factor: float | None = None, init_seed: int = INIT_SEED
) -> tuple[PixArtTransformer2DModel, AutoencoderKL, TinyTextEncoder]:
    """Untrained transformer, VAE and text encoder (float32, CPU) from ``init_seed``; the
    global RNG is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        transformer = PixArtTransformer2DModel(**tiny_pixart_transformer_config())
        vae = AutoencoderKL(**tiny_vae_config(scaling_factor))
        text_encoder = TinyTextEncoder(tiny_text_config())
    return transformer, vae, text_encoder


def _configs_json(scaling_factor: float) -> dict[str, str]:
    def dump(config: dict[str, Any]) -> str:
        return json.dumps(config, sort_keys=True, default=list)

    return {
        "transformer_config": dump(tiny_pixart_transformer_config()),
        "vae_config": dump(tiny_vae_config(scaling_factor)),
        "text_encoder_config": dump(dict(tiny_text_config().__dict__)),
    }


def save_tiny_pixart_weights(
    path: str | Path,
    transformer: PixArtTransformer2DModel,
    vae: AutoencoderKL,
    text_encoder: TinyTextEncoder,
    scaling_factor: float,
    extra_metadata: dict[str, str] | None = None,
) -> Path:
    """Write the three parts as one float16 safetensors file with the tiny-pixart metadata."""
    metadata = weights_metadata(
        WEIGHTS_FORMAT, scaling_factor, _configs_json(scaling_factor), extra_metadata
    )
    parts = dict(zip(PARTS, (transformer, vae, text_encoder), strict=True))
    return save_parts(path, parts, metadata)


def read_tiny_pixart_metadata(path: str | Path = WEIGHTS_PATH) -> dict[str, str]:
    """The metadata of a tiny-pixart weights file (ModelError if missing or foreign)."""
    return read_metadata(path, WEIGHTS_FORMAT)


def tiny_pixart_vae_config() -> dict[str, Any]:
    """The VAE's config with the scaling factor recorded in the committed weights (the tiny
    model's, copied at training time), without loading weights."""
    return tiny_vae_config(float(read_tiny_pixart_metadata()["vae_scaling_factor"]))


def load_tiny_pixart_modules(
    path: str | Path = WEIGHTS_PATH,
) -> tuple[PixArtTransformer2DModel, AutoencoderKL, TinyTextEncoder, dict[str, str]]:
    """The trained transformer, VAE and text encoder (float32, CPU, eval, no gradients) and
    the file's metadata; refuses a file trained for another architecture or vocabulary."""
    metadata = read_tiny_pixart_metadata(path)
    scaling_factor = float(metadata["vae_scaling_factor"])
    check_metadata(path, metadata, _configs_json(scaling_factor))
    modules = build_tiny_pixart_modules(scaling_factor)
    load_parts(path, dict(zip(PARTS, modules, strict=True)))
    transformer, vae, text_encoder = modules
    return transformer, vae, text_encoder, metadata


def tiny_pixart_bundle(
    transformer: PixArtTransformer2DModel, vae: AutoencoderKL, text_encoder: TinyTextEncoder
) -> ModelBundle:
    """The three parts as a :class:`ModelBundle` with the tiny model's noise schedule."""
    return ModelBundle(
        denoiser=transformer,
        vae=vae,
        encoder=TinyPromptEncoder(WordTokenizer(), text_encoder),
        scheduler_config=default_scheduler_config(),
        vae_scale_factor=tiny_vae_scale_factor(),
    )


def load_tiny_pixart(dtype: torch.dtype, device: torch.device) -> ModelBundle:
    """The trained tiny-pixart model in eval mode, without gradients, in ``dtype`` on
    ``device`` (the prompt encoder stays float32 on the CPU)."""
    transformer, vae, text_encoder, _ = load_tiny_pixart_modules()
    for module in (transformer, vae):
        place(module, torch.device(device), dtype)
    return tiny_pixart_bundle(transformer, vae, text_encoder)
