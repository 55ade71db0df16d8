"""The SD3 family: a diffusers ``SD3Transformer2DModel`` denoising a latent, band-parallel.

A band is a run of whole patch rows of the token grid. Every block's joint attention
(``attn``: the band's image tokens and all text tokens as queries; the image context of the
mode plus the text as keys and values, :mod:`pcpp_mpi.parallel.joint_attention`) and SD3.5's
image-only ``attn2`` get the generic band attention of ``parallel/``; the patch embedding is
wrapped so a band's tokens carry the positions of the whole grid's centre crop of the
positional table (:class:`~pcpp_mpi.parallel.pos_embed.BandPatchEmbed`). The text
stream is replicated: every rank computes all of it. Everything else is per token or per
sample, and the unpatchify at the end turns the band's tokens back into its latent rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pcpp_mpi.config.schema import ModelConfig
from pcpp_mpi.families.sd3 import inventory as sd3_inventory
from pcpp_mpi.families.sd3.inputs import SD3Conditioning, SD3Inputs
from pcpp_mpi.geometry import Band
from pcpp_mpi.models import ModelError, transformer_config, vae_scale_factor
from pcpp_mpi.parallel import apply
from pcpp_mpi.parallel.clock import StepClock
from pcpp_mpi.parallel.pos_embed import BandPatchEmbed
from pcpp_mpi.plan.inventory import LayerInventory
from pcpp_mpi.plan.layout import ModelShape
from pcpp_mpi.plan.schedule import runs_split

if TYPE_CHECKING:
    from pcpp_mpi.models.bundle import ModelBundle
    from pcpp_mpi.parallel.band_comm import BandComm


@dataclass(frozen=True)
class SD3Family:
    """SD3 transformers as a :class:`~pcpp_mpi.families.base.DenoiserFamily`."""

    name: str = "sd3"

    def model_shape(self, model: ModelConfig) -> ModelShape:
        config = transformer_config(model)
        return ModelShape(
            levels=sd3_inventory.sd3_levels(config),
            latent_channels=config["in_channels"],
            vae_scale_factor=vae_scale_factor(model),
            network="SD3 transformer",
            unit_reason=f"patch size {config['patch_size']} of the SD3 transformer",
        )

    def trace_inventory(
        self, model: ModelConfig, latent_height: int, latent_width: int
    ) -> LayerInventory:
        return sd3_inventory.trace_inventory(transformer_config(model), latent_height, latent_width)

    def network(self, bundle: ModelBundle) -> nn.Module:
        return bundle.denoiser

    def inventory_of(
        self, network: nn.Module, latent_height: int, latent_width: int
    ) -> LayerInventory:
        return sd3_inventory.inventory_of(network, latent_height, latent_width)

    def parallelize(
        self,
        network: nn.Module,
        inventory: LayerInventory,
        comm: BandComm,
        bands: Sequence[Band],
        clock: StepClock,
        options: apply.BandOptions,
    ) -> apply.ParallelHandle:
        """The band attention on every ``attn`` (joint) and ``attn2``, and the patch
        embedding wrapped with the band's rows of the global positions (whenever the image is
        split, ``naive`` included: a band is never an image of its own)."""
        handle = apply.parallelize(network, inventory, comm, bands, clock, options)
        if runs_split(options.mode, len(bands)):
            band = bands[comm.topology.band_index]
            original = network.pos_embed
            wrapper = BandPatchEmbed(
                original, band, inventory.latent_height, inventory.latent_width
            )
            handle.replaced.append((network, "pos_embed", original))
            network.pos_embed = wrapper
        return handle

    def call(self, network: Callable[..., Any], inputs: SD3Inputs) -> torch.Tensor:
        return inputs.call(network)

    def conditioning(
        self,
        bundle: ModelBundle,
        prompts: Sequence[str],
        height: int,
        width: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> SD3Conditioning:
        embeddings = bundle.encoder.encode(prompts)
        if embeddings.pooled is None:
            raise ModelError("an SD3 transformer needs pooled text embeddings (B, D); got none")
        return SD3Conditioning(
            hidden=embeddings.hidden.to(device, dtype),
            pooled=embeddings.pooled.to(device, dtype),
        )

    def step_inputs(
        self, sample: torch.Tensor, timestep: torch.Tensor, conditioning: SD3Conditioning
    ) -> SD3Inputs:
        return SD3Inputs(sample, timestep, conditioning.hidden, conditioning.pooled)
