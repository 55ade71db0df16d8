"""The UNet family: a diffusers ``UNet2DConditionModel`` denoising a latent, band-parallel."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pcpp_mpi.config.schema import ModelConfig
from pcpp_mpi.families.unet import inventory as unet_inventory
from pcpp_mpi.families.unet.conditioning import added_cond_kwargs
from pcpp_mpi.families.unet.inputs import UNetConditioning, UNetInputs
from pcpp_mpi.geometry import Band
from pcpp_mpi.models import unet_config, vae_scale_factor
from pcpp_mpi.parallel import apply
from pcpp_mpi.parallel.clock import StepClock
from pcpp_mpi.plan.inventory import LayerInventory
from pcpp_mpi.plan.layout import ModelShape

if TYPE_CHECKING:
    from pcpp_mpi.models.bundle import ModelBundle
    from pcpp_mpi.parallel.band_comm import BandComm


@dataclass(frozen=True)
class UNetFamily:
    """The UNet as a :class:`~pcpp_mpi.families.base.DenoiserFamily`: every convolution,
    GroupNorm and self-attention layer band-parallel through the generic layers of
    ``parallel/`` (``conv_in``'s halo fresh in every step); cross-attention, time embedding
    and 1x1 convolutions need nothing."""

    name: str = "unet"

    def model_shape(self, model: ModelConfig) -> ModelShape:
        config = unet_config(model)
        return ModelShape(
            levels=unet_inventory.unet_levels(config),
            latent_channels=config["in_channels"],
            vae_scale_factor=vae_scale_factor(model),
            network="UNet",
        )

    def trace_inventory(
        self, model: ModelConfig, latent_height: int, latent_width: int
    ) -> LayerInventory:
        return unet_inventory.trace_inventory(unet_config(model), latent_height, latent_width)

    def network(self, bundle: ModelBundle) -> nn.Module:
        return bundle.denoiser

    def inventory_of(
        self, network: nn.Module, latent_height: int, latent_width: int
    ) -> LayerInventory:
        return unet_inventory.inventory_of(network, latent_height, latent_width)

    def parallelize(
        self,
        network: nn.Module,
        inventory: LayerInventory,
        comm: BandComm,
        bands: Sequence[Band],
        clock: StepClock,
        options: apply.BandOptions,
    ) -> apply.ParallelHandle:
        return apply.parallelize(network, inventory, comm, bands, clock, options)

    def call(self, network: Callable[..., Any], inputs: UNetInputs) -> torch.Tensor:
        return inputs.call(network)

    def conditioning(
        self,
        bundle: ModelBundle,
        prompts: Sequence[str],
        height: int,
        width: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> UNetConditioning:
        embeddings = bundle.encoder.encode(prompts)
        return UNetConditioning(
            hidden=embeddings.hidden.to(device, dtype),
            added=added_cond_kwargs(bundle.denoiser, embeddings.pooled, height, width),
        )

    def step_inputs(
        self, sample: torch.Tensor, timestep: torch.Tensor, conditioning: UNetConditioning
    ) -> UNetInputs:
        return UNetInputs(sample, timestep, conditioning.hidden, conditioning.added)
