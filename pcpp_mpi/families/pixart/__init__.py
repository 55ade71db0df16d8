"""The PixArt family: diffusers' ``PixArtTransformer2DModel`` (PixArt-alpha, PixArt-Sigma)."""

from pcpp_mpi.families.pixart.family import PixArtFamily
from pcpp_mpi.families.pixart.inputs import PixArtConditioning, PixArtInputs

__all__ = ["PixArtConditioning", "PixArtFamily", "PixArtInputs"]
