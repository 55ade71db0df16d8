"""pcpp-mpi: patch-parallel diffusion inference over MPI (DistriFusion / PCPP)."""

__version__ = "0.1.0"
SCHEMA_VERSION = 1
