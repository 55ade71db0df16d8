"""The SD3 family: diffusers' ``SD3Transformer2DModel`` (SD3, SD3.5: MMDiT, joint attention of
image and text tokens)."""

from pcpp_mpi.families.sd3.family import SD3Family
from pcpp_mpi.families.sd3.inputs import SD3Conditioning, SD3Inputs

__all__ = ["SD3Conditioning", "SD3Family", "SD3Inputs"]
