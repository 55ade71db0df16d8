"""What every diffusion-transformer family shares (PixArt, SD3): a patch grid of tokens.

A transformer of patch size ``p = 2**l`` turns a latent ``(B, C, H, W)`` into ``H / p`` rows
of ``W / p`` tokens, row-major; that grid is level ``l`` of the band geometry, so the model
has ``l + 1`` levels and bands are whole patch rows (``p`` latent rows). Its only spatial
exchanges are attentions over that grid; the patchify convolution (kernel = stride = ``p``)
reads its band's own rows, and the patch embedding is wrapped so a band's tokens carry the
whole grid's positions (:class:`~pcpp_mpi.parallel.pos_embed.BandPatchEmbed`).

:class:`PatchTransformerFamily` is the plan and run half of a
:class:`~pcpp_mpi.families.base.ModelFamily` built on that; a family's folder adds its
network's class, its example call, its conditioning and its call signature.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from pcpp_mpi.config.schema import ModelConfig
from pcpp_mpi.geometry import Band
from pcpp_mpi.models import transformer_config, vae_scale_factor
from pcpp_mpi.parallel import apply
from pcpp_mpi.parallel.clock import StepClock
from pcpp_mpi.parallel.inventory import UnsupportedModelError, trace_layers
from pcpp_mpi.parallel.pos_embed import BandPatchEmbed
from pcpp_mpi.plan.inventory import LayerInventory
from pcpp_mpi.plan.layout import ModelShape
from pcpp_mpi.plan.schedule import runs_split

if TYPE_CHECKING:
    from pcpp_mpi.parallel.band_comm import BandComm


def patch_levels(config: Mapping[str, Any], label: str) -> int:
    """Levels of the band geometry: ``log2(patch_size) + 1`` (the patch grid is the last);
    :class:`UnsupportedModelError` naming the ``label`` (e.g. ``"PixArt"``) transformer when
    the patch size is not a power of two."""
    patch = int(config["patch_size"])
    if patch < 1 or patch & (patch - 1):
        raise UnsupportedModelError(
            f"{label} patch_size {patch} is not a power of two: bands cannot split its grid"
        )
    return patch.bit_length()


def trace_patch_grid(
    model_class: type[nn.Module],
    config: Mapping[str, Any],
    call: Callable[[nn.Module], object],
    latent_height: int,
    latent_width: int,
    *,
    label: str,
    attention: str = "attention",
) -> LayerInventory:
    """Trace a ``model_class`` transformer of ``config``, built on the meta device, through
    ``call`` at a global latent size. Its spatial layers must be attentions on the patch grid
    (the last level); else :class:`UnsupportedModelError` naming ``label``'s transformer and
    its ``attention`` (``"self-attention"`` for PixArt)."""
    levels = patch_levels(config, label)
    with torch.device("meta"):
        transformer = model_class.from_config(dict(config))  # type: ignore[attr-defined]
    inventory = trace_layers(
        transformer,
        call,
        latent_height,
        latent_width,
        levels=levels,
        latent_channels=config["in_channels"],
    )
    if inventory.convs or inventory.norms:
        names = [spec.name for spec in (*inventory.convs, *inventory.norms)]
        raise UnsupportedModelError(
            f"{label} transformer with spatial layers besides attention: {names}"
        )
    if any(attn.level != levels - 1 for attn in inventory.attns):
        raise UnsupportedModelError(f"{label} {attention} off the patch grid")
    return inventory


class PatchTransformerFamily:
    """The shape, inventory and parallelisation of a transformer family (see the module
    docstring). A subclass (a frozen dataclass with its ``name``) sets :attr:`label` and
    :meth:`trace_config`, and adds ``network``, ``call`` and the conditioning."""

    #: the network's name in the plan and in messages, e.g. ``"PixArt"``
    label: ClassVar[str]

    def trace_config(
        self, config: Mapping[str, Any], latent_height: int, latent_width: int
    ) -> LayerInventory:
        """The inventory of a transformer of ``config`` at a global latent size (meta)."""
        raise NotImplementedError

    def model_shape(self, model: ModelConfig) -> ModelShape:
        """Levels from the patch size; bands are whole patch rows."""
        config = transformer_config(model)
        return ModelShape(
            levels=patch_levels(config, self.label),
            latent_channels=config["in_channels"],
            vae_scale_factor=vae_scale_factor(model),
            network=f"{self.label} transformer",
            unit_reason=f"patch size {config['patch_size']} of the {self.label} transformer",
        )

    def trace_inventory(
        self, model: ModelConfig, latent_height: int, latent_width: int
    ) -> LayerInventory:
        return self.trace_config(transformer_config(model), latent_height, latent_width)

    def inventory_of(
        self, network: nn.Module, latent_height: int, latent_width: int
    ) -> LayerInventory:
        """Traced on a meta twin built from ``network``'s config: only shapes are recorded."""
        return self.trace_config(dict(network.config), latent_height, latent_width)

    def parallelize(
        self,
        network: nn.Module,
        inventory: LayerInventory,
        comm: BandComm,
        bands: Sequence[Band],
        clock: StepClock,
        options: apply.BandOptions,
    ) -> apply.ParallelHandle:
        """The generic band attention on every attention of the inventory, and the patch
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
