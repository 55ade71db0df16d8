"""The PixArt family: a diffusers ``PixArtTransformer2DModel`` denoising a latent, band-parallel.

A band is a run of whole patch rows of the token grid. Every block's self-attention (``attn1``)
gets the generic band attention of ``parallel/`` (fresh K/V of every band in ``sync``, the
previous step's in ``distrifusion``, the neighbours' boundary rows in ``pcpp``); the patch
embedding is wrapped so a band's tokens carry the whole grid's positions
(:mod:`pcpp_mpi.parallel.pos_embed`). Everything else is per token or per sample, and the
unpatchify at the end turns the band's tokens back into the band's latent rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pcpp_mpi.config.schema import ModelConfig
from pcpp_mpi.families.pixart import inventory as pixart_inventory
from pcpp_mpi.families.pixart.inputs import PixArtConditioning, PixArtInputs
from pcpp_mpi.geometry import Band
from pcpp_mpi.models import transformer_config, vae_scale_factor
from pcpp_mpi.parallel import apply
from pcpp_mpi.parallel.clock import StepClock
from pcpp_mpi.parallel.pos_embed import BandPatchEmbed
from pcpp_mpi.plan.inventory import LayerInventory
from pcpp_mpi.plan.layout import ModelShape
from pcpp_mpi.plan.schedule import runs_split

if TYPE_CHECKING:
    from pcpp_mpi.models.bundle import ModelBundle
    from pcpp_mpi.parallel.band_comm import BandComm


def size_conditioning(
    transformer: nn.Module, batch: int, height: int, width: int
) -> dict[str, torch.Tensor] | None:
    """PixArt-alpha's micro-conditioning for ``batch`` images of ``height x width`` pixels
    (global): ``resolution`` ``(B, 2)`` = (height, width) and ``aspect_ratio`` ``(B, 1)`` =
    height / width, in the transformer's dtype and on its device; ``None`` for a transformer
    without ``use_additional_conditions`` (PixArt-Sigma, PixArt-alpha below 1024 px)."""
    if not transformer.use_additional_conditions:
        return None
    parameter = next(transformer.parameters())
    dtype, device = parameter.dtype, parameter.device
    resolution = torch.tensor([[height, width]], dtype=dtype, device=device)
    aspect = torch.tensor([[height / width]], dtype=dtype, device=device)
    return {
        "resolution": resolution.expand(batch, 2).clone(),
        "aspect_ratio": aspect.expand(batch, 1).clone(),
    }


@dataclass(frozen=True)
class PixArtFamily:
    """PixArt transformers as a :class:`~pcpp_mpi.families.base.DenoiserFamily`."""

    name: str = "pixart"

    def model_shape(self, model: ModelConfig) -> ModelShape:
        config = transformer_config(model)
        return ModelShape(
            levels=pixart_inventory.pixart_levels(config),
            latent_channels=config["in_channels"],
            vae_scale_factor=vae_scale_factor(model),
            network="PixArt transformer",
            unit_reason=f"patch size {config['patch_size']} of the PixArt transformer",
        )

    def trace_inventory(
        self, model: ModelConfig, latent_height: int, latent_width: int
    ) -> LayerInventory:
        return pixart_inventory.trace_inventory(
            transformer_config(model), latent_height, latent_width
        )

    def network(self, bundle: ModelBundle) -> nn.Module:
        return bundle.denoiser

    def inventory_of(
        self, network: nn.Module, latent_height: int, latent_width: int
    ) -> LayerInventory:
        return pixart_inventory.inventory_of(network, latent_height, latent_width)

    def parallelize(
        self,
        network: nn.Module,
        inventory: LayerInventory,
        comm: BandComm,
        bands: Sequence[Band],
        clock: StepClock,
        options: apply.BandOptions,
    ) -> apply.ParallelHandle:
        """The generic band attention on every ``attn1``, and the patch embedding wrapped
        with the band's rows of the global positions (whenever the image is split, ``naive``
        included: a band is never an image of its own)."""
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

    def call(self, network: Callable[..., Any], inputs: PixArtInputs) -> torch.Tensor:
        return inputs.call(network)

    def conditioning(
        self,
        bundle: ModelBundle,
        prompts: Sequence[str],
        height: int,
        width: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> PixArtConditioning:
        embeddings = bundle.encoder.encode(prompts)
        mask = embeddings.mask
        return PixArtConditioning(
            hidden=embeddings.hidden.to(device, dtype),
            mask=None if mask is None else mask.to(device, dtype),
            added=size_conditioning(bundle.denoiser, len(prompts), height, width),
        )

    def step_inputs(
        self, sample: torch.Tensor, timestep: torch.Tensor, conditioning: PixArtConditioning
    ) -> PixArtInputs:
        return PixArtInputs(
            sample, timestep, conditioning.hidden, conditioning.mask, conditioning.added
        )
