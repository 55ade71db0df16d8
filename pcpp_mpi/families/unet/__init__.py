"""The UNet family: diffusers' ``UNet2DConditionModel`` (SD 1.5, 2.1, SDXL, the tiny model)."""

from pcpp_mpi.families.unet.conditioning import added_cond_kwargs
from pcpp_mpi.families.unet.family import UNetFamily
from pcpp_mpi.families.unet.inputs import UNetConditioning, UNetInputs

__all__ = ["UNetConditioning", "UNetFamily", "UNetInputs", "added_cond_kwargs"]
