"""Entry points: model configs without weights, and :func:`load_model` for every model source."""

from __future__ import annotations

import hashlib
from types import MappingProxyType
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
from pcpp_mpi.models.tiny import WEIGHTS_PATH as TINY_WEIGHTS
from pcpp_mpi.models.tiny import (
    load_tiny,
    read_metadata,
    tiny_unet_config,
    tiny_vae_config,
    tiny_vae_scale_factor,
)
from pcpp_mpi.models.tiny_pixart import WEIGHTS_PATH as TINY_PIXART_WEIGHTS
from pcpp_mpi.models.tiny_pixart import (
    load_tiny_pixart,
    read_tiny_pixart_metadata,
    tiny_pixart_transformer_config,
    tiny_pixart_vae_config,
)

#: the built-in models (``BuiltinName``; weights in pcpp_mpi/models/weights/), by denoiser
BUILTIN_NETWORKS: MappingProxyType[str, Literal["unet", "pixart"]] = MappingProxyType(
    {"tiny": "unet", "tiny-pixart": "pixart"}
)


def _source(model: ModelConfig) -> str:
    """``model.source`` after checking that exactly one source is set and is valid."""
    chosen = [key for key in ("builtin", "path", "arch") if getattr(model, key) is not None]
    if len(chosen) != 1:
        raise ModelError(
            "model: set exactly one of builtin, path, arch "
            f"(got {', '.join(chosen) if chosen else 'none'})"
        )
    if model.builtin is not None and model.builtin not in BUILTIN_NETWORKS:
        known = ", ".join(repr(name) for name in BUILTIN_NETWORKS)
        raise ModelError(f"model.builtin: unknown built-in model {model.builtin!r} ({known})")
    if model.arch is not None and model.weights != "random":
        raise ModelError(f"model.arch={model.arch!r} needs weights: random (got {model.weights!r})")
    return chosen[0]


DenoiserNetwork = Literal["unet", "pixart", "sd3"]


def denoiser_network(model: ModelConfig) -> DenoiserNetwork:
    """Which network denoises ``model``'s latent: ``"pixart"`` for ``arch: pixart-sigma`` and
    for a folder whose ``transformer/`` (or ``model_index.json``) names a
    ``PixArtTransformer2DModel``; ``"sd3"`` for ``arch: sd3-*`` and a folder naming an
    ``SD3Transformer2DModel``; ``"pixart"`` for ``builtin: tiny-pixart``; ``"unet"`` for
    everything else. Reads at most JSON."""
    source = _source(model)
    if source == "arch":
        if model.arch in SD3_ARCHS:
            return "sd3"
        return "pixart" if model.arch in PIXART_ARCHS else "unet"
    if source == "path":
        assert model.path is not None
        return folder_network(model.path)
    assert model.builtin is not None
    return BUILTIN_NETWORKS[model.builtin]


def transformer_config(model: ModelConfig) -> dict[str, Any]:
    """A PixArt or SD3 model's transformer config (diffusers defaults filled in), without
    building it: from code for ``arch`` and ``builtin: tiny-pixart``, from
    ``<path>/transformer/config.json`` for a folder."""
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
    if model.builtin == "tiny-pixart":
        return tiny_pixart_transformer_config()
    raise ModelError(f"model.builtin {model.builtin!r} is a UNet model: it has no transformer")


def unet_config(model: ModelConfig) -> dict[str, Any]:
    """The UNet's config (diffusers defaults filled in) without building or loading the UNet.

    ``builtin: tiny`` and ``arch`` models: from code; ``path``: read from
    ``<path>/unet/config.json``.
    """
    source = _source(model)
    if source == "builtin":
        if BUILTIN_NETWORKS[str(model.builtin)] != "unet":
            raise ModelError(f"model.builtin {model.builtin!r} is a transformer: it has no UNet")
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
        return tiny_pixart_vae_config() if model.builtin == "tiny-pixart" else tiny_vae_config()
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


def builtin_weights_provenance(model: ModelConfig) -> dict[str, str] | None:
    """For a built-in model: its weights file's name, SHA-256, format tag and training steps
    (from the file's metadata), for a run's provenance; ``None`` for other sources."""
    if _source(model) != "builtin":
        return None
    if model.builtin == "tiny-pixart":
        path, metadata = TINY_PIXART_WEIGHTS, read_tiny_pixart_metadata()
    else:
        path, metadata = TINY_WEIGHTS, read_metadata()
    keys = ("format", "vae_steps_done", "unet_steps_done", "transformer_steps_done", "torch")
    return {
        "file": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        **{key: metadata[key] for key in keys if key in metadata},
    }


def load_model(model: ModelConfig, dtype: torch.dtype, device: torch.device) -> ModelBundle:
    """Build or load the model in ``dtype`` on ``device`` (eval mode, no gradients).

    Never touches the network; raises :class:`ModelError` for a bad configuration or folder.
    """
    source = _source(model)
    device = torch.device(device)
    if source == "builtin":
        if model.builtin == "tiny-pixart":
            return load_tiny_pixart(dtype, device)
        return load_tiny(dtype, device)
    if source == "arch":
        assert model.arch is not None
        return load_random_arch(model.arch, model.seed, dtype, device)
    assert model.path is not None
    return load_folder(model.path, dtype, device)
