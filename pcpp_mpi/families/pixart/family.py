"""The PixArt family: a diffusers ``PixArtTransformer2DModel`` denoising a latent, band-parallel.

A band is a run of whole patch rows of the token grid. Every block's self-attention (``attn1``)
gets the generic band attention of ``parallel/`` (fresh K/V of every band in ``sync``, the
previous step's in ``distrifusion``, the neighbours' boundary rows in ``pcpp``); the patch
embedding is wrapped so a band's tokens carry the whole grid's positions
(:mod:`pcpp_mpi.parallel.pos_embed`). Everything else is per token or per sample, and the
unpatchify at the end turns the band's tokens back into the band's latent rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from pcpp_mpi.families.pixart import inventory as pixart_inventory
from pcpp_mpi.families.pixart.inputs import PixArtConditioning, PixArtInputs
from pcpp_mpi.families.transformer import PatchTransformerFamily
from pcpp_mpi.plan.inventory import LayerInventory

if TYPE_CHECKING:
    from pcpp_mpi.models.bundle import ModelBundle


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
class PixArtFamily(PatchTransformerFamily):
    """PixArt transformers as a :class:`~pcpp_mpi.families.base.DenoiserFamily`; its shape,
    inventory and parallelisation are
    :class:`~pcpp_mpi.families.transformer.PatchTransformerFamily`'s."""

    name: str = "pixart"
    label: ClassVar[str] = "PixArt"

    def trace_config(
        self, config: Mapping[str, Any], latent_height: int, latent_width: int
    ) -> LayerInventory:
        return pixart_inventory.trace_inventory(config, latent_height, latent_width)

    def network(self, bundle: ModelBundle) -> nn.Module:
        return bundle.denoiser

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
