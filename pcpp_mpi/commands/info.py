"""``pcpp-mpi info``: which MPI library, thread level, CUDA-awareness, and where ranks run."""

from __future__ import annotations

import argparse
import sys

REQUESTED_THREAD_LEVEL = "multiple"


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``info`` to the top-level subparsers."""
    info = sub.add_parser(
        "info", help="MPI library, CUDA-awareness, thread level, ranks and devices"
    )
    info.set_defaults(handler=lambda _args: run_info_command())


def run_info_command() -> int:
    """Initialise MPI, describe every rank, print the report on rank 0; return 0.

    Works on one rank (no launcher) and under ``mpirun``/``srun``. MPI is initialised with
    ``MPI_THREAD_MULTIPLE`` requested unless ``mpi4py.MPI`` was already imported.
    """
    import mpi4py

    already_initialised = "mpi4py.MPI" in sys.modules
    if not already_initialised:
        mpi4py.rc.thread_level = REQUESTED_THREAD_LEVEL
    from mpi4py import MPI

    from pcpp_mpi.comm.mpi_info import describe_world, format_info
    from pcpp_mpi.output.provenance import collect_package_versions, git_revision

    comm = MPI.COMM_WORLD
    info = describe_world(comm)
    if comm.Get_rank() != 0:
        return 0
    lines = [format_info(info)]
    if not already_initialised and info.thread_level != MPI.THREAD_MULTIPLE:
        lines.append(
            f"note: MPI_THREAD_MULTIPLE was requested but the library provides only "
            f"{info.thread_level_name}"
        )
    lines.append("Packages:")
    lines.extend(f"  {name} {version}" for name, version in collect_package_versions().items())
    lines.append(f"Source revision: {git_revision() or 'unknown (not a git checkout)'}")
    print("\n".join(lines), flush=True)
    return 0
