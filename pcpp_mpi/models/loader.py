"""Entry points: model configs without weights, and :func:`load_model` for every model source."""

from __future__ import annotations

from typing import Any

import torch

from pcpp_mpi.config.schema import ModelConfig
from pcpp_mpi.models.bundle import ModelBundle, default_scheduler_config
from pcpp_mpi.models.errors import ModelError
from pcpp_mpi.models.folder import (
    folder_unet_config,
    folder_vae_config,
    folder_vae_scale_factor,
    load_folder,
    read_component_config,
)
from pcpp_mpi.models.random_arch import (
    arch_unet_config,
    arch_vae_config,
    arch_vae_scale_factor,
    load_random_arch,
)
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
    if _source(model) == "path":
        assert model.path is not None
        return read_component_config(model.path, "scheduler")
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
