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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from pcpp_mpi.families.sd3 import inventory as sd3_inventory
from pcpp_mpi.families.sd3.inputs import SD3Conditioning, SD3Inputs
from pcpp_mpi.families.transformer import PatchTransformerFamily
from pcpp_mpi.models import ModelError
from pcpp_mpi.plan.inventory import LayerInventory

if TYPE_CHECKING:
    from pcpp_mpi.models.bundle import ModelBundle


@dataclass(frozen=True)
class SD3Family(PatchTransformerFamily):
    """SD3 transformers as a :class:`~pcpp_mpi.families.base.DenoiserFamily`; its shape,
    inventory and parallelisation are
    :class:`~pcpp_mpi.families.transformer.PatchTransformerFamily`'s."""

    name: str = "sd3"
    label: ClassVar[str] = "SD3"

    def trace_config(
        self, config: Mapping[str, Any], latent_height: int, latent_width: int
    ) -> LayerInventory:
        return sd3_inventory.trace_inventory(config, latent_height, latent_width)

    def network(self, bundle: ModelBundle) -> nn.Module:
        return bundle.denoiser

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
