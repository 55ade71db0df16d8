"""pcpp-mpi: patch-parallel diffusion inference over MPI (DistriFusion / PCPP).

The Python API (:mod:`pcpp_mpi.api`): :func:`load_job`, :func:`with_settings`, :func:`run`,
:func:`open_run` and :class:`RunDirectory`. Importing the package loads neither torch nor MPI.
"""

__version__ = "0.1.0"
SCHEMA_VERSION = 1

from pcpp_mpi.api import RunDirectory, load_job, open_run, run, with_settings  # noqa: E402

__all__ = [
    "SCHEMA_VERSION",
    "RunDirectory",
    "__version__",
    "load_job",
    "open_run",
    "run",
    "with_settings",
]
