"""Full-size SD 1.5 / SD 2.1 / SDXL UNets and VAEs with random weights (for speed measurements),
and the entry for the transformer architectures (:mod:`pcpp_mpi.models.pixart`, with SDXL's
VAE; :mod:`pcpp_mpi.models.sd3`, with SD3's).

The configurations are the published ones (``unet/config.json`` and ``vae/config.json`` of
runwayml/stable-diffusion-v1-5, stabilityai/stable-diffusion-2-1 and
stabilityai/stable-diffusion-xl-base-1.0), written out here so nothing is downloaded.
Modules are built on the ``meta`` device, materialised directly in the target dtype on the
target device and initialised there with PyTorch's default initialisers from ``seed``, so an
SDXL UNet never exists as a float32 copy on the host. Weights depend on ``seed`` and the
device type (CPU and CUDA generators differ), not on the rank.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.modeling_utils import ModelMixin

from pcpp_mpi.models.bundle import (
    HashPromptEncoder,
    ModelBundle,
    default_scheduler_config,
    place,
    scale_factor_of,
)
from pcpp_mpi.models.configs import complete_config, sd_vae_layout
from pcpp_mpi.models.errors import ModelError
from pcpp_mpi.models.pixart import PIXART_ARCHS, load_pixart_arch
from pcpp_mpi.models.sd3 import SD3_ARCHS, load_sd3_arch, sd3_vae_config
from pcpp_mpi.models.seeded import rng_devices

ARCHS: tuple[str, ...] = ("sd15", "sd21", "sdxl")  # UNet architectures
#: the VAE of each transformer architecture (one of ARCHS')
TRANSFORMER_VAE = {"pixart-sigma": "sdxl"}
TEXT_SEQ_LEN = 77
SDXL_POOLED_DIM = 1280


def _check_arch(arch: str) -> None:
    if arch not in (*ARCHS, *PIXART_ARCHS, *SD3_ARCHS):
        known = ", ".join((*ARCHS, *PIXART_ARCHS, *SD3_ARCHS))
        raise ModelError(f"unknown model arch {arch!r}; expected one of {known}")


def _check_unet_arch(arch: str) -> None:
    _check_arch(arch)
    if arch not in ARCHS:
        raise ModelError(f"model arch {arch!r} is a transformer: it has no UNet")


def measurement_model(arch: str, seed: int = 0) -> dict[str, Any]:
    """The ``model`` section of a job for speed measurements and GPU checks: the shipped tiny
    model for ``"tiny"``, else ``arch``'s full-size UNet and VAE with weights drawn from
    ``seed``."""
    if arch == "tiny":
        return {"builtin": "tiny"}
    _check_arch(arch)
    return {"arch": arch, "weights": "random", "seed": seed}


def _raw_unet_config(arch: str) -> dict[str, Any]:
    _check_unet_arch(arch)
    sd_blocks = {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 2,
        "block_out_channels": (320, 640, 1280, 1280),
        "down_block_types": (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": (
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "downsample_padding": 1,
        "act_fn": "silu",
    }
    if arch == "sd15":
        return {**sd_blocks, "cross_attention_dim": 768, "attention_head_dim": 8}
    if arch == "sd21":
        return {
            **sd_blocks,
            "sample_size": 96,
            "cross_attention_dim": 1024,
            "attention_head_dim": (5, 10, 20, 20),
            "use_linear_projection": True,
            "upcast_attention": True,
        }
    return {
        **sd_blocks,
        "sample_size": 128,
        "block_out_channels": (320, 640, 1280),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "transformer_layers_per_block": (1, 2, 10),
        "attention_head_dim": (5, 10, 20),
        "cross_attention_dim": 2048,
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,
    }


def arch_unet_config(arch: str) -> dict[str, Any]:
    """The full UNet config of ``arch`` (diffusers defaults filled in); builds nothing."""
    return complete_config(UNet2DConditionModel, _raw_unet_config(arch))


def arch_vae_config(arch: str) -> dict[str, Any]:
    """The SD VAE config (8 pixels per latent element); SDXL's differs in its scaling factor.
    A transformer architecture has the VAE it was trained with (PixArt-Sigma: SDXL's; SD3:
    its own, 16 latent channels)."""
    _check_arch(arch)
    if arch in SD3_ARCHS:
        return sd3_vae_config()
    arch = TRANSFORMER_VAE.get(arch, arch)
    raw = {
        **sd_vae_layout(),
        "sample_size": 1024 if arch == "sdxl" else 768 if arch == "sd21" else 512,
        "latent_channels": 4,
        "scaling_factor": 0.13025 if arch == "sdxl" else 0.18215,
    }
    return complete_config(AutoencoderKL, raw)


def arch_vae_scale_factor(arch: str) -> int:
    """Pixels per latent element of the SD VAE (8)."""
    return scale_factor_of(arch_vae_config(arch)["block_out_channels"])


def arch_prompt_encoder(arch: str, seed: int) -> HashPromptEncoder:
    """Random text conditioning of ``arch``'s UNet shapes: hidden (B, 77, 768 | 1024 | 2048);
    pooled (B, 1280) for SDXL only."""
    dim = arch_unet_config(arch)["cross_attention_dim"]
    pooled = SDXL_POOLED_DIM if arch == "sdxl" else None
    return HashPromptEncoder(
        namespace=f"pcpp-mpi/{arch}", seq_len=TEXT_SEQ_LEN, dim=dim, pooled_dim=pooled, seed=seed
    )


def build_random(
    cls: type[ModelMixin],
    config: dict[str, Any],
    seed: int,
    dtype: torch.dtype,
    device: torch.device,
) -> ModelMixin:
    """``cls(**config)`` with seeded random weights, made directly in ``dtype`` on ``device``.

    Each parameterised submodule is re-initialised with its own ``reset_parameters`` (PyTorch's
    default initialisation: uniform +-1/sqrt(fan_in) for linear and conv layers, ones/zeros for
    norms) under a forked RNG seeded with ``seed``; the caller's RNG state is untouched.
    """
    with torch.device("meta"):
        module = cls(**config)
    if any(True for _ in module.buffers()):
        raise ModelError(f"{cls.__name__} has buffers; it cannot be built on the meta device")
    place(module, torch.device("meta"), dtype)
    module = module.to_empty(device=device)
    with torch.random.fork_rng(devices=rng_devices(device)):
        torch.manual_seed(seed)
        for name, sub in module.named_modules():
            if not any(True for _ in sub.parameters(recurse=False)):
                continue
            reset = getattr(sub, "reset_parameters", None)
            if reset is None:
                raise ModelError(
                    f"{cls.__name__}: submodule {name!r} ({type(sub).__name__}) has parameters "
                    "but no reset_parameters(); cannot initialise it"
                )
            reset()
    return module.requires_grad_(False).eval()


def load_random_arch(arch: str, seed: int, dtype: torch.dtype, device: torch.device) -> ModelBundle:
    """The ``arch`` network (UNet or transformer) and VAE with random weights from ``seed``, in
    ``dtype`` on ``device``."""
    _check_arch(arch)
    if arch in PIXART_ARCHS:
        vae = build_random(AutoencoderKL, arch_vae_config(arch), seed + 1, dtype, device)
        return load_pixart_arch(arch, seed, dtype, device, vae, arch_vae_scale_factor(arch))
    if arch in SD3_ARCHS:
        vae = build_random(AutoencoderKL, arch_vae_config(arch), seed + 1, dtype, device)
        return load_sd3_arch(arch, seed, dtype, device, vae, arch_vae_scale_factor(arch))
    unet = build_random(UNet2DConditionModel, arch_unet_config(arch), seed, dtype, device)
    vae = build_random(AutoencoderKL, arch_vae_config(arch), seed + 1, dtype, device)
    return ModelBundle(
        denoiser=unet,
        vae=vae,
        encoder=arch_prompt_encoder(arch, seed),
        scheduler_config=default_scheduler_config(),
        vae_scale_factor=arch_vae_scale_factor(arch),
    )
