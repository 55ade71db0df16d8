"""Model families: what each kind of network provides to run band-parallel (:mod:`.base`),
and the lookup from a family's name or a job's model to the family.

A new family is a folder ``families/<name>/`` with an object conforming to
:class:`~pcpp_mpi.families.base.ModelFamily`, and one entry in :data:`FAMILIES`.
"""

from __future__ import annotations

from pcpp_mpi.config.schema import ModelConfig
from pcpp_mpi.families.base import DenoiserFamily, ModelFamily, StepInputs
from pcpp_mpi.families.pixart import PixArtFamily
from pcpp_mpi.families.sd3 import SD3Family
from pcpp_mpi.families.unet import UNetFamily
from pcpp_mpi.models import denoiser_network

#: every family, by name (constant: families are stateless)
FAMILIES: tuple[ModelFamily, ...] = (UNetFamily(), PixArtFamily(), SD3Family())


def family_named(name: str) -> ModelFamily:
    """The family called ``name`` (``"unet"``, ``"pixart"``, ``"sd3"``); ValueError naming
    the known ones."""
    for family in FAMILIES:
        if family.name == name:
            return family
    known = ", ".join(family.name for family in FAMILIES)
    raise ValueError(f"no model family {name!r} (known: {known})")


def denoiser_family(model: ModelConfig) -> DenoiserFamily:
    """The family of the network that denoises ``model``'s latent: PixArt for ``arch:
    pixart-sigma`` and for diffusers folders whose ``transformer/`` is a PixArt transformer;
    SD3 for ``arch: sd3-*`` and folders whose ``transformer/`` is an SD3 transformer; the UNet
    for everything else (the built-in tiny model, the SD archs, folders with ``unet/``).
    Reads at most a folder's JSON files."""
    network = denoiser_network(model)
    if network == "pixart":
        return PixArtFamily()
    if network == "sd3":
        return SD3Family()
    return UNetFamily()


__all__ = [
    "FAMILIES",
    "DenoiserFamily",
    "ModelFamily",
    "StepInputs",
    "denoiser_family",
    "family_named",
]
