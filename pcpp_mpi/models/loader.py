"""Entry points: model configs without weights, and :func:`load_model` for every model source."""

from __future__ import annotations

from typing import Any, Literal

import torch

from pcpp_mpi.config.schema import ModelConfig
from pcpp_mpi.models.bundle import ModelBundle, default_scheduler_config
from pcpp_mpi.models.errors import ModelError
from pcpp_mpi.models.folder import (
    folder_network,
    folder_transformer_config,
    folder_unet_config,
    folder_vae_config,
    folder_vae_scale_factor,
    load_folder,
    read_component_config,
)
from pcpp_mpi.models.pixart import (
    PIXART_ARCHS,
    check_pixart_arch,
    pixart_scheduler_config,
    pixart_sigma_config,
)
from pcpp_mpi.models.random_arch import (
    arch_unet_config,
    arch_vae_config,
    arch_vae_scale_factor,
    load_random_arch,
)
from pcpp_mpi.models.sd3 import SD3_ARCHS, sd3_medium_config, sd3_scheduler_config
from pcpp_mpi.models.tiny import load_tiny, tiny_unet_config, tiny_vae_config, tiny_vae_scale_factor


def _source(model: ModelConfig) -> str:
    """``model.source`` after checking that exactly one source is set and is valid."""
    chosen = [key for key in ("builtin", "path", "arch") if getattr(model, key) is not None]
    if len(chosen) != 1:
        raise ModelError(
            "model: set exactly one of builtin, path, arch "
            f"(got {', '.join(chosen) if chosen else 'none'})"
        )
    if model.builtin is not None and model.builtin != "tiny":
        raise ModelError(f"model.builtin: unknown built-in model {model.builtin!r} (only 'tiny')")
    if model.arch is not None and model.weights != "random":
        raise ModelError(f"model.arch={model.arch!r} needs weights: random (got {model.weights!r})")
    return chosen[0]


DenoiserNetwork = Literal["unet", "pixart", "sd3"]


def denoiser_network(model: ModelConfig) -> DenoiserNetwork:
    """Which network denoises ``model``'s latent: ``"pixart"`` for ``arch: pixart-sigma`` and
    for a folder whose ``transformer/`` (or ``model_index.json``) names a
    ``PixArtTransformer2DModel``; ``"sd3"`` for ``arch: sd3-*`` and a folder naming an
    ``SD3Transformer2DModel``; ``"unet"`` for everything else. Reads at most JSON."""
    source = _source(model)
    if source == "arch":
        if model.arch in SD3_ARCHS:
            return "sd3"
        return "pixart" if model.arch in PIXART_ARCHS else "unet"
    if source == "path":
        assert model.path is not None
        return folder_network(model.path)
    return "unet"


def transformer_config(model: ModelConfig) -> dict[str, Any]:
    """A PixArt or SD3 model's transformer config (diffusers defaults filled in), without
    building it: from code for ``arch``, from ``<path>/transformer/config.json`` for a folder."""
    source = _source(model)
    if source == "arch":
        assert model.arch is not None
        if model.arch in SD3_ARCHS:
            return sd3_medium_config()
        check_pixart_arch(model.arch)
        return pixart_sigma_config()
    if source == "path":
        assert model.path is not None
        return folder_transformer_config(model.path)
    raise ModelError(f"model.builtin {model.builtin!r} is a UNet model: it has no transformer")


def unet_config(model: ModelConfig) -> dict[str, Any]:
    """The UNet's config (diffusers defaults filled in) without building or loading the UNet.

    Built-in and ``arch`` models: from code; ``path``: read from ``<path>/unet/config.json``.
    """
    source = _source(model)
    if source == "builtin":
        return tiny_unet_config()
    if source == "arch":
        assert model.arch is not None
        return arch_unet_config(model.arch)
    assert model.path is not None
    return folder_unet_config(model.path)


def vae_config(model: ModelConfig) -> dict[str, Any]:
    """The VAE's config (diffusers defaults filled in) without building or loading the VAE."""
    source = _source(model)
    if source == "builtin":
        return tiny_vae_config()
    if source == "arch":
        assert model.arch is not None
        return arch_vae_config(model.arch)
    assert model.path is not None
    return folder_vae_config(model.path)


def vae_scale_factor(model: ModelConfig) -> int:
    """Pixels per latent element along each axis (8 for SD-type VAEs), without loading weights."""
    source = _source(model)
    if source == "builtin":
        return tiny_vae_scale_factor()
    if source == "arch":
        assert model.arch is not None
        return arch_vae_scale_factor(model.arch)
    assert model.path is not None
    return folder_vae_scale_factor(model.path)


def scheduler_config(model: ModelConfig) -> dict[str, Any]:
    """The model's noise-schedule config, without loading weights."""
    source = _source(model)
    if source == "path":
        assert model.path is not None
        return read_component_config(model.path, "scheduler")
    if source == "arch" and model.arch in PIXART_ARCHS:
        return pixart_scheduler_config()
    if source == "arch" and model.arch in SD3_ARCHS:
        return sd3_scheduler_config()
    return default_scheduler_config()


def load_model(model: ModelConfig, dtype: torch.dtype, device: torch.device) -> ModelBundle:
    """Build or load the model in ``dtype`` on ``device`` (eval mode, no gradients).

    Never touches the network; raises :class:`ModelError` for a bad configuration or folder.
    """
    source = _source(model)
    device = torch.device(device)
    if source == "builtin":
        return load_tiny(dtype, device)
    if source == "arch":
        assert model.arch is not None
        return load_random_arch(model.arch, model.seed, dtype, device)
    assert model.path is not None
    return load_folder(model.path, dtype, device)
