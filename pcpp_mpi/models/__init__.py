"""Models: the built-in tiny models (UNet ``tiny``, transformer ``tiny-pixart``), random-weight
SD and PixArt architectures and local diffusers folders.

:func:`load_model` turns a :class:`~pcpp_mpi.config.schema.ModelConfig` into a
:class:`ModelBundle` (denoiser, VAE, prompt encoder, scheduler config);
:func:`denoiser_network`, :func:`unet_config`, :func:`transformer_config`, :func:`vae_config`
and :func:`vae_scale_factor` answer shape questions without loading weights, and
:func:`check_model_folder` validates a folder before any heavy work.
"""

from pcpp_mpi.models.bundle import ModelBundle, PromptEmbeddings, PromptEncoder
from pcpp_mpi.models.errors import ModelError
from pcpp_mpi.models.folder import check_model_folder
from pcpp_mpi.models.loader import (
    BUILTIN_NETWORKS,
    DenoiserNetwork,
    builtin_weights_provenance,
    denoiser_network,
    load_model,
    scheduler_config,
    transformer_config,
    unet_config,
    vae_config,
    vae_scale_factor,
)

__all__ = [
    "BUILTIN_NETWORKS",
    "DenoiserNetwork",
    "ModelBundle",
    "ModelError",
    "PromptEmbeddings",
    "PromptEncoder",
    "builtin_weights_provenance",
    "check_model_folder",
    "denoiser_network",
    "load_model",
    "scheduler_config",
    "transformer_config",
    "unet_config",
    "vae_config",
    "vae_scale_factor",
]
