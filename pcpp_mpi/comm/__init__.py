"""Everything that talks to MPI lives in this package.

Importing the package does not import :mod:`mpi4py` (importing ``mpi4py.MPI`` initialises
MPI); import the submodules that need it explicitly.
"""
